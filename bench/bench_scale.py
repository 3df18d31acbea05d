"""Scale benchmark: what people wait for, on a study of 1x, 10x and 100x the data.

Builds one database that grows from 6 to 60 to 600 nights (8 h at 1 Hz each: 17.3 M
samples at 100x, with gaps, stored and sealed as an import stores them) and copies it at
each size.  On each copy it times the user-facing operations: the CLI's listings and
per-subject commands as whole processes, the daemon's start-up (newest stored sample,
writer, resuming sessions) and the web page's queries in one process.  Prints each
operation's median at each size and the 100x/1x ratio (goal: under 2).  Not a test.

    python bench/bench_scale.py [--hours 8] [--base-nights 6] [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from collector.config import defaults
from collector.oximetry import store as night_store
from collector.storage import repo
from collector.storage.db import open_db, transaction

T0 = 1_767_000_000.0
SUBJECT = "SCR-0001"  # the subject the per-subject operations look at: its two nights come first


def night_template(hours: float, seed: int) -> tuple[np.ndarray, list[tuple[Any, ...]], list[tuple[int, int]]]:
    """Offsets (ms) and row tails of one night at 1 Hz with about 100 disconnect gaps."""
    rng = np.random.default_rng(seed)
    n = int(hours * 3600)
    keep = np.ones(n, dtype=bool)
    gaps = []
    for s in np.sort(rng.choice(np.arange(60, n - 300, 97), min(100, n // 400), replace=False)):
        k = int(rng.integers(3, 60))
        keep[s:s + k] = False
        gaps.append((int(s) * 1000 - 500, int(s + k) * 1000 - 500))
    offsets = (np.arange(n)[keep] * 1000).astype(np.int64)
    spo2 = np.clip(np.rint(rng.normal(95, 2.5, offsets.size)), 70, 100)
    pulse = np.rint(rng.normal(64, 6, offsets.size))
    tails = [(None, float(a), float(b), None, 1, 1, 0, None, None) for a, b in zip(spo2, pulse)]
    return offsets, tails, gaps


def add_nights(db: Path, first: int, last: int, template: tuple[np.ndarray, list[tuple[Any, ...]], list[tuple[int, int]]],
               hours: float) -> None:
    """Nights number first..last-1: two per subject, one a day, stored as an import stores a night."""
    offsets, tails, gaps = template
    conn = open_db(db).conn
    try:
        for k in range(first, last):
            subject = f"SCR-{k // 2 + 1:04d}"
            start = T0 + k * 86400
            with transaction(conn):
                if k % 2 == 0:
                    repo.add_subject(conn, subject, by="bench", at=start)
                sid = repo.add_recorded_session(conn, subject_id=subject, kind="night", origin="simulated", started_at=start,
                                                stopped_at=start + hours * 3600, by="bench", settings={})
                base = int(start * 1000)
                times = (offsets + base).tolist()
                night_store.insert_samples(conn, [(sid, t, *tail) for t, tail in zip(times, tails)], at=start + hours * 3600)
                for a, b in gaps:
                    repo.add_gap(conn, sid, start_ms=base + a, end_ms=base + b, cause="device_disconnected")
                if subject == SUBJECT:  # only the measured subject's nights get a report (the analysis is slow)
                    night_store.finalise(conn, sid, defaults(), at=start + hours * 3600, actor="bench", reason="night ended")
    finally:
        conn.close()


def copy_db(src: Path, dst: Path) -> None:
    a, b = sqlite3.connect(str(src)), sqlite3.connect(str(dst))
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def median_time(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up: the first run pays for imports and a cold page cache
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def cli(db: Path, env: dict[str, str], *args: str) -> Callable[[], None]:
    cmd = [sys.executable, "-m", "collector", "--db", str(db), *args]

    def run() -> None:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.decode().strip()}")
    return run


def daemon_start_up(db: Path) -> Callable[[], None]:
    """What the daemon reads before it serves: the newest sample (virtual clock), the writer, resuming sessions."""
    from collector.config import completed
    from collector.features import build_daemon
    from collector.runner import latest_stored_time

    config = completed({"storage": {"synchronous": "NORMAL"}}, source="bench")

    def run() -> None:
        latest_stored_time(db)
        daemon = build_daemon(db, config=config)
        try:
            asyncio.run(daemon.resume_open_sessions())
        finally:
            daemon.writer.close()
    return run


def web_queries(db: Path) -> dict[str, Callable[[], Any]]:
    from collector.web.service import _session_summaries
    from collector.web.trend import session_trend

    def with_conn(fn: Callable[[sqlite3.Connection], Any]) -> Callable[[], Any]:
        def run() -> Any:
            conn = open_db(db).conn
            try:
                return fn(conn)
            finally:
                conn.close()
        return run

    return {
        "page: recent sessions (30)": with_conn(lambda c: _session_summaries(c, 30, None)),
        "page: subjects with open sessions": with_conn(lambda c: (repo.list_subjects(c), repo.open_sessions_by_subject(c))),
        "page: trend of a night": with_conn(lambda c: session_trend(c, 1, minutes=None, now=T0 + 86400)),
        "query: all sessions with counts": with_conn(lambda c: repo.list_sessions(c)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=8.0, help="Length of each night (1 Hz).")
    ap.add_argument("--base-nights", type=int, default=6, help="Nights at 1x (10x and 100x follow).")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="Keep the databases in this folder (reused when they exist).")
    args = ap.parse_args()
    scales = (1, 10, 100)
    tmp = tempfile.TemporaryDirectory()
    folder = args.keep or Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    grow = folder / "grow.sqlite"
    template = night_template(args.hours, seed=5)
    dbs = {scale: folder / f"x{scale}.sqlite" for scale in scales}
    t_build = time.perf_counter()
    if not all(p.exists() for p in dbs.values()):
        grow.unlink(missing_ok=True)
        done = 0
        for scale in scales:  # one database grows; a copy is kept at each size
            add_nights(grow, done, args.base_nights * scale, template, args.hours)
            done = args.base_nights * scale
            copy_db(grow, dbs[scale])
        grow.unlink()
    samples = {s: open_db(p).conn.execute("SELECT SUM(samples) FROM session_sample_stats").fetchone()[0] for s, p in dbs.items()}
    print(f"built in {time.perf_counter() - t_build:.0f} s: " + ", ".join(f"{s}x = {args.base_nights * s} nights, {samples[s]:,} samples"
                                                                         for s in scales))

    env = {**os.environ, "COLLECTOR_CONFIG": str(folder / "none.toml")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed collector has its bytecode compiled
    (folder / "none.toml").write_text("", encoding="utf-8")
    results: dict[str, dict[int, float]] = {}
    for scale in scales:
        db = dbs[scale]
        op_env = {**env, "COLLECTOR_TOKEN": cli_token(db)}
        ops: dict[str, Callable[[], Any]] = {
            "collector session list": cli(db, op_env, "session", "list"),
            f"collector session list --subject {SUBJECT}": cli(db, op_env, "session", "list", "--subject", SUBJECT),
            "collector subject list": cli(db, op_env, "subject", "list"),
            f"collector eligibility {SUBJECT}": cli(db, op_env, "eligibility", SUBJECT),
            "collector report 1": cli(db, op_env, "report", "1"),
            "daemon start-up (in process)": daemon_start_up(db),
            **web_queries(db),
        }
        for name, fn in ops.items():
            results.setdefault(name, {})[scale] = median_time(fn, args.runs)
    width = max(len(n) for n in results)
    print(f"{'operation':{width}}  " + "  ".join(f"{f'{s}x':>9}" for s in scales) + "  100x/1x")
    for name, by_scale in results.items():
        ratio = by_scale[100] / by_scale[1]
        print(f"{name:{width}}  " + "  ".join(f"{by_scale[s] * 1000:7.1f}ms" for s in scales)
              + f"  {ratio:6.2f}{'' if ratio < 2 else '  (goal < 2 NOT met)'}")
    tmp.cleanup()


def cli_token(db: Path) -> str:
    """A login token for a bench investigator (written straight into the operator table, as test setup does)."""
    from collector.clock import utc_iso
    from collector.users import store
    from collector.users.passwords import hash_password

    conn = open_db(db).conn
    try:
        with transaction(conn):
            if conn.execute("SELECT 1 FROM users WHERE name = 'bench'").fetchone() is None:
                conn.execute("INSERT INTO users (name, password_hash, role, created_utc, created_by, password_changed_utc) "
                             "VALUES ('bench', ?, 'investigator', ?, 'bench-setup', ?)",
                             (hash_password("bench password 1", n=2**10), utc_iso(T0), utc_iso(T0)))
            token, _ = store.create_token(conn, "bench", kind="cli", at=time.time())
    finally:
        conn.close()
    return token


if __name__ == "__main__":
    main()

"""Benchmark: ``collector export`` against its physical limit (plain CSV of the same samples + SHA-256).

One subject with two full nights shaped like real ones (11.5 h at 0.5 Hz and 8.7 h at 0.25 Hz, host
jitter, desaturation dips, finger-out dropouts, device "missing" codes and a few disconnect gaps), stored
straight through the oximetry store (simulating 20 h of BLE traffic would time the recorder).  In one run:

  (a) anchor: a Python process that reads the nights' samples and writes them as CSV with their SHA-256;
  (b) the whole ``collector export SUBJECT --out DIR`` command as a subprocess (pictures and PDF included);
  (c) ``export_subject`` in this process.

Each is the median of 3; CPU time (user + system, children's for subprocesses) is the figure the
ratios use, because the machine is shared; wall time is printed beside it.  Prints figures; not a test.

The subprocesses run as an installed collector does: with compiled bytecode (pip compiles on install),
kept in a cache folder inside the run's temporary folder and written by one untimed warm-up run.  When
the environment forbids bytecode (``PYTHONDONTWRITEBYTECODE``, as some development shells set), every
import compiles the project's sources again; (b') times the command that way too, so both are shown.

    .venv/bin/python bench/bench_export_limit.py [--profile]
"""

from __future__ import annotations

import cProfile
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from collector.config import defaults
from collector.export.bundle import export_subject
from collector.oximetry import store as oximetry_store
from collector.storage import repo
from collector.storage.db import open_db, transaction
from collector.users import store as users

T0 = 1_767_000_000.0
SUBJECT = "SCR-0200"
NIGHTS = ((11.5 * 3600, 2.0), (8.7 * 3600, 4.0))  # (duration s, sample period s)

ANCHOR = r"""
import csv, hashlib, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
out = sys.argv[2]
for (sid,) in conn.execute("SELECT id FROM sessions WHERE kind = 'night' ORDER BY id").fetchall():
    path = f"{out}/samples_{sid}.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["host_utc_ms", "device_time", "spo2_pct", "pulse_bpm", "pai_pct", "valid", "pulse_valid", "flags",
                    "status_raw", "counter"])
        w.writerows(conn.execute("SELECT host_utc_ms, device_time, spo2_pct, pulse_bpm, pai_pct, valid, pulse_valid, "
                                 "flags, status_raw, counter FROM spo2_samples WHERE session_id = ? "
                                 "ORDER BY host_utc_ms, rowid", (sid,)))
    with open(path, "rb") as f:
        print(hashlib.sha256(f.read()).hexdigest())
"""


def _night(conn, rng: np.random.Generator, start: float, duration_s: float, period_s: float) -> int:
    n = int(duration_s / period_s)
    t = (start * 1000 + np.arange(n) * period_s * 1000 + rng.integers(-40, 40, n)).astype(np.int64)
    base = np.clip(rng.normal(95.5, 1.0, n), 88, 100)
    for s in rng.choice(n - 200, 60, replace=False):  # desaturation dips of 30-120 s, 4-12 points deep
        k = max(3, int(rng.integers(30, 120) / period_s))
        base[s:s + k] -= rng.uniform(4, 12) * np.sin(np.linspace(0, np.pi, k))
    spo2 = np.clip(np.rint(base), 70, 100)
    pulse = np.rint(rng.normal(64, 5, n))
    keep = np.ones(n, dtype=bool)
    gaps = []
    for s in np.sort(rng.choice(np.arange(100, n - 300, 400), 6, replace=False)):  # a few disconnects of 20-180 s
        k = max(2, int(rng.integers(20, 180) / period_s))
        keep[s:s + k] = False
        gaps.append((int(t[s - 1]) + 500, int(t[s + k]) - 500))
    valid = np.ones(n, dtype=bool)
    for s in rng.choice(n - 200, 25, replace=False):  # finger-out dropouts
        valid[s:s + int(rng.integers(2, 40))] = False
    missing = rng.random(n) < 0.005
    t, spo2, pulse, valid, missing = t[keep], spo2[keep], pulse[keep], valid[keep], missing[keep]
    pvalid = valid & (rng.random(t.size) > 0.01)
    with transaction(conn):
        sid = repo.add_recorded_session(conn, subject_id=SUBJECT, kind="night", origin="simulated", started_at=start,
                                        stopped_at=start + duration_s, by="bench", settings={})
        rows = [(sid, int(t[i]), None, None if missing[i] else float(spo2[i]), float(pulse[i]), None,
                 int(valid[i] and not missing[i]), int(pvalid[i]), 0 if valid[i] else 4, None, None)
                for i in range(t.size)]
        oximetry_store.insert_samples(conn, rows, at=start + duration_s)
        for a, b in gaps:
            repo.add_gap(conn, sid, start_ms=a, end_ms=b, cause="device_disconnected")
        oximetry_store.finalise(conn, sid, defaults(), at=start + duration_s, actor="bench", reason="night ended")
    return int(t.size)


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    c, w = _cpu_children(), time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return _cpu_children() - c, time.perf_counter() - w


def _inproc(fn: Callable[[], object]) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def _median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    profile = "--profile" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        db = tmpd / "bench.sqlite"
        cfg = tmpd / "site.toml"
        cfg.write_text('[site]\nname = "Bench Hospital"\n')
        conn = open_db(db).conn
        rng = np.random.default_rng(17)
        with transaction(conn):
            repo.add_subject(conn, SUBJECT, by="bench", at=T0)
            users.add_user(conn, "bench", "bench password 1", by="bench", at=T0, role="data_manager", scrypt_n=2**10)
            token, _ = users.create_token(conn, "bench", kind="cli", at=time.time())
        counts = [_night(conn, rng, T0 + k * 86400, d, p) for k, (d, p) in enumerate(NIGHTS)]
        print(f"two nights stored: {counts[0]} + {counts[1]} samples (11.5 h at 0.5 Hz, 8.7 h at 0.25 Hz)")
        nocache_env = {**os.environ, "COLLECTOR_TOKEN": token, "PYTHONDONTWRITEBYTECODE": "1"}
        env = {k: v for k, v in nocache_env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmpd / "pycache")
        exe = str(Path(sys.executable).with_name("collector"))
        config = {**defaults()}
        config["site"] = {**config["site"], "name": "Bench Hospital"}

        def export_cmd(out: Path) -> list[str]:
            return [exe, "--db", str(db), "--config", str(cfg), "export", SUBJECT, "--out", str(out)]

        _run(export_cmd(tmpd / "warm"), env)  # writes the bytecode cache; not timed
        _run([sys.executable, "-c", ANCHOR, str(db), str(tmpd / "warm")], env)
        a, b, b0, c = [], [], [], []
        for k in range(3):
            out = tmpd / f"a{k}"
            out.mkdir()
            a.append(_run([sys.executable, "-c", ANCHOR, str(db), str(out)], env))
            b.append(_run(export_cmd(tmpd / f"b{k}"), env))
            b0.append(_run(export_cmd(tmpd / f"n{k}"), nocache_env))
            c.append(_inproc(lambda k=k: export_subject(conn, SUBJECT, tmpd / f"c{k}", config=config, by="bench",
                                                        now=T0 + 300_000 + k)))
        (ac, aw), (bc, bw), (nc, nw), (cc, cw) = _median(a), _median(b), _median(b0), _median(c)
        print(f"(a) anchor CSV + SHA-256 (subprocess): cpu {ac:6.3f} s  wall {aw:6.3f} s")
        print(f"(b) collector export (subprocess):     cpu {bc:6.3f} s  wall {bw:6.3f} s   b/a cpu {bc / ac:5.1f}x  wall {bw / aw:5.1f}x")
        print(f"(b') the same, sources compiled:   cpu {nc:6.3f} s  wall {nw:6.3f} s   b'/a cpu {nc / ac:5.1f}x  wall {nw / aw:5.1f}x")
        print(f"(c) export_subject (in process):       cpu {cc:6.3f} s  wall {cw:6.3f} s   c/a cpu {cc / ac:5.1f}x  wall {cw / aw:5.1f}x")
        print("goal: b/a <= 8 (cpu)")
        if profile:
            pr = cProfile.Profile()
            pr.enable()
            export_subject(conn, SUBJECT, tmpd / "p", config=config, by="bench", now=T0 + 400_000)
            pr.disable()
            pstats.Stats(pr).sort_stats("cumulative").print_stats(45)
        conn.close()


if __name__ == "__main__":
    main()

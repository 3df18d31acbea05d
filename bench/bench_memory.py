"""Memory: the daemon's RSS over a simulated 24 h night of 8 beds, with a live page attached.

The daemon is ``collector run --simulate ... --speed max`` in a process of its own, exactly as
the CLI builds it (the HTTP API, the night service, the alerts, the simulated oximeters on a
virtual clock running as fast as the machine allows).  This process is the ward's page: it
starts the nights through the API, keeps the live stream (``/api/v1/events/stream``, server-sent
events) open and read, and polls what the page polls (``/web/status``, the beds' 30-minute and
whole-night trends, the session list) once a wall second.  One bed is a silent device for part
of the night (connected, sending nothing: the link's watchdog and reconnect back-off run), and
every bed drops its link for 30 s every 30 min.

Every virtual hour it prints the daemon's RSS, the writer's samples in memory and in its spill
file, and (``--trace``) Python's top tracemalloc growth sites since hour 2.  Verdict: RSS growth
from hour 2 to the last hour under ``--bound-pct`` (10 %) is flat.  The anchor is the daemon's own
RSS at hour 2 of the same run.  Exit 0 when flat, 1 otherwise.

    python bench/bench_memory.py [--hours 24] [--beds 8] [--trace]
    python bench/bench_memory.py --hours 4 --beds 3      # a quick one
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = "SCR-{:04d}"


# -- the daemon process ------------------------------------------------------------------------------
def child(trace_file: str | None, cli_args: list[str]) -> None:
    """``collector`` itself; with ``trace_file``, SIGUSR2 starts tracemalloc and SIGUSR1 writes the top growth since."""
    if trace_file:
        base: list[tracemalloc.Snapshot] = []

        def mark(_sig: int, _frame: Any) -> None:
            # Traced from the mark on (the imports at start are not slowed): what is still alive at a
            # later dump was allocated since the mark, i.e. the growth.
            tracemalloc.start(6)
            base[:] = [tracemalloc.take_snapshot()]

        def dump(_sig: int, _frame: Any) -> None:
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            if not base:
                return
            stats = snap.compare_to(base[0], "traceback")[:8]
            lines = []
            for st in stats:
                frames = [f"{Path(f.filename).relative_to(ROOT) if f.filename.startswith(str(ROOT)) else Path(f.filename).name}:{f.lineno}"
                          for f in st.traceback[-3:]]
                lines.append({"kb": round(st.size_diff / 1024, 1), "count": st.count_diff, "where": " <- ".join(reversed(frames))})
            tmp = trace_file + ".tmp"
            Path(tmp).write_text(json.dumps(lines))
            os.replace(tmp, trace_file)

        signal.signal(signal.SIGUSR2, mark)
        signal.signal(signal.SIGUSR1, dump)
    sys.argv = ["collector", *cli_args]
    from collector.cli import main

    main(cli_args, prog_name="collector")


# -- the parent: the ward's page -----------------------------------------------------------------------
def bed_scenario(bed: int, a: argparse.Namespace) -> str:
    proto = ("plx", "nonin")[bed % 2]
    night_s = a.hours * 3600 + 3600
    drops = "".join(f"[[disconnects]]\nat_s = {t}\nduration_s = 30\n\n" for t in range(1800, int(night_s), 1800))
    silent = ""
    if bed == a.beds - 1 and a.silent_h > 0:  # the last bed: connected, sending nothing, for part of the night
        silent = f"[[silences]]\nat_s = {a.silent_from_h * 3600:.0f}\nduration_s = {a.silent_h * 3600:.0f}\n\n"
    return (f'[device]\nprotocol = "{proto}"\naddress = "SIM-MEM-{bed + 1:02d}"\ninterval_s = 1.0\n\n'
            f"[night]\nduration_s = {night_s:.0f}\nseed = {200 + bed}\nnoise_spo2 = 0.8\n\n"
            f"[[desaturations]]\ncount = {int(a.hours * 6) + 1}\ndepth = 8\nduration_s = 60\n\n{drops}{silent}")


def operator_token(db: Path) -> str:
    """A technician's login token (written straight into the operator table, as test setup does)."""
    from collector.clock import utc_iso
    from collector.storage.db import open_db, transaction
    from collector.users import store
    from collector.users.passwords import hash_password

    conn = open_db(db).conn
    try:
        with transaction(conn):
            conn.execute("INSERT INTO users (name, password_hash, role, created_utc, created_by, password_changed_utc) "
                         "VALUES ('bench', ?, 'technician', ?, 'bench-setup', ?)",
                         (hash_password("bench password 1", n=2**10), utc_iso(time.time()), utc_iso(time.time())))
            token, _ = store.create_token(conn, "bench", kind="cli", at=time.time())
    finally:
        conn.close()
    return token


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Page:
    """What the page does against the daemon: the live stream, read as it comes, and its polls."""

    def __init__(self, base: str, token: str) -> None:
        import httpx

        self.base = base
        self.http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        self.stop = threading.Event()
        self.sessions: list[int] = []
        self.events = 0
        self.gets = 0
        self.errors: list[str] = []

    def stream(self) -> None:
        import httpx

        while not self.stop.is_set():
            try:
                with self.http.stream("GET", "/api/v1/events/stream", timeout=httpx.Timeout(60, read=30)) as resp:
                    for line in resp.iter_lines():
                        if line.startswith("event:"):
                            self.events += 1
                        if self.stop.is_set():
                            return
            except Exception as exc:  # the daemon is going away at the end; anything before is noted
                if not self.stop.is_set():
                    self.errors.append(f"stream: {exc!r}")
                    time.sleep(1)

    def poll(self) -> None:
        n = 0
        while not self.stop.wait(1.0):
            try:
                for path in ["/api/v1/web/status", "/api/v1/alerts", "/api/v1/sessions?limit=50"] + \
                        [f"/api/v1/sessions/{sid}/trend?minutes=30" for sid in self.sessions] + \
                        ([f"/api/v1/sessions/{sid}/trend" for sid in self.sessions] if n % 3 == 0 else []):
                    self.http.get(path).raise_for_status()
                    self.gets += 1
            except Exception as exc:
                if not self.stop.is_set():
                    self.errors.append(f"poll: {exc!r}")
            n += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=float, default=24.0, help="virtual hours of the night")
    p.add_argument("--beds", type=int, default=8)
    p.add_argument("--silent-from-h", type=float, default=3.0, help="virtual hour the last bed goes silent")
    p.add_argument("--silent-h", type=float, default=6.0, help="how long it stays silent (0: never)")
    p.add_argument("--from-h", type=float, default=2.0, help="the hour growth is measured from")
    p.add_argument("--bound-pct", type=float, default=10.0, help="RSS growth above this is not flat")
    p.add_argument("--trace", action="store_true", help="tracemalloc in the daemon: top growth sites each hour")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--tree", type=Path, default=ROOT, help="the source tree the daemon runs from (a 'before' run)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--trace-file", default=None, help=argparse.SUPPRESS)
    a, rest = p.parse_known_args(argv)
    if a.child:
        child(a.trace_file, rest[1:] if rest[:1] == ["--"] else rest)
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    db = work / "collector.sqlite"
    token = operator_token(db)
    scenarios = []
    for bed in range(a.beds):
        path = work / f"bed{bed + 1}.toml"
        path.write_text(bed_scenario(bed, a))
        scenarios += ["--simulate", str(path)]
    cfg = work / "config.toml"
    cfg.write_text(f"[ble]\nmax_beds_per_adapter = {max(5, a.beds)}\n")  # the simulated ward has one adapter
    trace_file = str(work / "trace.json") if a.trace else None
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"] + (["--trace-file", trace_file] if trace_file else []) + \
          ["--", "--db", str(db), "--config", str(cfg), "run", "--port", "0", "--speed", "max", *scenarios]
    env = {**os.environ, "PYTHONPATH": str(a.tree.resolve())}
    log = open(work / "daemon.log", "w")
    proc = subprocess.Popen(cmd, cwd=a.tree, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    wall0 = time.monotonic()
    base = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if "ready on http://" in line:
            base = line.split("ready on ", 1)[1].split()[0]
            break
    if base is None:
        print(f"the daemon did not start; see {work / 'daemon.log'}", file=sys.stderr)
        return 2
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    page = Page(base, token)
    t0 = None
    series: list[dict[str, Any]] = []
    next_h = 0
    try:
        for bed in range(a.beds):
            page.http.post("/api/v1/subjects", json={"id": SUBJECTS.format(bed + 1)}).raise_for_status()
            out = page.http.post("/api/v1/sessions", json={"subject_id": SUBJECTS.format(bed + 1), "oximeter": f"SIM-MEM-{bed + 1:02d}"})
            if out.status_code != 201:
                print(f"cannot start bed {bed + 1}: {out.status_code} {out.text}", file=sys.stderr)
                return 2
            page.sessions.append(out.json()["id"])
        threads = [threading.Thread(target=page.stream, daemon=True), threading.Thread(target=page.poll, daemon=True)]
        for t in threads:
            t.start()
        print(f"{'hour':>4} {'RSS MB':>8} {'in memory':>9} {'spilled':>8} {'behind':>8} {'stored':>9} {'alerts':>6} {'wall s':>7}",
              flush=True)
        while True:
            st = page.http.get("/api/v1/status").json()
            from collector.clock import parse_utc

            now = parse_utc(st["now_utc"])
            t0 = now if t0 is None else t0
            h = (now - t0) / 3600
            if h >= next_h:
                w = st.get("writer") or {}
                row = {"hour": next_h, "rss_mb": rss_kb(proc.pid) / 1024, "in_memory": w.get("unwritten_samples", 0)
                       - (w.get("spilled_samples") or 0), "spilled": w.get("spilled_samples") or 0,
                       "behind": w.get("unwritten_samples", 0), "stored": w.get("samples_committed", 0),
                       "alerts": len(st.get("alerts") or []), "wall_s": time.monotonic() - wall0}
                if a.trace and next_h == a.from_h:
                    proc.send_signal(signal.SIGUSR2)
                elif a.trace and next_h > a.from_h:
                    proc.send_signal(signal.SIGUSR1)
                    time.sleep(2.0)
                    try:
                        row["trace"] = json.loads(Path(trace_file).read_text())  # type: ignore[arg-type]
                    except (OSError, ValueError):
                        pass
                series.append(row)
                print(f"{row['hour']:>4} {row['rss_mb']:8.1f} {row['in_memory']:9d} {row['spilled']:8d} {row['behind']:8d} "
                      f"{row['stored']:9d} {row['alerts']:6d} {row['wall_s']:7.0f}", flush=True)
                for site in row.get("trace", [])[:5]:
                    print(f"       {site['kb']:+9.1f} kB {site['count']:+7d} objects  {site['where']}", flush=True)
                next_h += 1
                if next_h > a.hours:
                    break
            if proc.poll() is not None:
                print(f"the daemon ended early (exit {proc.returncode}); see {work / 'daemon.log'}", file=sys.stderr)
                return 2
            time.sleep(0.2)
    finally:
        page.stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    start = next((r for r in series if r["hour"] == a.from_h), series[0])
    end = series[-1]
    growth = (end["rss_mb"] - start["rss_mb"]) / start["rss_mb"] * 100
    flat = growth < a.bound_pct
    print(f"page: {page.events} stream events read, {page.gets} GETs, {len(page.errors)} errors"
          + (f" (first: {page.errors[0]})" if page.errors else ""))
    print(f"RSS hour {start['hour']} -> {end['hour']}: {start['rss_mb']:.1f} -> {end['rss_mb']:.1f} MB "
          f"({end['rss_mb'] / start['rss_mb']:.3f}x, {growth:+.1f} %): {'FLAT' if flat else 'GROWS'} "
          f"(bound {a.bound_pct:g} %); writer's memory at most {max(r['in_memory'] for r in series)} samples; "
          f"{end['wall_s']:.0f} s wall for {a.hours:g} virtual hours")
    (work / "series.json").write_text(json.dumps(series, indent=1))
    print(f"series: {work / 'series.json'}" if a.keep else "")
    if not a.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())

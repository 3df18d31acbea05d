"""CLI start-up benchmark: what a technician waits for, against ``python -c pass``.

Times ``collector --help``, ``collector status`` against a running daemon (started here on a
fresh database) and ``collector eligibility ID`` as separate processes, each beside
``python -c pass`` measured in the same run, and prints medians and their ratios.  The
goal (issue 17): --help <= 5x and status <= 8x ``python -c pass``.  Not a test.

    python bench/bench_cli.py [--runs 7] [--python PATH]

``--python`` runs another interpreter (e.g. one whose PYTHONPATH points at an older checkout)
to measure before and after on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUP = """
import sys, time
from collector.clock import utc_iso
from collector.storage import repo
from collector.storage.db import open_db, transaction
from collector.users import store
from collector.users.passwords import hash_password
conn = open_db(sys.argv[1]).conn
now = time.time()
with transaction(conn):
    conn.execute("INSERT INTO users (name, password_hash, role, created_utc, created_by, password_changed_utc) "
                 "VALUES ('bench', ?, 'investigator', ?, 'bench-setup', ?)", (hash_password("bench password 1", n=2**10), utc_iso(now), utc_iso(now)))
    repo.add_subject(conn, "SCR-0001", by="bench", at=now)
    token, _ = store.create_token(conn, "bench", kind="cli", at=now)
print(token)
"""


def timed(cmd: list[str], env: dict[str, str], runs: int) -> float:
    """Median wall time of ``runs`` runs of ``cmd`` (one warm-up run first); fails loudly on a non-zero exit."""
    samples = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode().strip()}")
        if i:
            samples.append(elapsed)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--no-bytecode", action="store_true", help="Keep PYTHONDONTWRITEBYTECODE from the environment.")
    args = ap.parse_args()
    py = args.python
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        env = {**os.environ, "COLLECTOR_CONFIG": str(Path(tmp) / "none.toml")}
        env.pop("COLLECTOR_TOKEN", None)
        # An installed collector has its bytecode compiled (pip does it at install); without this a
        # PYTHONDONTWRITEBYTECODE=1 shell would make every run compile every module from source.
        bytecode = "off (PYTHONDONTWRITEBYTECODE kept)" if args.no_bytecode else "cached, as installed"
        if not args.no_bytecode:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        Path(env["COLLECTOR_CONFIG"]).write_text("", encoding="utf-8")
        token = subprocess.run([py, "-c", SETUP, str(db)], env=env, check=True, capture_output=True, text=True).stdout.strip()
        cli = [py, "-m", "collector", "--db", str(db)]
        daemon = subprocess.Popen([*cli, "run", "--port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            runtime = db.with_name(db.name + ".daemon.json")
            deadline = time.monotonic() + 60
            while not runtime.exists():  # a benchmark, not a test: polling for the daemon is fine here
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.05)
            json.loads(runtime.read_text(encoding="utf-8"))
            anchor = timed([py, "-c", "pass"], env, args.runs)
            rows = [
                ("collector --help", timed([*cli, "--help"], env, args.runs), 5.0),
                ("collector status (daemon running)", timed([*cli, "status"], env, args.runs), 8.0),
                ("collector eligibility SCR-0001", timed([*cli, "eligibility", "SCR-0001"], {**env, "COLLECTOR_TOKEN": token}, args.runs), None),
            ]
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    print(f"python -c pass: {anchor * 1000:.0f} ms (anchor, median of {args.runs}; bytecode {bytecode})")
    for name, t, goal in rows:
        verdict = "" if goal is None else f"  goal <= {goal:g}x: {'met' if t / anchor <= goal else 'NOT met'}"
        print(f"{name:36} {t * 1000:7.0f} ms  {t / anchor:5.1f}x{verdict}")


if __name__ == "__main__":
    main()

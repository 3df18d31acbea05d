"""Ingest benchmark: a replayed 10 h, 1 Hz night for 24 beds through the whole path.

Path measured: PLX notification bytes -> codec -> row -> batching writer ->
SQLite (WAL, synchronous=FULL as configured by default) plus the O(1) live
burden.  Side by side, in the same run and on the same rows: naive per-row
``sqlite_utils`` ``insert`` (each call its own transaction) and one raw
``sqlite3.executemany`` in a single transaction.  Prints figures; not a test.

    python bench/bench_ingest.py [--beds 24] [--hours 10] [--naive-rows 5000]
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlite_utils

from collector.config import defaults
from collector.oximetry.live import make_live
from collector.oximetry.pipeline import ReadingPipeline, to_row
from collector.storage import repo
from collector.storage.writer import SAMPLE_COLUMNS, Writer
from drivers.protocols import plx
from drivers.protocols.common import OximeterEvent, OximeterReading
from drivers.protocols.registry import make_parser

CHAR = plx.PLX_CONTINUOUS_UUID
T0 = 1_767_000_000.0


def night_frames(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    spo2 = np.clip(np.rint(95 + rng.normal(0, 1.2, n)), 80, 100).astype(int)
    pulse = np.clip(np.rint(65 + rng.normal(0, 3, n)), 40, 120).astype(int)
    return [plx.encode_continuous(int(s), int(p), meas_status=1 << 5, dev_status=0) for s, p in zip(spo2, pulse)]


def reading_of(events: list[OximeterEvent]) -> OximeterReading:
    (reading,) = events
    assert isinstance(reading, OximeterReading)
    return reading


def setup_sessions(db_path: Path, beds: int) -> list[int]:
    w = Writer(db_path)
    try:
        def create(c: sqlite3.Connection) -> list[int]:
            ids = []
            for b in range(beds):
                repo.add_subject(c, f"BENCH-{b:03d}", by="bench", at=T0)
                ids.append(repo.open_session(c, subject_id=f"BENCH-{b:03d}", kind="night", device_id=None, by="bench", at=T0))
            return ids
        return w.submit(create).result()
    finally:
        w.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beds", type=int, default=24)
    ap.add_argument("--hours", type=float, default=10.0)
    ap.add_argument("--naive-rows", type=int, default=5000, help="rows for the naive insert (its rate is per row)")
    args = ap.parse_args()
    n = int(args.hours * 3600)
    total = n * args.beds
    frames = [night_frames(n, seed) for seed in range(args.beds)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    cfg = defaults()

    # 1. The collector's whole path.
    db_path = tmp / "collector.sqlite"
    session_ids = setup_sessions(db_path, args.beds)
    writer = Writer(db_path, flush_interval_s=cfg["storage"]["flush_interval_s"])
    pipes = [ReadingPipeline(sid, "plx", writer, live=make_live(cfg)) for sid in session_ids]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        t = T0 + i
        for b in range(args.beds):
            pipes[b].feed(t, CHAR, frames[b][i])
    for p in pipes:
        p.hand_over()
    writer.flush()
    wall_path, cpu_path = time.perf_counter() - wall0, time.process_time() - cpu0
    writer.close()
    stored = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM spo2_samples").fetchone()[0]
    assert stored == total, (stored, total)

    # Rows for the comparisons: decoded the same way, outside the timing.
    parser = make_parser("plx")
    rows = [to_row(session_ids[b], T0 + i, reading_of(parser.feed(T0 + i, CHAR, frames[b][i]))) for i in range(n) for b in range(args.beds)]

    # 2. Raw executemany, one transaction (pre-decoded rows: storage only).
    raw_db = tmp / "raw.sqlite"
    setup_sessions(raw_db, args.beds)
    conn = sqlite3.connect(raw_db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    wall0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO spo2_samples ({', '.join(SAMPLE_COLUMNS)}) VALUES ({', '.join('?' * len(SAMPLE_COLUMNS))})", rows)
    conn.execute("COMMIT")
    wall_raw = time.perf_counter() - wall0
    conn.close()

    # 3. Naive per-row sqlite_utils insert (each its own transaction), on a slice.
    naive_db = tmp / "naive.sqlite"
    setup_sessions(naive_db, args.beds)
    db = sqlite_utils.Database(naive_db)
    db.conn.execute("PRAGMA synchronous=FULL")
    table = db["spo2_samples"]
    dict_rows = [dict(zip(SAMPLE_COLUMNS, r)) for r in rows[: args.naive_rows]]
    wall0 = time.perf_counter()
    for r in dict_rows:
        table.insert(r)
    wall_naive = time.perf_counter() - wall0

    rate_path, rate_raw, rate_naive = total / wall_path, total / wall_raw, len(dict_rows) / wall_naive
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ingest of {args.beds} beds x {args.hours:g} h at 1 Hz = {total:,} samples (PLX frames, WAL, synchronous=FULL)")
    print(f"  collector path (decode + live burden + batched writer): {wall_path:7.2f} s  {rate_path:12,.0f} samples/s"
          f"  CPU {cpu_path / total * 1e6:.2f} us/sample")
    print(f"  raw sqlite3.executemany, 1 transaction (storage only):  {wall_raw:7.2f} s  {rate_raw:12,.0f} samples/s")
    print(f"  naive sqlite_utils insert per row ({len(dict_rows):,} rows):    {wall_naive:7.2f} s  {rate_naive:12,.0f} samples/s")
    print(f"  collector / naive = {rate_path / rate_naive:,.0f}x (target >= 50x);"
          f" collector / raw = {rate_path / rate_raw:.2f} (target >= 0.5)")
    print(f"  writer commits: {stored and 'ok'}; peak RSS {peak_mb:,.0f} MB (includes the {total:,} pre-decoded comparison rows)")


if __name__ == "__main__":
    main()

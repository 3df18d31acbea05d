"""Ingest benchmark: a replayed 10 h, 1 Hz night for 24 beds through the whole path.

Path measured: PLX notification bytes -> codec -> row -> batching writer ->
SQLite (WAL, synchronous=FULL as configured by default) plus the O(1) live
burden, once with one call per notification (as the daemon receives them) and
once batched (``ReadingPipeline.feed_many``, as a replay can); both must store
the same rows.  The live T90 update is also timed alone.  Side by side, in the same run and on the same rows: naive per-row
``sqlite_utils`` ``insert`` (each call its own transaction) and one raw
``sqlite3.executemany`` in a single transaction.  Prints figures; not a test.

    python bench/bench_ingest.py [--beds 24] [--hours 10] [--naive-rows 5000] [--batch 60]
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

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


def run_path(db_path: Path, beds: int, frames: list[list[bytes]], cfg: dict[str, Any], *, batch: int) -> tuple[float, float]:
    """Decode, live burden and batched writer for every bed's night; (wall, CPU) seconds until committed."""
    n = len(frames[0])
    session_ids = setup_sessions(db_path, beds)
    writer = Writer(db_path, flush_interval_s=cfg["storage"]["flush_interval_s"])
    pipes = [ReadingPipeline(sid, "plx", writer, live=make_live(cfg)) for sid in session_ids]
    times = [T0 + i for i in range(n)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if batch:
        for i in range(0, n, batch):
            for b in range(beds):
                pipes[b].feed_many(CHAR, zip(times[i:i + batch], frames[b][i:i + batch]))
    else:
        for i in range(n):
            t = times[i]
            for b in range(beds):
                pipes[b].feed(t, CHAR, frames[b][i])
    for p in pipes:
        p.hand_over()
    writer.flush()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    writer.close()
    stored = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM spo2_samples").fetchone()[0]
    assert stored == n * beds, (stored, n * beds)
    return wall, cpu


def dump(db_path: Path) -> list[tuple[Any, ...]]:
    return sqlite3.connect(db_path).execute(f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM spo2_samples"
                                      " ORDER BY session_id, host_utc_ms, rowid").fetchall()


def live_cost(night: list[bytes], cfg: dict[str, Any]) -> tuple[float, float]:
    """CPU microseconds per sample of the live T90 update: ``add`` per sample, ``add_many`` per night (best of 3)."""
    parser = make_parser("plx")
    readings = [reading_of(parser.feed(T0 + i, CHAR, f)) for i, f in enumerate(night)]
    t = [T0 + i for i in range(len(night))]
    s = [r.spo2_pct for r in readings]
    v = [r.valid for r in readings]

    def one() -> None:
        live = make_live(cfg)
        for a, b, c in zip(t, s, v):
            live.add(a, b, c)

    def many() -> None:
        make_live(cfg).add_many(t, s, v)

    def best(fn: Any) -> float:
        runs = []
        for _ in range(3):
            c = time.process_time()
            fn()
            runs.append(time.process_time() - c)
        return min(runs) / len(t) * 1e6

    return best(one), best(many)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beds", type=int, default=24)
    ap.add_argument("--hours", type=float, default=10.0)
    ap.add_argument("--naive-rows", type=int, default=5000, help="rows for the naive insert (its rate is per row)")
    ap.add_argument("--batch", type=int, default=60, help="frames per feed_many call in the batched path")
    args = ap.parse_args()
    n = int(args.hours * 3600)
    total = n * args.beds
    frames = [night_frames(n, seed) for seed in range(args.beds)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    cfg = defaults()

    # 1. The collector's whole path, as the daemon runs it: one call per notification.
    wall_frame, cpu_frame = run_path(tmp / "per-frame.sqlite", args.beds, frames, cfg, batch=0)
    # 2. The same path batched (a replayed capture): each bed's notifications in stretches of --batch frames.
    wall_path, cpu_path = run_path(tmp / "collector.sqlite", args.beds, frames, cfg, batch=args.batch)
    session_ids = setup_sessions(tmp / "ids.sqlite", args.beds)  # the same ids as in every database here
    assert dump(tmp / "per-frame.sqlite") == dump(tmp / "collector.sqlite"), "the batched path stored other rows"

    # The live T90 burden alone, on one bed's night: per sample (the daemon) and in one batch.
    live_one, live_many = live_cost(frames[0], cfg)

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

    rate_frame, rate_path = total / wall_frame, total / wall_path
    rate_raw, rate_naive = total / wall_raw, len(dict_rows) / wall_naive
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ingest of {args.beds} beds x {args.hours:g} h at 1 Hz = {total:,} samples (PLX frames, WAL, synchronous=FULL)")
    print(f"  collector path, one call per notification (the daemon): {wall_frame:7.2f} s  {rate_frame:12,.0f} samples/s"
          f"  CPU {cpu_frame / total * 1e6:.2f} us/sample")
    print(f"  collector path, batched ({args.batch} frames per call):     {wall_path:7.2f} s  {rate_path:12,.0f} samples/s"
          f"  CPU {cpu_path / total * 1e6:.2f} us/sample  (same rows as per notification)")
    print(f"  raw sqlite3.executemany, 1 transaction (storage only):  {wall_raw:7.2f} s  {rate_raw:12,.0f} samples/s")
    print(f"  naive sqlite_utils insert per row ({len(dict_rows):,} rows):    {wall_naive:7.2f} s  {rate_naive:12,.0f} samples/s")
    print(f"  batched / raw = {rate_path / rate_raw:.2f} (target >= 0.6); per notification / raw = {rate_frame / rate_raw:.2f};"
          f" batched / naive = {rate_path / rate_naive:,.0f}x (target >= 50x)")
    print(f"  live T90 update: {live_one:.2f} us CPU per sample one by one (add), {live_many:.2f} us batched (add_many)"
          f" (target <= 2)")
    print(f"  peak RSS {peak_mb:,.0f} MB (includes the {total:,} pre-decoded comparison rows)")

if __name__ == "__main__":
    main()

"""Benchmark: the study warehouse fed from a local S3 server (moto's server mode, from the test extras).

Builds SUBJECTS subjects x NIGHTS whole nights (8 h at 1 Hz, 150 disconnect gaps each) on two sites,
stored straight into each site's database and exported as real bundle zips, uploads them with the
upload code, then syncs the warehouse twice.  Prints bundles/s, Parquet size against the sites' SQLite
size, and the time of "T90 of every night of every site", each against an anchor measured in the
same run (verify alone; the same query on the sites' SQLite files).  Not a test.

    .venv/bin/python bench/bench_warehouse.py [--subjects 100] [--nights 3] [--hours 8] [--keep DIR]

--keep DIR keeps the sites and bundles in DIR and reuses them on the next run.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' night generator (site_bundles) and S3 server (s3_server)

from collector.config import load_config  # noqa: E402
from collector.export.verify import verify_bundle  # noqa: E402
from collector.storage.db import open_db  # noqa: E402
from collector.upload.target import parse_s3_url  # noqa: E402
from collector.upload.upload import process, queue  # noqa: E402
from collector.warehouse.sync import sync  # noqa: E402

T0 = 1_767_000_000.0


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def build(root: Path, subjects: int, nights: int, hours: float) -> tuple[list[Path], list[Path]]:
    """Sites and bundle zips; resumes a build that was stopped (subjects already exported are kept)."""
    from collector.storage import repo
    from site_bundles import Site

    t = time.perf_counter()
    sites = [Site(root / f"site{k}", f"Bench Hospital {k}") for k in (1, 2)]
    zips = []
    t_export = 0.0
    made = 0
    for i in range(subjects):
        s = sites[i % 2]
        subject = f"SCR-{i + 1:04d}"
        done = sorted((s.root / "out").glob(f"{subject}_*.zip"))
        if done and not zipfile.is_zipfile(done[-1]):  # cut while it was written: export it again
            done[-1].unlink()
            done = []
        if done:
            zips.append(done[-1])
            continue
        have = len(repo.list_sessions(s.conn, subject)) if subject in {x["id"] for x in repo.list_subjects(s.conn)} else 0
        if nights - have > 0:
            s.subject(subject, nights=nights - have, hours=hours, gaps=150, desat=0.005 + 0.04 * (i % 7) / 6)
        e = time.perf_counter()
        zips.append(s.export(subject, s.root / "out", at=T0 + 60 * 86400 + i))
        t_export += time.perf_counter() - e
        made += 1
        if made % 10 == 0:
            print(f"  built {made} more subjects, {i + 1}/{subjects} in all ({time.perf_counter() - t:.0f} s)", flush=True)
    for s in sites:
        s.close()
    if made:
        print(f"built {made} subjects x {nights} nights of {hours:g} h in {time.perf_counter() - t:.0f} s (export {t_export:.0f} s)")
    return [s.db for s in sites], zips


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=100)
    ap.add_argument("--nights", type=int, default=3)
    ap.add_argument("--hours", type=float, default=8.0)
    ap.add_argument("--keep", type=Path, help="keep (and reuse) the sites and bundles in this folder")
    args = ap.parse_args()

    import duckdb
    from s3_server import AWS_ENV, S3Server

    os.environ.update(AWS_ENV)
    with tempfile.TemporaryDirectory() as tmpdir:
        root = args.keep or Path(tmpdir)
        root.mkdir(parents=True, exist_ok=True)
        dbs, zips = build(root / "sites", args.subjects, args.nights, args.hours)
        n = len(zips)
        server = S3Server()
        server.bucket("bench-study")
        config = load_config(None)
        config["object_store"]["endpoint_url"] = server.url
        url = parse_s3_url("s3://bench-study/bundles")
        try:
            t = time.perf_counter()
            for db in dbs:
                conn = open_db(db).conn
                mine = [z for z in zips if z.parent.parent == db.parent]
                rows = queue(conn, mine, url, by="bench", now=time.time())
                run = process(conn, rows, config=config, by="bench", now=time.time)
                assert all(o.state in ("uploaded", "already_uploaded") for o in run.outcomes), run.outcomes[:1]
                conn.close()
            t_upload = time.perf_counter() - t
            k = min(n, 10)
            t = time.perf_counter()
            assert all(verify_bundle(z).ok for z in zips[:k])
            t_verify = (time.perf_counter() - t) / k
            out = Path(tmpdir) / "warehouse"
            t = time.perf_counter()
            first = sync(url, out, config=config, now=time.time())
            t_sync = time.perf_counter() - t
            assert len(first.loaded) == n and not first.rejected, (len(first.loaded), first.rejected[:1])
            t = time.perf_counter()
            second = sync(url, out, config=config, now=time.time())
            t_second = time.perf_counter() - t
            assert second.loaded == []
        finally:
            server.stop()

        print(f"{n} bundles ({args.nights} nights each, {first.rows['samples']} samples)")
        print(f"upload (verify + put): {n / t_upload:.2f} bundles/s")
        print(f"verify alone (anchor): {1 / t_verify:.2f} bundles/s")
        print(f"sync (get + verify + Parquet): {n / t_sync:.2f} bundles/s = {(n / t_sync) * t_verify:.2f} x verify alone; "
              f"second sync (nothing new) {t_second * 1000:.0f} ms")
        sqlite_files = [p for db in dbs for p in (db, db.with_name(db.name + "-wal"))]
        sqlite_b = _size(sqlite_files)
        parquet_b = _size(list((out / "parquet").rglob("*.parquet")))
        print(f"sizes: SQLite {sqlite_b / 1e6:.1f} MB (2 site databases), bundles {_size(zips) / 1e6:.1f} MB, "
              f"Parquet {parquet_b / 1e6:.1f} MB = {parquet_b / sqlite_b:.3f} x SQLite")

        con = duckdb.connect(str(out / "study.duckdb"), read_only=True)

        def timed(fn: object, reps: int = 5) -> tuple[float, int]:
            best, rows = float("inf"), 0
            for _ in range(reps):
                t = time.perf_counter()
                rows = len(fn())  # type: ignore[operator]
                best = min(best, time.perf_counter() - t)
            return best, rows

        q_nights, r_nights = timed(lambda: con.execute(
            "SELECT site_uuid, subject, session_id, t90_pct FROM nights ORDER BY ALL").fetchall())
        q_samples, r_samples = timed(lambda: con.execute(
            "SELECT site_uuid, session_uuid, 100.0 * count(*) FILTER (WHERE valid AND spo2_pct < 90)"
            " / nullif(count(*) FILTER (WHERE valid), 0) FROM samples GROUP BY ALL").fetchall())

        def from_sqlite() -> list[tuple[object, ...]]:
            out_rows: list[tuple[object, ...]] = []
            for db in dbs:
                c = sqlite3.connect(db)
                out_rows += c.execute("SELECT session_id, t90_pct FROM night_reports r WHERE id = "
                                      "(SELECT max(id) FROM night_reports WHERE session_id = r.session_id)").fetchall()
                c.close()
            return out_rows

        def samples_sqlite() -> list[tuple[object, ...]]:
            out_rows: list[tuple[object, ...]] = []
            for db in dbs:
                c = sqlite3.connect(db)
                out_rows += c.execute("SELECT session_id, 100.0 * sum(valid AND spo2_pct < 90) / sum(valid)"
                                      " FROM spo2_samples GROUP BY session_id").fetchall()
                c.close()
            return out_rows

        a_nights, ra = timed(from_sqlite)
        a_samples, _ = timed(samples_sqlite, reps=2)
        con.close()
        print(f"T90 of every night of every site ({r_nights} nights): warehouse nights view {q_nights * 1000:.1f} ms, "
              f"sites' SQLite night_reports (anchor) {a_nights * 1000:.1f} ms = {q_nights / a_nights:.2f} x anchor")
        print(f"share of valid samples < 90 % per night from the samples ({r_samples} nights): Parquet {q_samples * 1000:.0f} ms, "
              f"SQLite spo2_samples (anchor) {a_samples * 1000:.0f} ms = {q_samples / a_samples:.3f} x anchor")
        assert ra == r_nights


if __name__ == "__main__":
    main()

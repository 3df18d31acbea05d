"""The batched ingest path (``ReadingPipeline.feed_many``, ``LiveBurden.add_many``) stores exactly what the
per-notification path stores: the same sample rows (every column, byte for byte), gaps and events, the same
live T90 figures, and seals that verify.  Random nights with gaps through the real writer and SQLite, and
one whole 10 h night with hundreds of gaps."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.config import defaults
from collector.oximetry.analysis.live import LiveBurden
from collector.oximetry.live import make_live
from collector.oximetry.pipeline import ReadingPipeline
from collector.storage import repo, seals
from collector.storage.writer import SAMPLE_COLUMNS, Writer
from drivers.protocols import berrymed, nonin, plx

T0 = 1_767_000_000.0
CFG = defaults()
UUID = {"plx": plx.PLX_CONTINUOUS_UUID, "nonin": nonin.NONIN_CONTINUOUS_UUID, "berrymed": berrymed.BERRYMED_NOTIFY_UUID}
# Measurement / device status words: none, early estimate (questionable, counted), invalid, sensor off.
PLX_STATUS = [(1 << 5, 0), (1 << 6, 0), (1 << 15, 0), (0, 1 << 15), (None, None)]


def plx_frame(spo2: int | None, pulse: int | None, status: int, pai: float | None) -> bytes:
    meas, dev = PLX_STATUS[status]
    return plx.encode_continuous(spo2, pulse, meas_status=meas, dev_status=dev, pai=pai)


def frame(protocol: str, i: int, spo2: int | None, pulse: int | None, status: int, pai: float | None, counter: int) -> bytes:
    if protocol == "plx":
        if status == 4 and i % 7 == 0:
            return b"\x1f\x00"  # a malformed notification: counted, dropped
        return plx_frame(spo2, pulse, status, pai)
    if protocol == "nonin":
        return nonin.encode_frame(spo2, pulse, counter=counter, pai=pai or 0.0)
    return berrymed.encode_packet(None if spo2 is None else spo2 % 128, pulse, no_finger=status == 2)


# One stretch of a night: notifications (t, bytes), then the link drops (interrupt) or not.
Stretch = tuple[list[tuple[float, bytes]], bool]


def night(protocol: str, seed: int, n: int, n_gaps: int) -> list[Stretch]:
    """A night of ``n`` notifications at the protocol's rate with ``n_gaps`` drops of random length."""
    rng = np.random.default_rng(seed)
    period = 0.1 if protocol == "berrymed" else 1.0
    spo2 = np.clip(np.rint(92 + np.cumsum(rng.normal(0, 0.6, n))), 40, 100).astype(int)
    pulse = np.clip(np.rint(65 + rng.normal(0, 4, n)), 30, 200).astype(int)
    status = rng.choice(len(PLX_STATUS), n, p=[0.85, 0.05, 0.04, 0.03, 0.03])
    missing = rng.random(n) < 0.02
    pai = np.where(rng.random(n) < 0.5, np.rint(rng.uniform(0.2, 9.0, n) * 100) / 100, np.nan)
    cuts = sorted(set(rng.integers(1, max(n - 1, 2), n_gaps).tolist())) if n > 2 else []
    # Counter jumps (lost packets) for Nonin; a few 0.3-0.7 s jitters in the host time stamps.
    skip = rng.random(n) < 0.01
    stretches: list[Stretch] = []
    t, counter, cur = T0, 0, []
    cut_set = set(cuts)
    for i in range(n):
        counter += 2 if skip[i] else 1
        pai_i = None if np.isnan(pai[i]) else float(pai[i])
        cur.append((t, frame(protocol, i, None if missing[i] else int(spo2[i]), int(pulse[i]), int(status[i]), pai_i, counter)))
        t += period * (1 + float(rng.choice([0.0, 0.0, 0.0, 0.3, -0.3]))) if protocol != "berrymed" else period
        if i in cut_set:
            stretches.append((cur, True))
            cur = []
            t += float(rng.choice([3.0, 40.0, 600.0, 3600.0]))
    stretches.append((cur, False))
    return stretches


def record(db: Path, protocol: str, stretches: list[Stretch], *, batch: int | None, seed: int = 0) -> dict[str, Any]:
    """Play a night through a pipeline on the real writer; what the database holds afterwards."""
    writer = Writer(db, flush_interval_s=0.05, synchronous="NORMAL")
    try:
        def create(c: sqlite3.Connection) -> int:
            repo.add_subject(c, "BATCH-001", by="test", at=T0)
            return repo.open_session(c, subject_id="BATCH-001", kind="night", device_id=None, by="test", at=T0)

        sid = writer.submit(create).result()
        events: list[tuple[float, str, dict[str, Any]]] = []
        p = ReadingPipeline(sid, protocol, writer, live=make_live(CFG), on_event=lambda t, k, d: events.append((t, k, d)))
        rng = np.random.default_rng(seed)
        frames = 0
        for notes, dropped in stretches:
            if batch is None:
                for t, data in notes:
                    frames += p.feed(t, UUID[protocol], data)
            else:
                i = 0
                while i < len(notes):  # stretches of random length, as a buffer would hand them over
                    k = int(rng.integers(1, batch + 1))
                    frames += p.feed_many(UUID[protocol], notes[i:i + k])
                    i += k
            if notes:
                end = notes[-1][0] + 0.5
                p.interrupt(end, "device_disconnected" if dropped else "session_stopped")
        writer.flush()
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute(f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM spo2_samples ORDER BY rowid").fetchall()
            typed = conn.execute(f"SELECT {', '.join(f'typeof({c})' for c in SAMPLE_COLUMNS)} FROM spo2_samples ORDER BY rowid").fetchall()
            gaps = conn.execute("SELECT start_utc_ms, end_utc_ms, cause, detail FROM gaps ORDER BY id").fetchall()
            stored_events = conn.execute("SELECT t_utc_ms, kind, detail_json FROM events ORDER BY id").fetchall()
            check = seals.verify(conn)
        finally:
            conn.close()
        return {"rows": rows, "types": typed, "gaps": gaps, "events": stored_events, "told": events, "frames": frames,
                "samples": p.samples, "last": (p.last_sample_t, p.last_reading), "snapshot": p.live.snapshot,
                "parser": (p.parser.stats.frames, p.parser.stats.errors, p.parser.stats.lost_packets), "seals_ok": check.ok}
    finally:
        writer.close()


def same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["rows"] and a["seals_ok"] and b["seals_ok"]
    for key in a:
        if key != "seals_ok":
            assert a[key] == b[key], key


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(protocol=st.sampled_from(["plx", "nonin", "berrymed"]), seed=st.integers(0, 2**32 - 1),
       n=st.integers(3, 1500), n_gaps=st.integers(0, 30), batch=st.integers(1, 200))
def test_batched_path_stores_what_the_per_frame_path_stores(tmp_path_factory: Any, protocol: str, seed: int, n: int,
                                                            n_gaps: int, batch: int) -> None:
    tmp = tmp_path_factory.mktemp("night")
    stretches = night(protocol, seed, n, n_gaps)
    same(record(tmp / "frame.sqlite", protocol, stretches, batch=None),
         record(tmp / "batch.sqlite", protocol, stretches, batch=batch, seed=seed))


def test_a_whole_night_with_hundreds_of_gaps_batched_equals_per_frame(tmp_path: Path) -> None:
    stretches = night("plx", 17, 36_000, 300)  # 10 h at 1 Hz, 300 drops
    a = record(tmp_path / "frame.sqlite", "plx", stretches, batch=None)
    b = record(tmp_path / "batch.sqlite", "plx", stretches, batch=600, seed=3)
    same(a, b)
    ms = [r[1] for r in a["rows"]]
    assert sum(1 for x, y in zip(ms, ms[1:]) if y - x > 2_000) >= 250  # the drops are in it
    assert 3_600_000 < a["snapshot"].analysed_ms < a["snapshot"].recording_ms


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 120, allow_nan=False), st.one_of(st.none(), st.just(float("nan")), st.floats(-5, 105)),
                          st.booleans(), st.booleans()), max_size=300),
       st.integers(1, 50))
def test_live_add_many_equals_add_one_by_one(samples: list[tuple[float, float | None, bool, bool]], chunk: int) -> None:
    """Same snapshot, same events at the same samples, same refusals, with breaks between the batches."""
    one, many = LiveBurden(alert_min_analysed_ms=10_000), LiveBurden(alert_min_analysed_ms=10_000)
    t = T0
    steps = []
    for dt, s, v, brk in samples:
        t += dt if dt > 1 else -dt  # some samples go back in time: refused by both
        steps.append((t, s, v, brk))
    got_one: list[Any] = []
    got_many: list[Any] = []
    for k in range(0, len(steps), chunk):
        part = steps[k:k + chunk]
        for i, (ts, s, v, _) in enumerate(part):
            try:
                got_one += [(k + i, e) for e in one.add(ts, s, v)]
            except Exception as exc:
                got_one.append((k + i, str(exc)))
        events, rejected = many.add_many([p[0] for p in part], [p[1] for p in part], [p[2] for p in part])
        merged = [(k + i, e) for i, e in events] + [(k + i, str(exc)) for i, exc in rejected]
        got_many += sorted(merged, key=lambda x: x[0])
        if part and part[-1][3]:
            cut = max(p[0] for p in steps[:k + chunk]) + 0.25  # never before the latest sample
            one.interrupt(cut)
            many.interrupt(cut)
        assert one.snapshot == many.snapshot
    assert got_one == got_many

"""The reading pipeline acts on the codecs' events: samples become rows, lost packets a gap,
device replies go to the transport side; no protocol is special-cased in it."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest

from collector.oximetry import pipeline as pipeline_module
from collector.oximetry.pipeline import ReadingPipeline
from collector.storage import repo
from collector.storage.writer import Writer
from drivers.protocols import berrymed, nonin, plx
from drivers.protocols.common import OximeterEvent, RacpReply

T0 = 1_767_000_000.0


@pytest.fixture
def session(tmp_path: Path):
    writer = Writer(tmp_path / "p.sqlite", flush_interval_s=0.01, synchronous="NORMAL")

    def create(c: sqlite3.Connection) -> int:
        repo.add_subject(c, "PIPE-001", by="test", at=T0)
        return repo.open_session(c, subject_id="PIPE-001", kind="night", device_id=None, by="test", at=T0)

    sid = writer.submit(create).result()
    yield writer, sid, tmp_path / "p.sqlite"
    writer.close()


def _stored(db: Path, sid: int):
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT host_utc_ms, spo2_pct, counter FROM spo2_samples WHERE session_id = ? ORDER BY host_utc_ms", (sid,)).fetchall()
    gaps = conn.execute("SELECT start_utc_ms, end_utc_ms, cause, detail FROM gaps WHERE session_id = ?", (sid,)).fetchall()
    return rows, gaps


def test_lost_packets_event_becomes_a_gap(session):
    writer, sid, db = session
    p = ReadingPipeline(sid, "nonin", writer)
    for i, counter in enumerate([10, 11, 12, 16, 17]):  # 13, 14, 15 never arrived
        p.feed(T0 + (i if counter < 16 else i + 3), nonin.NONIN_CONTINUOUS_UUID, nonin.encode_frame(95, 60, counter=counter))
    p.close(T0 + 10)
    writer.flush()
    rows, gaps = _stored(db, sid)
    assert [r[2] for r in rows] == [10, 11, 12, 16, 17]
    assert gaps == [(round((T0 + 2) * 1000), round((T0 + 6) * 1000), "lost_packets", "3 packets")]
    assert p.lost_packets == 3


def test_berrymed_reduction_is_the_codecs(session):
    writer, sid, db = session
    p = ReadingPipeline(sid, "berrymed", writer)
    for i in range(40):  # 4 s at 10 packets a second
        p.feed(T0 + i / 10, berrymed.BERRYMED_NOTIFY_UUID, berrymed.encode_packet(90 + i // 10, 60))
    p.close(T0 + 4)  # the open last second is emitted at the end
    writer.flush()
    rows, _ = _stored(db, sid)
    assert [(r[0] - round(T0 * 1000), r[1]) for r in rows] == [(900, 90), (1900, 91), (2900, 92), (3900, 93)]


def test_device_replies_reach_the_transport_side(session):
    writer, sid, _ = session
    seen: list[OximeterEvent] = []
    p = ReadingPipeline(sid, "plx", writer, on_device_event=seen.append)
    assert p.feed(T0, plx.RACP_UUID, plx.encode_racp_count_response(4)) == 1
    assert seen == [RacpReply(T0, count=4)]


def test_pipeline_has_no_protocol_branches():
    """The codec owns what differs between devices: no `protocol == "..."` in the pipeline."""
    tree = ast.parse(Path(pipeline_module.__file__).read_text(encoding="utf-8"))
    names = {"plx", "nonin", "berrymed", "o2ring"}
    found = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names]
    assert found == []

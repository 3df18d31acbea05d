"""The export's pure parts without a database: EDF grid, BagIt checker, privacy scrubber, CSV round trips."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.export import bag, csvs, edf
from collector.export.privacy import Scrubber, address_tokens, date_tokens
from collector.storage.audit import GENESIS, row_hash


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=300), st.integers(0, 999))
def test_grid_keeps_every_sample_in_order(steps, offset):
    """Irregular host times (bursts, jitter, long gaps): one cell per sample, order kept, shift reported."""
    t = 1_767_000_000_000 + offset + np.cumsum(np.array(steps, dtype=np.int64))
    g = edf.grid(t, fs=1)
    assert g.cells.size == t.size and np.all(np.diff(g.cells) >= 1)
    ideal = np.rint((t - g.start_ms) / 1000.0).astype(np.int64)
    assert np.all(g.cells >= ideal)
    assert g.max_shift_s == float((g.cells - ideal).max())
    assert g.n_cells % edf.RECORD_S == 0 and g.n_cells > g.cells[-1]


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=500), st.integers(min_value=40, max_value=600))
def test_a_note_becomes_annotations_of_at_most_the_limit_joined_back_exactly(text, limit):
    """Any text (CJK, emoji, controls): each annotation fits ``limit`` UTF-8 bytes, none has a TAL separator,
    pieces are cut between characters and join back to the note (controls shown as _)."""
    parts = edf.note_texts(text, limit=limit)
    assert all(len(p.encode("utf-8")) <= limit for p in parts)
    assert not any(ch in p for p in parts for ch in "\x00\x14\x15")
    bodies = [p.split(": ", 1)[1] for p in parts]
    if len(parts) > 1:
        assert [p.split(": ", 1)[0] for p in parts] == [f"note {k}/{len(parts)}" for k in range(1, len(parts) + 1)]
    assert "".join(bodies) == "".join("_" if ord(c) < 32 or ord(c) == 127 else c for c in text)


def test_edf_round_trip_with_jitter_and_invalid_values(tmp_path):
    import pyedflib

    t = 1_767_000_000_000 + np.array([0, 1000, 1990, 2005, 3000, 9000, 9999, 10001], dtype=np.int64)
    spo2 = np.array([95, 94, np.nan, 88.5, 91, 92, 93, 100.0])
    pulse = np.array([60, 61, 62, 63, np.nan, 65, 66, 67.0])
    valid = np.array([1, 1, 0, 1, 1, 0, 1, 1], dtype=bool)
    pvalid = np.ones(8, dtype=bool)
    data, g = edf.night_edf(t_ms=t, spo2=spo2, pulse=pulse, valid=valid, pulse_valid=pvalid,
                            gaps=[{"start_utc_ms": int(t[4]), "end_utc_ms": int(t[5]), "cause": "device_disconnected"},
                                  {"start_utc_ms": int(t[7]), "end_utc_ms": None, "cause": "daemon_down"}],
                            events=[{"t_utc_ms": int(t[3]), "kind": "t90_threshold_exceeded"}],
                            pseudonym="SCR-0001", equipment="Nonin 3150", session_id=7)
    assert g.max_shift_s == 1.0  # 1990 and 2005 both round to cell 2; the second moves to 3
    sig = edf.read_signals(data)
    got = sig["SpO2"]["data"][sig["SpO2"]["digital"] != -1]
    np.testing.assert_allclose(got, [95, 94, 88.5, 91, 93, 100], atol=0.051)
    got = sig["Pulse"]["data"][sig["Pulse"]["digital"] != -1]
    np.testing.assert_allclose(got, [60, 61, 62, 63, 65, 66, 67], atol=0.051)
    texts = [a[2] for a in sig["annotations"]]
    assert "gap: device_disconnected" in texts and "gap: daemon_down" in texts and "event: t90_threshold_exceeded" in texts
    (tmp_path / "n.edf").write_bytes(data)
    with pyedflib.EdfReader(str(tmp_path / "n.edf")) as f:
        assert f.getSignalLabels() == ["SpO2", "Pulse"]
        assert f.getEquipment().strip() == "Nonin 3150"  # EDF+ spaces are stored as "_"
        assert f.getPatientCode().strip() == "SCR-0001"


def _bag() -> bag.Bag:
    files = bag.build_bag({"a.csv": b"x,y\n1,2\n", "sub/b.json": b"{}"}, [("Source-Organization", "Site 1")])
    return bag.Bag("t", files)


def test_bag_layout_and_checker():
    b = _bag()
    assert bag.check_bag(b) == []
    assert b.files["bagit.txt"] == b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
    assert b"Payload-Oxum: 10.2\n" in b.files["bag-info.txt"]
    man = b.files["manifest-sha256.txt"].decode().splitlines()
    assert [line.split("  ")[1] for line in man] == ["data/a.csv", "data/sub/b.json"]
    assert sorted(line.split("  ")[1] for line in b.files["tagmanifest-sha256.txt"].decode().splitlines()) == [
        "bag-info.txt", "bagit.txt", "manifest-sha256.txt"]


@pytest.mark.parametrize("name", ["bagit.txt", "bag-info.txt", "manifest-sha256.txt", "tagmanifest-sha256.txt", "data/a.csv"])
def test_every_byte_of_the_small_bag_matters(name):
    for pos in range(len(_bag().files[name])):
        b = _bag()
        data = bytearray(b.files[name])
        data[pos] = (data[pos] + 7) % 256
        b.files[name] = bytes(data)
        problems = bag.check_bag(b)
        assert any(name == f or name in p for f, p in problems), (pos, problems)


def test_scrubber_finds_dates_and_addresses_in_any_spelling():
    tokens = date_tokens(date(1971, 4, 23)) + address_tokens("c4:7f:51:00:ab:12")
    s = Scrubber(sorted(tokens, key=len, reverse=True))
    assert s.text("born 23.04.1971 at C4-7F-51-00-AB-12") == "born <withheld> at <withheld>"
    assert s.text("counter 2197104230") == "counter 2197104230", "digit forms only match as whole numbers"
    assert s.leaks({"a": "23-APR-1971".encode(), "b": "1971-04-23".encode("utf-16-le"), "c": b"fine"}) == ["a", "b"]
    assert address_tokens("abc") == []


def test_audit_rows_round_trip_nulls_exactly():
    content = {"at_utc": "2025-01-01T00:00:00.000Z", "actor": "a", "action": "x", "subject_id": "SCR-1",
               "session_id": None, "old_value": "", "new_value": None, "reason": None}
    h = row_hash(GENESIS, content)
    row = {"id": 1, **content, "prev_hash": GENESIS, "row_hash": h}
    rec = csvs.read_csv(csvs.write_csv(csvs.AUDIT_COLUMNS, [csvs.audit_row_out(row, [])]), csvs.AUDIT_COLUMNS)[0]
    back = csvs.audit_row_in(rec)
    assert back["old_value"] == "" and back["new_value"] is None and back["session_id"] is None
    assert row_hash(back["prev_hash"], back) == h


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_utc_ms_text_is_exact(ms):
    assert csvs.parse_iso_ms(csvs.iso_ms(ms)) == ms


_CELL = st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-2**40, 2**40), st.text(max_size=8))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-2**40, 2**45), _CELL, st.sampled_from([None, 91.0, 88.5]), st.integers(0, 9),
                          st.text(alphabet=',"\n ab', max_size=4)), max_size=40))
def test_the_column_writer_writes_the_bytes_of_the_row_writer(rows):
    """Samples are written column by column; every byte must equal the row-by-row writer's (ms times included)."""
    cols = ["id", "t", "mixed", "spo2", "flags", "names"]
    by_row = csvs.write_csv(cols, [{"id": "u-1", "t": csvs.iso_ms(t), "mixed": m, "spo2": s, "flags": f, "names": n}
                                   for t, m, s, f, n in rows])
    t, m, s, f, n = (list(c) for c in zip(*rows)) if rows else ([], [], [], [], [])
    by_column = csvs.write_columns(cols, {"id": "u-1", "t": csvs.iso_ms_column(np.array(t, dtype=np.int64)),
                                          "mixed": csvs.cells(m), "spo2": csvs.cells(s), "flags": csvs.cells(f),
                                          "names": csvs.cells(n)}, len(rows))
    assert by_column == by_row

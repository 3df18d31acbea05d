"""Whole nights through the export CLI: three 12 h nights with 300 gaps each and the technicians' notes
(Chinese, mixed, up to the 500-character limit), read back by pyEDFlib and edfio.

The nights are stored straight into the store (samples, gaps, events, a finalised report): simulating
36 h of BLE traffic would test the recorder, not the export."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.config import defaults
from collector.export import edf
from collector.export.verify import verify_bundle
from collector.oximetry import store as oximetry_store
from collector.storage import repo
from collector.storage.db import open_db, transaction
from collector.ward import store as ward_store
from conftest import T0, invoke

SUBJECT = "SCR-0777"
NIGHT_S = 12 * 3600
N_GAPS = 300
# What technicians write in the night, Chinese first; the longest is the 500-character limit (1500 UTF-8 bytes)
NOTE_TEXTS = ("患者起床如厕", "探头重新固定 probe re-taped", "患者诉胸闷，已通知值班医生", "血氧探头脱落 02:10 已复位",
              "patient got up", "家属陪护；室温 26 °C", "床旁设备报警 → 已处理 ✓", "😴 睡眠中翻身频繁",
              "夜班护士更换指夹" * 62 + "完毕", "长" * 500)
NOTES_PER_NIGHT = 80


def _store_night(conn, rng: np.random.Generator, start: float) -> tuple[int, dict]:
    """One 12 h, 1 Hz night with host jitter, 300 disconnect gaps, finger-out runs and events."""
    t = (start * 1000 + np.arange(NIGHT_S) * 1000 + rng.integers(-40, 40, NIGHT_S)).astype(np.int64)
    keep = np.ones(NIGHT_S, dtype=bool)
    gaps = []
    for s in np.sort(rng.choice(np.arange(60, NIGHT_S - 300, 130), N_GAPS, replace=False)):
        n = int(rng.integers(3, 100))
        keep[s:s + n] = False
        gaps.append((int(t[s - 1]) + 500, int(t[s + n]) - 500))
    t = t[keep]
    m = t.size
    spo2 = np.clip(np.rint(rng.normal(95, 2.5, m)), 70, 100)
    pulse = np.rint(rng.normal(64, 6, m))
    valid = np.ones(m, dtype=bool)
    for s in rng.choice(m - 200, 40, replace=False):  # finger-out runs: samples without a valid value
        valid[s:s + int(rng.integers(2, 60))] = False
    spo2_col = np.where(rng.random(m) < 0.01, np.nan, spo2)  # a device "missing" code now and then
    pvalid = valid & (rng.random(m) > 0.01)
    with transaction(conn):
        sid = repo.add_recorded_session(conn, subject_id=SUBJECT, kind="night", origin="simulated", started_at=start,
                                        stopped_at=start + NIGHT_S, by="tester", settings={})
        rows = [(sid, int(t[i]), None, None if np.isnan(spo2_col[i]) else float(spo2_col[i]), float(pulse[i]), None,
                 int(valid[i] and not np.isnan(spo2_col[i])), int(pvalid[i]), 0 if valid[i] else 4, None, None)
                for i in range(m)]
        oximetry_store.insert_samples(conn, rows, at=start + NIGHT_S)
        for a, b in gaps:
            repo.add_gap(conn, sid, start_ms=a, end_ms=b, cause="device_disconnected")
        for k in range(0, m, 997):
            repo.add_event(conn, sid, t_ms=int(t[k]), kind="note", detail={"n": k})
        for j, k in enumerate(np.sort(rng.choice(m, NOTES_PER_NIGHT, replace=False))):
            ward_store.add_note(conn, sid, NOTE_TEXTS[j % len(NOTE_TEXTS)], by="tester", at=int(t[k]) / 1000)
        oximetry_store.finalise(conn, sid, defaults(), at=start + NIGHT_S, actor="tester", reason="night ended")
    ok = np.array([r[6] == 1 for r in rows])
    return sid, {"t": t, "spo2": np.where(ok, spo2_col, np.nan), "pulse": pulse, "pvalid": pvalid, "gaps": gaps}


@pytest.fixture(scope="module")
def long_export(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("long")
    db = tmp / "site.sqlite"
    cfg = tmp / "site.toml"
    cfg.write_text('[site]\nname = "Test Hospital 1"\n')
    conn = open_db(db).conn
    with transaction(conn):
        repo.add_subject(conn, SUBJECT, by="tester", at=T0)
    rng = np.random.default_rng(12)
    nights = dict(_store_night(conn, rng, T0 + k * 86400) for k in range(3))
    conn.close()
    r = invoke(db, "export", SUBJECT, "--out", str(tmp / "out"), "--json", config=cfg, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return {"bundle": Path(json.loads(r.output)[0]["path"]), "nights": nights}


def test_three_long_nights_export_and_verify(long_export):
    result = verify_bundle(long_export["bundle"])
    assert result.ok, result.problems
    assert len(long_export["nights"]) == 3
    # the site reads Chinese: each night's page of report.pdf (the night picture, also the PNG) is titled in Chinese
    import pypdf

    text = "".join("".join(p.extract_text().split()) for p in pypdf.PdfReader(long_export["bundle"] / "data/report.pdf").pages)
    for sid in long_export["nights"]:
        assert f"夜间血氧监测：受试者{SUBJECT}，记录{sid}" in text


@pytest.mark.parametrize("k", [0, 1, 2])
def test_long_night_reads_back_equal_in_pyedflib_and_edfio(long_export, k):
    import edfio
    import pyedflib

    sid, night = sorted(long_export["nights"].items())[k]
    path = long_export["bundle"] / f"data/night_{sid}.edf"
    with pyedflib.EdfReader(str(path)) as f:
        assert f.getSignalLabels() == ["SpO2", "Pulse"]
        py = [f.readSignal(0), f.readSignal(1)]
        py_dig = [f.readSignal(0, digital=True), f.readSignal(1, digital=True)]
        onsets, durations, texts = f.readAnnotations()
        assert f.getStartdatetime().timestamp() == night["t"][0] // 1000
    e = edfio.read_edf(path)
    assert [s.label for s in e.signals] == ["SpO2", "Pulse"]
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(e.signals[i].data), py[i])
        np.testing.assert_array_equal(np.asarray(e.signals[i].digital), py_dig[i])
    ann_edfio = [(round(a.onset, 3), a.text) for a in e.annotations]
    ann_py = [(round(float(o), 3), str(t)) for o, t in zip(onsets, texts)]
    assert sorted(ann_edfio) == sorted(ann_py)
    assert sum(t == "gap: device_disconnected" for t in texts) == N_GAPS
    # every valid value, in order, at its own second; nothing else but the "no value" minimum
    want = night["spo2"][np.isfinite(night["spo2"])]
    np.testing.assert_allclose(py[0][py_dig[0] != -1], want, atol=0.051)
    np.testing.assert_allclose(py[1][py_dig[1] != -1], night["pulse"][night["pvalid"]], atol=0.051)
    g = edf.grid(night["t"])
    np.testing.assert_array_equal(np.flatnonzero(py_dig[0] != -1), g.cells[np.isfinite(night["spo2"])])


@pytest.mark.parametrize("k", [0, 2])
def test_discontinuous_edf_leaves_gaps_out(long_export, k):
    """EDF+D: the seconds without a valid value are not in the file at all; edfio reads the rest."""
    import edfio

    sid, night = sorted(long_export["nights"].items())[k]
    data = (long_export["bundle"] / f"data/night_{sid}.discontinuous.edf").read_bytes()
    assert data[192:197] == b"EDF+D"
    e = edfio.read_edf(io.BytesIO(data))
    starts = edf.record_starts(data)
    g = edf.grid(night["t"])
    ok = np.isfinite(night["spo2"]) | night["pvalid"]
    assert starts.tolist() == sorted(set(g.cells[ok].tolist()))  # one 1-s record per second with a value
    for a, b in night["gaps"]:  # no record inside any gap
        inside = (starts > (a - g.start_ms) / 1000.0 + 1) & (starts < (b - g.start_ms) / 1000.0 - 1)
        assert not inside.any()
    spo2 = np.asarray(e.signals[0].digital)
    assert (spo2 != -1).sum() == np.isfinite(night["spo2"]).sum()
    assert sum(a.text == "gap: device_disconnected" for a in e.annotations) == N_GAPS


def _joined_notes(texts: list[str]) -> list[str]:
    """The night notes from annotation texts: ``note: x`` whole, ``note k/n: piece`` joined back."""
    out: list[str] = []
    for text in texts:
        head, _, body = text.partition(": ")
        if head == "note":
            out.append(body)
        elif head.startswith("note "):
            if head.startswith("note 1/"):
                out.append(body)
            else:
                out[-1] += body
    return out


@pytest.mark.parametrize("layout", ["edf", "discontinuous.edf"])
def test_chinese_notes_come_back_byte_exact_from_pyedflib_and_edfio(long_export, layout):
    """UTF-8 annotations as EDF+ has them: every note of every night, in order, exactly as stored; no annotation
    text over EDFlib's 512 bytes (pyEDFlib would cut it mid-character); the header stays ASCII."""
    import edfio
    import pyedflib

    for sid, _night in sorted(long_export["nights"].items()):
        path = long_export["bundle"] / f"data/night_{sid}.{layout}"
        data = path.read_bytes()
        data[:256 * 4].decode("ascii")  # header (3 signals): ASCII only
        assert data[8:88].decode().split() == [SUBJECT, "X", "X", "X"]
        csv_notes = [r for r in _csv_rows(long_export["bundle"] / f"data/notes_{sid}.csv")]
        want = [r["text"] for r in csv_notes]
        assert len(want) == NOTES_PER_NIGHT and "长" * 500 in want
        texts_edfio = [a.text for a in edfio.read_edf(io.BytesIO(data)).annotations]
        assert all(len(t.encode("utf-8")) <= edf.ANNOTATION_TEXT_MAX_BYTES for t in texts_edfio)
        assert _joined_notes(texts_edfio) == want
        assert sum(t == "gap: device_disconnected" for t in texts_edfio) == N_GAPS
        for note in want:  # byte-exact: each piece's UTF-8 bytes are in the file as stored
            assert all(p.encode("utf-8") in data for p in edf.note_texts(note))
        if layout == "edf":  # pyEDFlib refuses EDF+D
            with pyedflib.EdfReader(str(path)) as f:
                onsets, _d, texts = f.readAnnotations()
            assert _joined_notes([str(t) for t in texts]) == want
            note_onsets = [round(float(o)) for o, t in zip(onsets, texts) if str(t).startswith(("note: ", "note 1/"))]
            g = edf.grid(_night["t"])
            assert note_onsets == [round((n["t_utc_ms"] - g.start_ms) / 1000) for n in _notes_ms(csv_notes)]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _notes_ms(rows: list[dict[str, str]]) -> list[dict[str, int]]:
    from collector.clock import parse_utc

    return [{"t_utc_ms": int(round(parse_utc(r["t_utc"]) * 1000))} for r in rows]

"""Import of nights recorded elsewhere: csv, O2Ring export and EDF, through the real CLI and SQLite.

Hand-made files with hand-computed T90, malformed files that must name the line
or field, and the all-or-nothing rule: a failed import leaves no rows behind.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.cli import main
from collector.errors import InvalidInput
from collector.oximetry.importers import local_to_utc, naive_seconds, parse_utc_offset
from collector.oximetry.importers.csv_night import parse_csv_night
from collector.oximetry.importers.edf_night import parse_edf_night, round_to_resolution
from collector.oximetry.importers.o2ring_csv import parse_o2ring_csv, parse_ring_time
from collector.oximetry.importers.ingest import parse_night, sample_flags
from drivers.protocols.common import Flag, OximeterReading, apply_range_rules
from conftest import invoke

START = "2025-03-06T22:00:00Z"
START_S = dt.datetime(2025, 3, 6, 22, 0, tzinfo=dt.timezone.utc).timestamp()


def cli(db: Path, *args: str):
    return invoke(db, *args, operator="tech.a")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "c.sqlite"
    r = cli(path, "subject", "add", "SCR-0042")
    assert r.exit_code == 0, r.output
    return path


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def counts(db: Path) -> tuple[int, int, int, int]:
    conn = sqlite3.connect(db)
    return tuple(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # type: ignore[return-value]
                 for t in ("sessions", "spo2_samples", "night_reports", "audit"))


# A small night whose T90 is computed by hand (max_hold_s = 10):
#   0-4 s 95 | 4-8 s 89 (<90) | 8-12 s 90 (not <90, but <=90) | 12-16 s '--' (gap) |
#   16-26 s 88 (<90, hold capped at 10 s) | 26-30 s nothing (gap) | 30-31 s 92 |
#   31-33 s 0 (dropout, gap) | 33-34 s 89.5 (<90) | 34 s last sample (holds 0 s)
HAND_CSV = "time,spo2,pulse\n0,95,60\n4,89,61\n8,90,\n12,--,--\n16,88,62\n30,92,63\n31,0,0\n33,89.5,64\n34,95,65\n"
HAND = {"recording_s": 34.0, "analysed_s": 24.0, "t90_s": 15.0, "t90_s_inclusive": 19.0}


# ---------------------------------------------------------------------------------- csv


def test_hand_night_imported_then_reported_has_the_exact_t90(db: Path, tmp_path: Path) -> None:
    f = write(tmp_path, "night.csv", HAND_CSV)
    r = cli(db, "import", str(f), "--subject", "SCR-0042", "--format", "csv", "--start", START, "--json")
    assert r.exit_code == 0, r.output
    imported = json.loads(r.stdout)
    sid = imported["session_id"]
    rep = cli(db, "report", str(sid), "--json")
    assert rep.exit_code == 0, rep.output
    j = json.loads(rep.stdout)
    for k, v in HAND.items():
        assert j[k] == v, k
    assert j["t90_pct"] == 15 * 100 / 24 == 62.5
    assert j["t90_pct_inclusive"] == 19 * 100 / 24
    assert j["t90_pct_of_recording"] == 15 * 100 / 34
    assert j["gaps"]["by_cause"]["invalid_samples"]["total_s"] == 6.0
    assert j["gaps"]["by_cause"]["max_hold_exceeded"]["total_s"] == 4.0
    assert j["origin"] == "import" and j["stored"] is True and j["provisional"] is False
    assert j["report_id"] == imported["report_id"], "the report stored at import is the one shown"
    assert j["decision"] == "invalid" and j["meets_t90_criterion"] is None
    conn = sqlite3.connect(db)
    srow = conn.execute("SELECT origin, state, kind, started_utc, stopped_utc, settings_json FROM sessions WHERE id = ?", (sid,)).fetchone()
    assert srow[:5] == ("import", "stopped", "night", "2025-03-06T22:00:00.000Z", "2025-03-06T22:00:34.000Z")
    assert "night.csv" not in srow[5], "file names may carry a name: only the hash is kept"
    rows = conn.execute("SELECT host_utc_ms, spo2_pct, pulse_bpm, valid, pulse_valid, flags FROM spo2_samples WHERE session_id = ? ORDER BY host_utc_ms", (sid,)).fetchall()
    assert len(rows) == 9
    assert rows[3] == (int(START_S * 1000) + 12_000, None, None, 0, 0, int(Flag.SPO2_MISSING | Flag.PULSE_MISSING))
    assert rows[6][1:4] == (0.0, 0.0, 0), "SpO2 0 is stored as read and is never a valid value"
    assert rows[2][2:5] == (None, 1, 0), "an empty pulse invalidates the pulse only"
    actions = [a for (a,) in conn.execute("SELECT action FROM audit WHERE session_id = ?", (sid,))]
    assert actions == ["night_report_computed", "night_imported"]
    assert cli(db, "verify-audit").exit_code == 0


def test_csv_with_utc_iso_times_and_offsets(tmp_path: Path) -> None:
    text = "time,spo2\n2025-03-06T22:00:00Z,95\n2025-03-06T23:00:01+01:00,94\n2025-03-06T22:00:02.500+00:00,93\n"
    n = parse_csv_night(text.encode())
    assert n.t_utc_s.tolist() == [START_S, START_S + 1, START_S + 2.5]
    assert np.isnan(n.pulse).all() and n.spo2.tolist() == [95, 94, 93]
    # column order is free, names are case-insensitive
    n2 = parse_csv_night(b"SpO2,Time\n95,0\n96,1\n", start_utc=START)
    assert n2.spo2.tolist() == [95, 96] and n2.t_utc_s[0] == START_S


@pytest.mark.parametrize(
    ("text", "start", "needle"),
    [
        ("time,spo2\n2025-03-06T22:00:00,95\n2025-03-06T22:00:01,95\n", None, "line 2: time '2025-03-06T22:00:00' has no zone"),
        ("time,spo2\n0,95\n1,abc\n", START, "line 3: spo2 'abc' is not a number"),
        ("time,spo2,pulse\n0,95,60\n1,95,xx\n", START, "line 3: pulse 'xx' is not a number"),
        ("time,sat\n0,95\n", START, "line 1 (header)"),
        ("time,spo2,spo2\n0,95,95\n", START, "line 1 (header)"),
        ("time,spo2\n0,95\n1,95,3\n", START, "line 3: has 3 fields"),
        ("time,spo2\n0,95\n2,95\n1,95\n", START, "line 4: time is not after the previous sample's (line 3)"),
        ("time,spo2\n0,95\n0,95\n", START, "line 3: time is not after"),
        ("time,spo2\n0,95\n2025-03-06T22:00:00Z,95\n", START, "line 3: time"),
        ("time,spo2\n0,95\n1,95\n", None, "--start"),
        ("time,spo2\n2025-03-06T22:00:00Z,95\n2025-03-06T22:00:01Z,95\n", START, "--start is only for"),
        ("time,spo2\nyesterday,95\n", None, "line 2: time 'yesterday'"),
        ("time,spo2\n,95\n", None, "line 2: time is empty"),
        ("time,spo2\n-5,95\n", START, "line 2: time '-5'"),
        ("", None, "empty"),
        ("time,spo2\n", None, "0 samples"),
        ("time,spo2\n0,95\n", START, "1 sample;"),
    ],
)
def test_malformed_csv_names_the_line(text: str, start: str | None, needle: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_csv_night(text.encode(), start_utc=start)
    assert needle in exc.value.message


def test_failed_import_leaves_nothing_behind(db: Path, tmp_path: Path) -> None:
    before = counts(db)
    # Parse errors: refused before anything is written.
    bad = write(tmp_path, "bad.csv", "time,spo2\n0,95\n1,95\n2,9x5\n")
    r = cli(db, "import", str(bad), "--subject", "SCR-0042", "--format", "csv", "--start", START)
    assert r.exit_code == 2 and "line 4: spo2 '9x5' is not a number" in r.stderr
    # A failure inside the transaction (after the session row is written): two samples
    # in the same millisecond.  The session row must be rolled back too.
    clash = write(tmp_path, "clash.csv", "time,spo2\n0,95\n1.0001,95\n1.0002,95\n")
    r = cli(db, "import", str(clash), "--subject", "SCR-0042", "--format", "csv", "--start", START)
    assert r.exit_code == 2 and "less than 1 ms apart" in r.stderr
    # Unknown subject: nothing written either.
    ok = write(tmp_path, "ok.csv", HAND_CSV)
    r = cli(db, "import", str(ok), "--subject", "SCR-0999", "--format", "csv", "--start", START)
    assert r.exit_code == 4 and "unknown subject" in r.stderr
    assert counts(db) == before
    assert cli(db, "verify-audit").exit_code == 0


def test_the_same_file_is_not_imported_twice(db: Path, tmp_path: Path) -> None:
    f = write(tmp_path, "n.csv", HAND_CSV)
    assert cli(db, "import", str(f), "--subject", "SCR-0042", "--format", "csv", "--start", START).exit_code == 0
    before = counts(db)
    r = cli(db, "import", str(f), "--subject", "SCR-0042", "--format", "csv", "--start", START)
    assert r.exit_code == 5 and "already imported as session 1" in r.stderr
    assert counts(db) == before


def _boundary_csv(n_below: int, n_at_90: int = 0) -> str:
    """5 h at 1 Hz (18 000 s analysed); n_below one-second samples at 89, then n_at_90 at 90."""
    spo2 = np.full(18_001, 95)
    spo2[100 : 100 + n_below] = 89
    spo2[1000 : 1000 + n_at_90] = 90
    return "time,spo2\n" + "".join(f"{i},{v}\n" for i, v in enumerate(spo2.tolist()))


@pytest.mark.parametrize(
    ("n_below", "n_at_90", "decision", "borderline", "shown"),
    [
        (360, 0, "pass", False, "T90 2.00 % <= 2 %"),
        (361, 0, "fail", False, "T90 2.01 % > 2 %"),
        (360, 10, "pass", True, "BORDERLINE"),
    ],
)
def test_boundary_nights_through_import_and_report(db: Path, tmp_path: Path, n_below: int, n_at_90: int,
                                                   decision: str, borderline: bool, shown: str) -> None:
    f = write(tmp_path, "b.csv", _boundary_csv(n_below, n_at_90))
    r = cli(db, "import", str(f), "--subject", "SCR-0042", "--format", "csv", "--start", START, "--json")
    assert r.exit_code == 0, r.output
    sid = json.loads(r.stdout)["session_id"]
    j = json.loads(cli(db, "report", str(sid), "--json").stdout)
    assert j["analysed_s"] == 18_000.0 and j["t90_s"] == float(n_below)
    assert j["decision"] == decision and j["borderline"] is borderline and j["night_valid"] is True
    assert j["meets_t90_criterion"] is (decision == "pass")
    text = cli(db, "report", str(sid)).stdout
    assert shown in text


# ---------------------------------------------------------------------------------- O2Ring

O2RING = (
    "Time,Oxygen Level,Pulse Rate,Motion\n"
    "22:20:56 Mar 06 2025,95,62,0\n"
    "22:21:00 Mar 06 2025,94,63,0\n"
    "22:21:04 Mar 06 2025,89,64,3\n"
    "22:21:08 Mar 06 2025,90,66,0\n"
    "22:21:12 Mar 06 2025,85,70,0\n"
    "22:21:16 Mar 06 2025,78,72,0\n"
    "22:21:20 Mar 06 2025,--,--,0\n"
    "22:21:24 Mar 06 2025,255,255,0\n"
    "22:21:28 Mar 06 2025,--,--,0\n"
    "22:21:32 Mar 06 2025,88,70,0\n"
    "22:21:36 Mar 06 2025,93,66,0\n"
    "22:21:40 Mar 06 2025,--,--,0\n"
    "22:21:44 Mar 06 2025,--,--,0\n"
)


def test_o2ring_export_is_read_with_local_time_and_missing_codes() -> None:
    n = parse_o2ring_csv(O2RING.encode(), tz="Europe/Berlin")
    t0 = dt.datetime(2025, 3, 6, 21, 20, 56, tzinfo=dt.timezone.utc).timestamp()  # CET = UTC+1 in March
    assert n.t_utc_s[0] == t0 and np.all(np.diff(n.t_utc_s) == 4.0)
    assert n.device_time[0] == "2025-03-06T22:20:56"
    assert np.isnan(n.spo2[[6, 7, 8, 11, 12]]).all(), "-- and 255 are missing, never values"
    assert np.isnan(n.pulse[7]), "pulse 255 is a missing code"
    assert n.source["device_clock"] == {"tz": "Europe/Berlin", "utc_offset": "+01:00"}
    summer = parse_o2ring_csv(O2RING.replace("Mar", "Jul").encode(), tz="Europe/Berlin")
    assert summer.source["device_clock"]["utc_offset"] == "+02:00"
    fixed = parse_o2ring_csv(O2RING.encode(), utc_offset="-05:00")
    assert fixed.t_utc_s[0] == t0 + 6 * 3600


def test_o2ring_night_imported_flags_the_run_of_missing_codes_after_a_fall(db: Path, tmp_path: Path) -> None:
    f = write(tmp_path, "O2Ring 0009_1741296056000.csv", O2RING)
    r = cli(db, "import", str(f), "--subject", "SCR-0042", "--format", "o2ring-csv", "--tz", "Europe/Berlin", "--json")
    assert r.exit_code == 0, r.output
    sid = json.loads(r.stdout)["session_id"]
    j = json.loads(cli(db, "report", str(sid), "--json").stdout)
    # holds of 4 s: 89, 85, 78 below 90 (12 s); 90 counts only inclusive; 88 below (4 s)
    assert j["t90_s"] == 16.0 and j["t90_s_inclusive"] == 20.0 and j["analysed_s"] == 32.0
    assert j["recording_s"] == 48.0
    deep = j["suspected_deep_desaturation"]
    assert len(deep) == 1 and deep[0]["last_valid_spo2"] == 78.0 and deep[0]["n_invalid_samples"] == 3
    assert "suspected_deep_desaturation" in j["review_reasons"]
    text = cli(db, "report", str(sid)).stdout
    assert "Suspected deep desaturations" in text and "last valid SpO2 78 %" in text


def test_o2ring_requires_a_zone_and_says_so(db: Path, tmp_path: Path) -> None:
    f = write(tmp_path, "r.csv", O2RING)
    r = cli(db, "import", str(f), "--subject", "SCR-0042", "--format", "o2ring-csv")
    assert r.exit_code == 2
    assert "local clock" in r.stderr and "--tz" in r.stderr and "--utc-offset" in r.stderr
    r = cli(db, "import", str(f), "--subject", "SCR-0042", "--format", "o2ring-csv", "--tz", "Europe/Berlin", "--utc-offset", "+01:00")
    assert r.exit_code == 2 and "not both" in r.stderr
    r = cli(db, "import", str(f), "--subject", "SCR-0042", "--format", "o2ring-csv", "--tz", "Atlantis/Capital")
    assert r.exit_code == 2 and "IANA" in r.stderr


def test_o2ring_daylight_saving_edges() -> None:
    # 02:30 on 26 Oct 2025 happens twice in Berlin: the offset would be a guess.
    amb = "Time,Oxygen Level,Pulse Rate,Motion\n02:30:00 Oct 26 2025,95,60,0\n02:30:04 Oct 26 2025,95,60,0\n"
    with pytest.raises(InvalidInput, match="ambiguous or does not exist"):
        parse_o2ring_csv(amb.encode(), tz="Europe/Berlin")
    assert parse_o2ring_csv(amb.encode(), utc_offset="+02:00").t_utc_s[0] == dt.datetime(2025, 10, 26, 0, 30, tzinfo=dt.timezone.utc).timestamp()
    # A night across the change keeps one offset (the ring's clock runs on) and says so.
    span = "Time,Oxygen Level,Pulse Rate,Motion\n23:00:00 Oct 25 2025,95,60,0\n04:00:00 Oct 26 2025,95,60,0\n"
    n = parse_o2ring_csv(span.encode(), tz="Europe/Berlin")
    assert n.t_utc_s[1] - n.t_utc_s[0] == 5 * 3600
    assert "daylight-saving" in n.source["device_clock"]["note"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("22:20:56 Mar 06 2025", dt.datetime(2025, 3, 6, 22, 20, 56)),
        ("10:20:56 PM Mar 06 2025", dt.datetime(2025, 3, 6, 22, 20, 56)),
        ("12:05:00 AM Mar 07 2025", dt.datetime(2025, 3, 7, 0, 5, 0)),
        ("10:20:56PM March 6, 2025", dt.datetime(2025, 3, 6, 22, 20, 56)),
        ("22:48:36 26/10/2023", dt.datetime(2023, 10, 26, 22, 48, 36)),
    ],
)
def test_o2ring_time_spellings(text: str, expected: dt.datetime) -> None:
    assert parse_ring_time(text, "line 2") == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("Time,Oxygen Level,Pulse Rate,Motion\n22:20:56 Mar 06 2025,95,60,0\n25:20:56 Mar 06 2025,95,60,0\n", "line 3: Time '25:20:56 Mar 06 2025'"),
        ("Time,Oxygen Level,Pulse Rate,Motion\n22:20:56 Mar 06 2025,95,60,0\n22:21:00 Foo 06 2025,95,60,0\n", "line 3: Time"),
        ("Time,Oxygen Level,Pulse Rate,Motion\n22:20:56 Mar 06 2025,95,60,0\n22:21:00 Mar 06 2025,9.5.,60,0\n", "line 3: Oxygen Level '9.5.'"),
        ("Time,Oxygen Level,Pulse Rate,Motion\n22:20:56 Mar 06 2025,95,60,0\n22:21:00 Mar 06 2025\n", "line 3: has 1 fields"),
        ("Time,Heart,Motion\n22:20:56 Mar 06 2025,95,0\n", "line 1 (header): no Oxygen Level"),
        ("Date,Oxygen Level\n22:20:56 Mar 06 2025,95\n", "line 1 (header): no Time column"),
        ("Time,Oxygen Level,Pulse Rate,Motion\n22:21:00 Mar 06 2025,95,60,0\n22:20:56 Mar 06 2025,95,60,0\n", "line 3: time is not after"),
    ],
)
def test_malformed_o2ring_names_the_line(text: str, needle: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_o2ring_csv(text.encode(), utc_offset="+00:00")
    assert needle in exc.value.message


def test_o2ring_insight_pro_header_and_utf16() -> None:
    text = "Time,SpO2(%),Pulse Rate(bpm),Motion,SpO2 Reminder,PR Reminder\n\"10:00:00PM May 01, 2024\",96,58,0,0,0\n\"10:00:04PM May 01, 2024\",97,59,0,0,0\n"
    n = parse_o2ring_csv(text.encode("utf-16"), utc_offset="+00:00")
    assert n.spo2.tolist() == [96, 97] and n.pulse.tolist() == [58, 59]
    assert n.t_utc_s[0] == dt.datetime(2024, 5, 1, 22, 0, tzinfo=dt.timezone.utc).timestamp()


# ---------------------------------------------------------------------------------- EDF


def _edf(path: Path, signals: list[tuple[str, str, np.ndarray, float, tuple[float, float] | None]],
         start: dt.datetime = dt.datetime(2025, 3, 6, 22, 0, 0)) -> Path:
    from edfio import Edf, EdfSignal

    sigs = [EdfSignal(data.astype(float), fs, label=label, physical_dimension=unit, physical_range=rng)
            for label, unit, data, fs, rng in signals]
    edf = Edf(sigs, starttime=start.time())
    edf.startdate = start.date()
    edf.write(path)
    return path


def _spo2_series() -> np.ndarray:
    """1 Hz, 60 s: 10 s at 89, 10 s at exactly 90, 5 s of 0 (dropout), the rest 95-96."""
    s = np.full(60, 95.0)
    s[1::2] = 96
    s[10:20] = 89
    s[20:30] = 90
    s[40:45] = 0
    return s


def test_edf_written_with_edfio_is_imported_exactly(db: Path, tmp_path: Path) -> None:
    spo2 = _spo2_series()
    pulse = np.linspace(60, 70, 30)  # 0.5 Hz pulse, held to the SpO2 times
    f = _edf(tmp_path / "night.edf", [
        ("PI", "%", np.full(60, 2.5), 1.0, (0, 20)),  # a % channel before SpO2: the label wins
        ("SpO2", "%", spo2, 1.0, (0, 100)),
        ("Pulse", "bpm", pulse, 0.5, (0, 250)),
    ])
    r = cli(db, "import", str(f), "--subject", "SCR-0042", "--format", "edf", "--utc-offset", "+01:00", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["source"]["spo2_channel"] == "SpO2" and out["source"]["spo2_channel_chosen_by"] == "label"
    assert out["source"]["pulse_channel"] == "Pulse"
    sid = out["session_id"]
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT host_utc_ms, spo2_pct, pulse_bpm, valid FROM spo2_samples WHERE session_id = ? ORDER BY host_utc_ms", (sid,)).fetchall()
    assert rows[0][0] == int(dt.datetime(2025, 3, 6, 21, 0, tzinfo=dt.timezone.utc).timestamp() * 1000)
    assert [r[1] for r in rows[20:30]] == [90.0] * 10, "EDF scaling must not turn a recorded 90 into 89.999"
    assert [r[3] for r in rows[40:45]] == [0] * 5
    assert rows[2][2] == pytest.approx(pulse[1], abs=0.01) and rows[3][2] == pytest.approx(pulse[1], abs=0.01)
    j = json.loads(cli(db, "report", str(sid), "--json").stdout)
    # 59 s recording; 5 s dropout; 10 s at 89 below 90, 10 s at 90 only inclusive
    assert (j["recording_s"], j["analysed_s"], j["t90_s"], j["t90_s_inclusive"]) == (59.0, 54.0, 10.0, 20.0)


def test_edf_channel_choice_and_errors(tmp_path: Path) -> None:
    spo2 = _spo2_series()
    two = _edf(tmp_path / "two.edf", [("Sat A", "%", spo2, 1.0, (0, 100)), ("SaO2 finger", "%", spo2 - 1, 1.0, (-1, 100))]).read_bytes()
    assert parse_edf_night(two, utc_offset="Z").source["spo2_channel"] == "SaO2 finger"
    picked = parse_edf_night(two, channel="sat a", utc_offset="Z")
    assert picked.source["spo2_channel"] == "Sat A" and picked.spo2[0] == 95
    unit_only = _edf(tmp_path / "u.edf", [("EEG", "uV", np.zeros(60), 1.0, (-100, 100)), ("Ox", "%", spo2, 1.0, (0, 100))]).read_bytes()
    assert parse_edf_night(unit_only, utc_offset="Z").source["spo2_channel_chosen_by"] == "unit %"
    with pytest.raises(InvalidInput, match=r"--channel 'Nope': no such channel; the file has 'Sat A', 'SaO2 finger'"):
        parse_edf_night(two, channel="Nope", utc_offset="Z")
    none = _edf(tmp_path / "n.edf", [("EEG", "uV", np.zeros(60), 1.0, (-100, 100))]).read_bytes()
    with pytest.raises(InvalidInput, match="no SpO2 channel found"):
        parse_edf_night(none, utc_offset="Z")
    with pytest.raises(InvalidInput, match="not a readable EDF"):
        parse_edf_night(b"0       garbage" * 40, utc_offset="Z")
    with pytest.raises(InvalidInput, match="not a readable EDF"):
        parse_edf_night(two[:300], utc_offset="Z")
    with pytest.raises(InvalidInput, match="--tz Europe/Berlin"):
        parse_edf_night(two)


def test_round_to_resolution_recovers_written_values() -> None:
    gain = 100 / 65535
    written = np.array([89.0, 90.0, 94.5, 100.0])
    digital = np.round(written / gain)
    assert round_to_resolution(digital * gain, gain).tolist() == written.tolist()
    assert round_to_resolution(np.array([89.6]), 1.0).tolist() == [90.0]
    assert round_to_resolution(np.array([89.96]), 0.1).tolist() == [90.0]


# ---------------------------------------------------------------------------------- shared rules


def test_sample_flags_follow_the_codec_rules() -> None:
    spo2s = [math.nan, 0.0, 49.0, 50.0, 89.5, 90.0, 100.0, 101.0, 255.0]
    pulses = [math.nan, 0.0, 19.0, 20.0, 250.0, 251.0]
    grid = [(s, p) for s in spo2s for p in pulses]
    valid, pvalid, flags = sample_flags(np.array([g[0] for g in grid]), np.array([g[1] for g in grid]))
    for i, (s, p) in enumerate(grid):
        s_in = None if math.isnan(s) else s
        p_in = None if math.isnan(p) else p
        f = apply_range_rules(s_in, p_in, Flag.NONE)
        reading = OximeterReading(s_in, p_in, f)
        assert (bool(valid[i]), bool(pvalid[i]), int(flags[i])) == (reading.valid, reading.pulse_valid, int(f)), (s, p)


def test_option_checks_and_offsets() -> None:
    with pytest.raises(InvalidInput, match="--channel applies to --format edf only"):
        parse_night(b"", "csv", channel="SpO2")
    with pytest.raises(InvalidInput, match="csv times are UTC"):
        parse_night(b"", "csv", tz="Europe/Berlin")
    with pytest.raises(InvalidInput, match="--start applies"):
        parse_night(b"", "edf", start=START)
    assert parse_utc_offset("+01:00") == dt.timedelta(hours=1)
    assert parse_utc_offset("-0530") == -dt.timedelta(hours=5, minutes=30)
    assert parse_utc_offset("UTC") == dt.timedelta(0)
    with pytest.raises(InvalidInput):
        parse_utc_offset("+25:00")
    with pytest.raises(InvalidInput):
        parse_utc_offset("one hour")
    local = np.array([naive_seconds(dt.datetime(2025, 3, 30, 2, 30))])  # skipped hour in Berlin
    with pytest.raises(InvalidInput, match="ambiguous or does not exist"):
        local_to_utc(local, "Europe/Berlin", None, "EDF")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(["csv", "o2ring-csv", "edf"]),
       body=st.one_of(st.binary(max_size=400),
                      st.text(alphabet="0123456789:,-. \nTimeOxygnLvlsp2MarZT", max_size=300).map(str.encode)))
def test_garbage_files_only_ever_raise_invalid_input(fmt: str, body: bytes) -> None:
    head = {"csv": b"time,spo2\n", "o2ring-csv": b"Time,Oxygen Level,Pulse Rate,Motion\n", "edf": b""}[fmt]
    for raw in (body, head + body):
        try:
            n = parse_night(raw, fmt, **({"start": START} if fmt == "csv" and raw[:1].isdigit() else {}),
                            **({"utc_offset": "+00:00"} if fmt != "csv" else {}))
        except InvalidInput:
            continue
        assert n.n >= 2 and np.all(np.diff(n.t_utc_s) > 0)


_token = st.one_of(st.sampled_from(["", "--", "0", "90", "89.9", "255", "abc", "1e400", "-3", " 95 "]),
                   st.integers(0, 300).map(str))


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(st.floats(-5, 1e6, allow_nan=False).map(lambda x: f"{x:.3f}"), _token, _token), max_size=30))
def test_near_valid_csv_parses_every_line_or_names_one(rows: list[tuple[str, str, str]]) -> None:
    text = "time,spo2,pulse\n" + "".join(f"{t},{s},{p}\n" for t, s, p in rows)
    try:
        n = parse_csv_night(text.encode(), start_utc=START)
    except InvalidInput as exc:
        assert exc.message.startswith(("line ", "the file has")), exc.message
        return
    assert n.n == len(rows)
    valid, _, flags = sample_flags(n.spo2, n.pulse)
    assert not (valid & ~((n.spo2 > 0) & (n.spo2 <= 100))).any(), "nothing outside 0 < spo2 <= 100 is ever valid"
    deep = valid & (n.spo2 < 50)
    assert ((flags[deep] & int(Flag.DEEP_DESATURATION)) != 0).all(), "a valid value below 50 is always flagged for review"


# -- limits: one night per file, plausible dates -------------------------------------------------------
def _csv_lines(path: Path, n: int, *, start_s: float = START_S, step_s: float = 1.0) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        fh.write("time,spo2,pulse\n")
        t = dt.datetime.fromtimestamp(start_s, tz=dt.timezone.utc)
        for i in range(n):
            fh.write(f"{(t + dt.timedelta(seconds=i * step_s)).strftime('%Y-%m-%dT%H:%M:%SZ')},95,60\n")
    return path


def _sessions(db: Path) -> int:
    return sqlite3.connect(db).execute("SELECT COUNT(*) FROM sessions").fetchone()[0]


def test_a_million_line_file_spanning_days_is_refused_before_it_is_read(db: Path, tmp_path: Path) -> None:
    big = _csv_lines(tmp_path / "days.csv", 1_000_000)  # 11.6 days at 1 Hz
    t0 = time.monotonic()
    r = cli(db, "import", str(big), "--subject", "SCR-0042", "--format", "csv")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "more than one night can be" in r.output and "import_max_night_h = 16 h" in r.output
    assert time.monotonic() - t0 < 5 and _sessions(db) == 0


def test_a_file_longer_than_one_night_is_refused_naming_the_limit(db: Path, tmp_path: Path) -> None:
    long = _csv_lines(tmp_path / "20h.csv", 20 * 3600, step_s=1.0)
    r = cli(db, "import", str(long), "--subject", "SCR-0042", "--format", "csv")
    assert r.exit_code == 2 and "spans 20.0 h, longer than one night" in r.output and "import_max_night_h = 16 h" in r.output
    assert _sessions(db) == 0
    ok = cli(db, "--config", str(_site(tmp_path, "[oximetry]\nimport_max_night_h = 24.0\n")),
             "import", str(long), "--subject", "SCR-0042", "--format", "csv")
    assert ok.exit_code == 0, ok.output


def test_too_many_samples_for_one_night_stop_the_reading(db: Path, tmp_path: Path) -> None:
    dense = _csv_lines(tmp_path / "dense.csv", 40_000, step_s=0.1)  # 10 Hz for 66 minutes
    cfg = _site(tmp_path, "[oximetry]\nimport_max_night_h = 1.0\n")  # 7 200 samples at 2 Hz
    r = cli(db, "--config", str(cfg), "import", str(dense), "--subject", "SCR-0042", "--format", "csv")
    assert r.exit_code == 2 and "line 7202: more than 7200 samples" in r.output, r.output


@pytest.mark.parametrize("start", [dt.datetime(1900, 1, 1, tzinfo=dt.timezone.utc).timestamp(), time.time() + 3 * 86400])
def test_implausible_dates_are_refused(db: Path, tmp_path: Path, start: float) -> None:
    f = _csv_lines(tmp_path / "odd.csv", 600, start_s=start)
    r = cli(db, "import", str(f), "--subject", "SCR-0042", "--format", "csv")
    assert r.exit_code == 2 and ("before 2000-01-01" in r.output or "in the future" in r.output), r.output


def _site(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.toml"
    p.write_text(text, encoding="utf-8")
    return p

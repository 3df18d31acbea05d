"""``collector report`` on nights recorded through the simulator and the real daemon, and on hand-made sessions."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.oximetry.text import pct_text
from collector.oximetry.store import latest_report
from collector.storage import repo
from collector.storage.db import open_db
from collector.storage.writer import INSERT_SAMPLE
from simulators.scenario import Interval
from conftest import T0, fast_config, run_night, scenario, invoke

STABLE_KEYS = {
    "recording_s", "analysed_s", "analysed_pct", "t90_s", "t90_pct", "t90_pct_of_recording", "t90_pct_inclusive",
    "borderline", "night_valid", "meets_t90_criterion", "odi3_per_h", "odi4_per_h", "nadir_spo2", "mean_spo2", "gaps",
}


def cli(db: Path, *args: str):
    return invoke(db, *args, operator="tech.b")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """One simulated 2 h night (dips, a disconnect, finger out) recorded by the daemon and stopped."""
    db = tmp_path_factory.mktemp("night") / "c.sqlite"
    sc = scenario(duration_s=7200.0, desaturations=[{"count": 12, "depth": 9, "duration_s": 80}],
                  disconnects=[Interval(3000, 100)], finger_out=[Interval(5000, 120)])
    run = asyncio.run(run_night(db, [sc], config=fast_config(min_analysed_h=1.0)))
    return db, run.session_ids[0]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_report_json_is_the_stored_report_of_a_simulated_night(simulated: tuple[Path, int]) -> None:
    db, sid = simulated
    r = cli(db, "report", str(sid), "--json")
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)
    assert STABLE_KEYS <= j.keys()
    stored = latest_report(sqlite3.connect(db), sid)
    for k in STABLE_KEYS:
        assert j[k] == stored[k], k
    assert j["stored"] is True and j["provisional"] is False and j["origin"] == "live" and j["subject_id"] == "SCR-0001"
    assert j["gaps"]["by_cause"]["device_disconnected"]["count"] == 1
    assert j["definitions"]["t90"] == "T90/strict-lt90/zero-order-hold/v1"


def test_report_text_names_definitions_and_decision(simulated: tuple[Path, int]) -> None:
    db, sid = simulated
    j = json.loads(cli(db, "report", str(sid), "--json").stdout)
    r = cli(db, "report", str(sid))
    assert r.exit_code == 0, r.output
    text = r.stdout
    verdict = {"pass": "DECISION: PASS", "fail": "DECISION: FAIL", "invalid": "DECISION: INVALID NIGHT"}[j["decision"]]
    assert verdict in text
    assert "T90/strict-lt90/zero-order-hold/v1" in text and "SpO2 < 90 strictly" in text
    assert pct_text(j["t90_pct"], 2.0) in text
    for label in ("recording", "analysed", "gaps", "inclusive (<= 90)", "of recording time", "ODI3", "ODI4",
                  "trailing-mean-frozen-baseline", "Night valid:", "Borderline:", "nadir", "device_disconnected"):
        assert label in text, label


def test_report_png_is_written_and_valid(simulated: tuple[Path, int], tmp_path: Path) -> None:
    db, sid = simulated
    out = tmp_path / "pics" / f"night-{sid}.png"
    r = cli(db, "report", str(sid), "--png", str(out), "--tz", "Europe/Berlin")
    assert r.exit_code == 0, r.output
    assert f"picture written to {out}" in r.stdout
    w, h = png_size(out)
    assert (w, h) == (1753, 1240), "A4 landscape at 150 dpi"
    assert out.stat().st_size > 50_000, "a whole night is drawn, not an empty frame"


def test_recompute_stores_a_new_row_with_an_audit_row(simulated: tuple[Path, int], tmp_path: Path) -> None:
    db, sid = simulated
    conn = sqlite3.connect(db)
    n_before = conn.execute("SELECT COUNT(*) FROM night_reports WHERE session_id = ?", (sid,)).fetchone()[0]
    old = json.loads(cli(db, "report", str(sid), "--json").stdout)
    # a site changes max_hold_s; the recomputation uses it, the old row stays
    cfg = tmp_path / "site.toml"
    cfg.write_text("[oximetry]\nmax_hold_s = 0.5\n")
    r = invoke(db, "report", str(sid), "--recompute", "--json", config=cfg, operator="tech.b")
    assert r.exit_code == 0, r.output
    new = json.loads(r.stdout)
    assert new["report_id"] > old["report_id"] and new["definitions"]["max_hold_s"] == 0.5
    assert new["analysed_s"] < old["analysed_s"]
    assert conn.execute("SELECT COUNT(*) FROM night_reports WHERE session_id = ?", (sid,)).fetchone()[0] == n_before + 1
    row = conn.execute("SELECT actor, action, old_value, new_value, reason FROM audit WHERE session_id = ? ORDER BY id DESC LIMIT 1", (sid,)).fetchone()
    assert row[0] == "tech.b" and row[1] == "night_report_recomputed"
    assert json.loads(row[2])["report_id"] == old["report_id"] and json.loads(row[3])["report_id"] == new["report_id"]
    assert json.loads(row[3])["max_hold_s"] == 0.5
    # the newest row is now what report shows
    assert json.loads(cli(db, "report", str(sid), "--json").stdout)["report_id"] == new["report_id"]
    assert cli(db, "verify-audit").exit_code == 0


def _manual_session(db: Path, state: str, kind: str = "night", n: int = 600) -> int:
    """A session written directly (as a crashed daemon or an old import would leave it)."""
    conn = open_db(db).conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not conn.execute("SELECT 1 FROM subjects WHERE id = 'SCR-0077'").fetchone():
            repo.add_subject(conn, "SCR-0077", by="t", at=T0)
        sid = repo.open_session(conn, subject_id="SCR-0077", kind=kind, device_id=None, by="t", at=T0)
        rows = [(sid, int((T0 + i) * 1000), None, 88.0 if i % 10 == 0 else 95.0, 60.0, None, 1, 1, 0, None, None) for i in range(n)]
        conn.executemany(INSERT_SAMPLE, rows)
        if state != "open":
            repo.close_session(conn, sid, state=state, by="t", at=T0 + n)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return sid


def test_open_or_interrupted_nights_are_provisional_and_not_stored(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    for state in ("open", "interrupted"):
        sid = _manual_session(db, state)
        r = cli(db, "report", str(sid), "--json")
        assert r.exit_code == 0, r.output
        j = json.loads(r.stdout)
        assert j["provisional"] is True and j["stored"] is False and j["report_id"] is None
        assert j["t90_s"] == 60.0 and j["analysed_s"] == 599.0  # every 10th second at 88, held 1 s
        text = cli(db, "report", str(sid), "--recompute").stdout
        assert "PROVISIONAL" in text
        png = tmp_path / f"p{sid}.png"
        assert cli(db, "report", str(sid), "--png", str(png)).exit_code == 0 and png_size(png)[0] > 0
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT COUNT(*) FROM night_reports WHERE session_id = ?", (sid,)).fetchone()[0] == 0
        if state == "open":  # free the subject for the next session
            conn.execute("UPDATE sessions SET state = 'stopped' WHERE id = ?", (sid,))
            conn.commit()


def test_a_stopped_night_without_report_gets_one_computed_and_audited(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    sid = _manual_session(db, "stopped")
    j = json.loads(cli(db, "report", str(sid), "--json").stdout)
    assert j["stored"] is True and j["report_id"] == 1
    conn = sqlite3.connect(db)
    actions = [a for (a,) in conn.execute("SELECT action FROM audit WHERE session_id = ? ORDER BY id", (sid,))]
    assert actions[-1] == "night_report_computed"
    # asking again shows the same row, computes nothing new
    assert json.loads(cli(db, "report", str(sid), "--json").stdout)["report_id"] == 1
    assert conn.execute("SELECT COUNT(*) FROM night_reports").fetchone()[0] == 1


def test_report_errors_are_one_line_with_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    r = cli(db, "report", "99")
    assert r.exit_code == 4 and r.stderr.strip() == "error: unknown session 99; list sessions with: collector session list"
    sid = _manual_session(db, "stopped", kind="spirometry", n=0)
    r = cli(db, "report", str(sid))
    assert r.exit_code == 2 and "not a night" in r.stderr
    night = _manual_session(db, "stopped")
    r = cli(db, "report", str(night), "--png", str(tmp_path / "x.png"), "--tz", "Mars/Olympus")
    assert r.exit_code == 2 and "IANA" in r.stderr


def test_pct_text_never_hides_the_side_of_the_threshold() -> None:
    assert pct_text(2.0, 2.0) == "2.00 %"
    assert pct_text(2.004, 2.0) == "2.004 %"
    assert pct_text(2.0000001, 2.0) == "2.0000001 %"
    assert pct_text(1.996, 2.0) == "2.00 %"  # rounds up to the threshold but 2.00 passes, same side
    assert pct_text(None) == "n/a"


def test_report_picture_is_in_the_readers_language(simulated: tuple[Path, int], tmp_path: Path) -> None:
    """The night picture's title and labels follow the operator's language (the site's, zh-CN, by default)."""
    import pypdf

    db, sid = simulated

    def text(name: str) -> str:
        out = tmp_path / name
        r = cli(db, "report", str(sid), "--png", str(out))
        assert r.exit_code == 0, r.output
        return "".join("".join(p.extract_text().split()) for p in pypdf.PdfReader(out).pages)

    assert f"夜间血氧监测：受试者SCR-0001，记录{sid}" in text("zh.pdf")
    assert cli(db, "user", "language", "en").exit_code == 0
    try:
        assert f"Overnightoximetry:subjectSCR-0001,session{sid}" in text("en.pdf")
    finally:
        assert cli(db, "user", "language", "site").exit_code == 0

"""Eligibility end to end: the real CLI on a SQLite file, the real daemon with simulated nights."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from collector.api import create_app
from collector.cli import main
from collector.clock import VirtualClock, utc_iso
from collector.config import defaults
from collector.features import build_daemon
from collector.eligibility.service import evaluate_subject
from collector.storage import repo
from collector.storage.db import open_db
from simulators.ble_backend import SimulatedAir
from simulators.oximeter import SimulatedOximeter
from simulators.scenario import parse_scenario
from conftest import invoke, operator_token

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z: the virtual night starts here

GOOD_FACTS = [
    ("consent_signed_on", "2025-06-01"),
    ("birth_date", "1980-05-05"),
    ("diagnosis_date", "2024-06-01"),
    ("wfn_category", "probable"),
    ("prior_treatment_failed", "yes"),
    ("prior_treatments", "riluzole since 2024-07"),
    ("height_cm", "175"),
    ("weight_kg", "70"),
    ("sex", "male"),
    ("nutrition_good", "yes"),
    ("contraception", "yes"),
    ("cooperation", "yes"),
]

# 4.5 h nights (valid: >= 4 h analysed); the failing one has long deep desaturations.
PASS_NIGHT = {"night": {"duration_s": 4.5 * 3600, "baseline_spo2": 96, "noise_spo2": 0.4, "seed": 5}}
FAIL_NIGHT = {"night": {"duration_s": 4.5 * 3600, "baseline_spo2": 95, "seed": 3},
              "desaturations": [{"count": 20, "depth": 12, "duration_s": 120}]}


def cli(db: Path, *args: str, by: str = "nurse.a"):
    return invoke(db, *args, operator=by, catch_exceptions=False)


def counts(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(db)
    try:
        return (conn.execute("SELECT COUNT(*) FROM criteria_facts").fetchone()[0],
                conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
    finally:
        conn.close()


def audit_rows(db: Path, action: str | None = None) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        sql = "SELECT * FROM audit" + (" WHERE action = ?" if action else "") + " ORDER BY id"
        return [dict(r) for r in conn.execute(sql, (action,) if action else ())]
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "c.sqlite"
    assert cli(path, "subject", "add", "SCR-0001").exit_code == 0
    return path


# --------------------------------------------------------------------------- CLI round trips
def test_set_show_correct_round_trip(db: Path) -> None:
    r = cli(db, "criteria", "set", "SCR-0001", "height_cm", "172.5")
    assert r.exit_code == 0, r.output
    assert "height_cm recorded for SCR-0001: 172.5" in r.output
    # The same value again is a no-op, not an error and not a new row.
    r = cli(db, "criteria", "set", "SCR-0001", "height_cm", "172.5")
    assert r.exit_code == 0 and "unchanged" in r.output
    r = cli(db, "criteria", "set", "SCR-0001", "height_cm", "174", "--reason", "remeasured without shoes", by="dr.b")
    assert r.exit_code == 0 and "corrected" in r.output

    show = json.loads(cli(db, "criteria", "show", "SCR-0001", "--json").output)
    assert [c["value"] for c in show["current"]] == [174.0]
    assert show["current"][0]["recorded_by"] == "dr.b"
    hist = show["history"]
    assert [(h["value"], h["reason"], h["supersedes"]) for h in hist] == [
        (172.5, None, None), (174.0, "remeasured without shoes", hist[0]["id"])]
    assert hist[0]["recorded_by"] == "nurse.a" and hist[0]["source"] == "staff"

    recorded, corrected = audit_rows(db, "criterion_recorded"), audit_rows(db, "criterion_corrected")
    assert len(recorded) == 1 and len(corrected) == 1
    assert json.loads(corrected[0]["old_value"])["value"] == 172.5
    assert json.loads(corrected[0]["new_value"])["value"] == 174.0
    assert corrected[0]["reason"] == "remeasured without shoes" and corrected[0]["actor"] == "dr.b"
    assert cli(db, "verify-audit").exit_code == 0

    text = cli(db, "criteria", "show", "SCR-0001").output
    assert "remeasured without shoes" in text and "174.0" in text


def test_birth_date_never_in_audit_or_output(db: Path) -> None:
    assert cli(db, "criteria", "set", "SCR-0001", "birth_date", "1971-03-09").exit_code == 0
    r = cli(db, "criteria", "set", "SCR-0001", "birth_date", "1971-03-19", "--reason", "typo: was 1971-03-09")
    assert r.exit_code == 0 and "1971" not in r.output
    rows = audit_rows(db)
    corrected = [a for a in rows if a["action"] == "criterion_corrected"]
    assert len(corrected) == 1 and corrected[0]["reason"].startswith("<withheld>")
    assert "1971" not in json.dumps(rows)
    for args in (["criteria", "show", "SCR-0001", "--json"], ["eligibility", "SCR-0001", "--json"]):
        assert "1971" not in cli(db, *args).output
    # ... but the local database keeps it, for the age criterion.
    out = json.loads(cli(db, "eligibility", "SCR-0001", "--json").output)
    assert next(c for c in out["criteria"] if c["id"] == "age")["reason"] == "screening_date not recorded"


def test_eligibility_json_shape_and_decision_change_audited(db: Path) -> None:
    out = json.loads(cli(db, "eligibility", "SCR-0001", "--json").output)
    assert {"decision", "criteria", "thresholds", "evaluated_at"} <= set(out)
    assert out["decision"] == "incomplete"
    assert [c["id"] for c in out["criteria"]] == ["consent", "age", "als_diagnosis", "prior_treatment", "fvc",
                                                   "nocturnal_spo2", "bmi", "contraception", "cooperation"]
    for c in out["criteria"]:
        assert {"id", "state", "reason", "value", "source", "recorded_by", "recorded_at"} <= set(c)
    assert out["thresholds"]["fvc_pct_min"] == 50.0 and out["thresholds"]["equation"] == "gli-global-2022"
    first = audit_rows(db, "eligibility_changed")
    assert len(first) == 1  # the first decision shown is recorded
    cli(db, "eligibility", "SCR-0001")
    assert len(audit_rows(db, "eligibility_changed")) == 1  # unchanged: nothing new
    assert cli(db, "criteria", "set", "SCR-0001", "cooperation", "no").exit_code == 0
    rows = audit_rows(db, "eligibility_changed")
    assert len(rows) == 2
    new = json.loads(rows[-1]["new_value"])
    assert new["decision"] == "ineligible" and new["changed"] == ["cooperation"]
    assert json.loads(rows[-1]["old_value"])["decision"] == "incomplete"
    text = cli(db, "eligibility", "SCR-0001").output
    assert "INELIGIBLE" in text and "cooperate" in text


def test_site_config_thresholds_are_used(db: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text("[eligibility]\nbmi_min = 23.0\n")
    for fact, value in (("height_cm", "175"), ("weight_kg", "70"), ("nutrition_good", "yes")):
        cli(db, "criteria", "set", "SCR-0001", fact, value)
    base = json.loads(cli(db, "eligibility", "SCR-0001", "--json").output)
    assert next(c for c in base["criteria"] if c["id"] == "bmi")["state"] == "met"  # 22.86 >= 18.5
    r = invoke(db, "--config", str(cfg), "eligibility", "SCR-0001", "--json")
    site = json.loads(r.output)
    assert site["thresholds"]["bmi_min"] == 23.0
    assert next(c for c in site["criteria"] if c["id"] == "bmi")["state"] == "not_met"


@pytest.mark.parametrize(
    "args, words, code",
    [
        (["criteria", "set", "SCR-9999", "height_cm", "170"], "unknown subject", 4),
        (["criteria", "set", "SCR-0001", "shoe_size", "44"], "unknown fact", 2),
        (["criteria", "set", "SCR-0001", "height_cm", "300"], "outside 100-250 cm", 2),
        (["criteria", "set", "SCR-0001", "height_cm", "1.75m"], "not a number", 2),
        (["criteria", "set", "SCR-0001", "weight_kg", "-3"], "outside 20-300 kg", 2),
        (["criteria", "set", "SCR-0001", "birth_date", "2999-01-01"], "in the future", 2),
        (["criteria", "set", "SCR-0001", "birth_date", "1980-02-30"], "not a calendar date", 2),
        (["criteria", "set", "SCR-0001", "diagnosis_date", "2025-03-01"], "after the screening date", 2),
        (["criteria", "set", "SCR-0001", "sex", "x"], "use one of male, female", 2),
        (["criteria", "set", "SCR-0001", "contraception", "not_applicable"], "needs a reason", 2),
        (["criteria", "set", "SCR-0001", "wfn_category", "definite"], "give a reason", 2),
        (["criteria", "show", "NOPE-1"], "unknown subject", 4),
        (["eligibility", "NOPE-1"], "unknown subject", 4),
    ],
)
def test_bad_input_one_line_error_nothing_recorded(db: Path, args: list[str], words: str, code: int) -> None:
    assert cli(db, "criteria", "set", "SCR-0001", "screening_date", "2025-01-15").exit_code == 0
    assert cli(db, "criteria", "set", "SCR-0001", "wfn_category", "probable").exit_code == 0
    before = counts(db)
    r = invoke(db, *args)
    assert r.exit_code == code, r.output
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], r.stderr
    assert "Traceback" not in r.output
    assert counts(db) == before


# --------------------------------------------------------------------------- daemon, nights, live flags
class Bench:
    """A daemon on a virtual clock with simulated oximeters, as the collector runs it."""

    def __init__(self, db: Path, config: dict | None = None) -> None:
        self.db = db
        self.clock = VirtualClock(start=T0)
        self.air = SimulatedAir(self.clock)
        self.pump = asyncio.create_task(self.clock.run())
        self.daemon = build_daemon(db, clock=self.clock, config=config, ble_backend=self.air.client_backend,
                             scanner_backend=self.air.scanner_backend)
        self.svc = self.daemon.services["eligibility"]
        self.n = 0

    async def start(self, subject: str, scenario: dict) -> tuple[int, SimulatedOximeter]:
        self.n += 1
        sc = parse_scenario({**scenario, "device": {"protocol": "plx", "address": f"SIM-PLX-{self.n:04d}"}})
        dev = self.air.add(SimulatedOximeter(sc, self.clock))
        asyncio.create_task(dev.run())
        info = await self.daemon.start_night(subject, sc.address)
        return info["id"], dev

    async def night(self, subject: str, scenario: dict) -> dict:
        sid, dev = await self.start(subject, scenario)
        await dev.finished.wait()
        info = await self.daemon.stop_session(sid)
        await self.svc.idle()
        return info

    async def spirometry(self, subject: str, pct: float, other: float, *, valid: bool = True) -> int:
        """A stored spirometry result as the spirometry feature stores it (table in spirometry/schema.py)."""
        now = self.clock.now()

        def write(c: sqlite3.Connection) -> int:
            sid = repo.open_session(c, subject_id=subject, kind="spirometry", device_id=None, by="nurse.a", at=now)
            repo.close_session(c, sid, state="stopped", by="nurse.a", at=now + 600)
            c.execute(
                "INSERT INTO spirometry_results (session_id, computed_utc, valid, equation, sex, height_cm, fvc_l,"
                " fvc_pct_predicted, other_equation, other_fvc_pct_predicted, grade_fvc, result_json)"
                " VALUES (?, ?, ?, 'gli-global-2022', 'male', 175, 3.9, ?, 'gli-2012', ?, 'A', '{}')",
                (sid, utc_iso(now + 600), int(valid), pct, other))
            return sid

        sid = await self.daemon.write(write)
        self.daemon.notify("spirometry_result", {"session_id": sid, "subject_id": subject})
        await self.svc.idle()
        return sid

    async def close(self) -> None:
        await self.daemon.shutdown()
        self.pump.cancel()

    def decision(self, subject: str) -> dict:
        conn = open_db(self.db).conn
        try:
            return evaluate_subject(conn, subject, now=self.clock.now(), thresholds=self.daemon.config)
        finally:
            conn.close()

    def events(self, kind: str) -> list[dict]:
        conn = open_db(self.db).conn
        try:
            rows = conn.execute("SELECT session_id, detail_json FROM events WHERE kind = ? ORDER BY id", (kind,)).fetchall()
        finally:
            conn.close()
        return [{"session_id": s, **json.loads(d)} for s, d in rows]


def state(result: dict, cid: str) -> str:
    return next(c for c in result["criteria"] if c["id"] == cid)["state"]


def record_good_facts(db: Path, subject: str, skip: tuple[str, ...] = ()) -> None:
    if subject != "SCR-0001":
        assert cli(db, "subject", "add", subject).exit_code == 0
    for fact, value in GOOD_FACTS:
        if fact not in skip:
            r = cli(db, "criteria", "set", subject, fact, value)
            assert r.exit_code == 0, r.output


def test_nights_and_spirometry_decide(db: Path) -> None:
    record_good_facts(db, "SCR-0001")
    record_good_facts(db, "SCR-0002")
    record_good_facts(db, "SCR-0003", skip=("cooperation",))

    async def scenario() -> None:
        b = Bench(db)
        try:
            # SCR-0001: a passing night and a good spirometry session -> eligible.
            rep = (await b.night("SCR-0001", PASS_NIGHT))["report"]
            assert rep["night_valid"] and rep["meets_t90_criterion"]
            await b.spirometry("SCR-0001", 74.2, 77.0)
            d1 = b.decision("SCR-0001")
            assert d1["decision"] == "eligible", d1["summary"]
            assert d1["screening_date"] == "2025-06-15"  # the first session's date
            noc = next(c for c in d1["criteria"] if c["id"] == "nocturnal_spo2")
            assert noc["source"].startswith("session:") and noc["recorded_by"] == "device"

            # SCR-0002: good spirometry, then one failing night among passing ones -> ineligible.
            await b.spirometry("SCR-0002", 66.0, 68.0)
            await b.night("SCR-0002", PASS_NIGHT)
            assert b.decision("SCR-0002")["decision"] == "eligible"
            fail = await b.night("SCR-0002", FAIL_NIGHT)
            assert fail["report"]["meets_t90_criterion"] is False
            d2 = b.decision("SCR-0002")
            assert d2["decision"] == "ineligible" and state(d2, "nocturnal_spo2") == "not_met"
            assert f"{fail['id']} T90" in d2["summary"][0]

            # SCR-0003: everything fine but cooperation missing and FVC below 50 with the other equation above.
            await b.night("SCR-0003", PASS_NIGHT)
            await b.spirometry("SCR-0003", 49.9, 50.4)
            d3 = b.decision("SCR-0003")
            assert d3["decision"] == "incomplete"
            assert state(d3, "fvc") == "needs_review" and state(d3, "cooperation") == "pending"

            # The listener recorded each change as an event of the triggering session and an audit row.
            changes = b.events("eligibility_changed")
            to_inel = [e for e in changes if e["subject_id"] == "SCR-0002" and e["new_decision"] == "ineligible"]
            assert len(to_inel) == 1 and to_inel[0]["session_id"] == fail["id"]
            assert to_inel[0]["old_decision"] == "incomplete"  # the live alert flagged it during the night
            assert to_inel[0]["changed_criteria"] == {"nocturnal_spo2": {"old": "needs_review", "new": "not_met"}}
            st = b.daemon.status()["eligibility"]
            assert st["recent_changes"][-1]["subject_id"] == "SCR-0003"
        finally:
            await b.close()

    asyncio.run(scenario())
    audits = [a for a in audit_rows(db, "eligibility_changed") if a["subject_id"] == "SCR-0002"]
    assert json.loads(audits[-1]["new_value"])["decision"] == "ineligible"
    assert audits[-1]["actor"] == "collector" and "report stored" in audits[-1]["reason"]
    assert cli(db, "verify-audit").exit_code == 0
    # The CLI reads the same stored results and agrees (nothing new to record).
    n = len(audit_rows(db, "eligibility_changed"))
    out = json.loads(cli(db, "eligibility", "SCR-0002", "--json").output)
    assert out["decision"] == "ineligible" and len(audit_rows(db, "eligibility_changed")) == n


def test_live_flag_then_failing_night(db: Path) -> None:
    """A live T90 alert on an open night flags the criterion at once; the final report decides."""
    record_good_facts(db, "SCR-0001")

    async def scenario() -> None:
        b = Bench(db)
        try:
            await b.spirometry("SCR-0001", 80.0, 82.0)
            await b.night("SCR-0001", PASS_NIGHT)
            assert b.decision("SCR-0001")["decision"] == "eligible"
            sid, dev = await b.start("SCR-0001", FAIL_NIGHT)
            during = b.decision("SCR-0001")
            assert during["decision"] == "eligible"  # an open night is listed, not counted
            assert [p["session_id"] for p in during["in_progress"]] == [sid]
            st = b.daemon.status()["eligibility"]["subjects"]["SCR-0001"]
            assert st["decision"] == "eligible"

            # The real pipeline raises the live alert during the night; the session stays open until stopped.
            await dev.finished.wait()
            await b.svc.idle()
            alerts = b.events("t90_threshold_exceeded")
            assert alerts and all(a["session_id"] == sid for a in alerts)
            flagged = b.decision("SCR-0001")
            assert flagged["decision"] == "incomplete" and state(flagged, "nocturnal_spo2") == "needs_review"
            assert "in progress" in next(c for c in flagged["criteria"] if c["id"] == "nocturnal_spo2")["reason"]
            assert flagged["in_progress"][0]["live_alert"]["t90_pct"] > 2.0
            ev = b.events("eligibility_changed")[-1]
            assert ev["session_id"] == sid and ev["old_decision"] == "eligible" and ev["new_decision"] == "incomplete"
            assert ev["changed_criteria"] == {"nocturnal_spo2": {"old": "met", "new": "needs_review"}}
            assert "live T90 alert" in ev["reason"]
            assert b.daemon.status()["eligibility"]["subjects"]["SCR-0001"]["decision"] == "incomplete"

            await b.daemon.stop_session(sid)
            await b.svc.idle()
            final = b.events("eligibility_changed")[-1]
            assert final["session_id"] == sid and final["new_decision"] == "ineligible"
            assert final["changed_criteria"] == {"nocturnal_spo2": {"old": "needs_review", "new": "not_met"}}
        finally:
            await b.close()

    asyncio.run(scenario())


def test_api_routes(db: Path) -> None:
    async def scenario() -> None:
        b = Bench(db)
        try:
            app = create_app(b.daemon, "tok")
            headers = {"Authorization": f"Bearer {operator_token(db, 'dr.c', 'investigator')}"}
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                r = await client.post("/api/v1/subjects/SCR-0001/facts", json={"fact": "sex", "value": "female", "by": "dr.c"},
                                      headers=headers)
                assert r.status_code == 201, r.text
                assert r.json()["fact"]["value"] == "female" and r.json()["decision"]["decision"] == "incomplete"
                r = await client.post("/api/v1/subjects/SCR-0001/facts", json={"fact": "sex", "value": "male"}, headers=headers)
                assert r.status_code == 422 and "reason" in r.json()["error"]
                r = await client.post("/api/v1/subjects/SCR-0001/facts", json={"fact": "height_cm", "value": "3"}, headers=headers)
                assert r.status_code == 422 and "outside" in r.json()["error"]
                r = await client.get("/api/v1/subjects/SCR-0001/criteria", headers=headers)
                assert [h["fact"] for h in r.json()["history"]] == ["sex"]
                assert r.json()["history"][0]["recorded_by"] == "dr.c"
                r = await client.get("/api/v1/subjects/SCR-0001/eligibility", headers=headers)
                assert r.json()["decision"] == "incomplete"
                assert (await client.get("/api/v1/subjects/NOPE-9/eligibility", headers=headers)).status_code == 404
                assert (await client.get("/api/v1/subjects/SCR-0001/eligibility")).status_code == 401
        finally:
            await b.close()

    asyncio.run(scenario())
    assert len(audit_rows(db, "criterion_recorded")) == 1


def test_configuration_change_is_audited(db: Path) -> None:
    async def start_stop(config: dict | None) -> None:
        b = Bench(db, config)
        await b.close()

    asyncio.run(start_stop(None))
    loaded = audit_rows(db, "config_loaded")
    assert len(loaded) == 1 and len(json.loads(loaded[0]["new_value"])["hash"]) == 64
    asyncio.run(start_stop(None))
    assert audit_rows(db, "configuration_changed") == []  # same config: nothing recorded

    cfg = defaults()
    cfg["oximetry"]["max_hold_s"] = 8.0
    cfg["spirometry"]["fvc_threshold_pct"] = 55.0
    asyncio.run(start_stop(cfg))
    changed = audit_rows(db, "configuration_changed")
    assert len(changed) == 1
    new, old = json.loads(changed[0]["new_value"]), json.loads(changed[0]["old_value"])
    assert new["changed_keys"] == ["eligibility.fvc_pct_min", "oximetry.max_hold_s", "spirometry.fvc_threshold_pct"]
    assert old["values"]["oximetry.max_hold_s"] == 10.0 and new["values"]["oximetry.max_hold_s"] == 8.0
    assert old["hash"] == json.loads(loaded[0]["new_value"])["hash"] != new["hash"]
    asyncio.run(start_stop(cfg))
    assert len(audit_rows(db, "configuration_changed")) == 1
    assert cli(db, "verify-audit").exit_code == 0


def test_a_live_t90_just_above_its_limit_never_prints_as_the_limit() -> None:
    """The live alert's T90 is shown with as many decimals as it takes to stay above the limit."""
    from collector.eligibility.engine import CriterionResult
    from collector.eligibility.service import _apply_live_alerts

    class Th:
        t90_pct_max = 2.0

    crit = CriterionResult("nocturnal_spo2", "incomplete", "no finished night yet")
    _apply_live_alerts([crit], [{"session_id": 7}], {7: {"t90_pct": 2.0004, "t_utc": "2026-12-01T19:00:00.000Z"}}, Th())  # type: ignore[arg-type]
    assert crit.state == "needs_review"
    assert "live T90 2.0004 % above 2 %" in crit.reason and "2.00 %" not in crit.reason

"""One owner per threshold: a site file that sets a limit changes every screen together.

Each of the four (T90 limit, FVC limit, reference equation, accepted WFN categories) is set in a site
config file and read through the real loader, then checked on every surface: the daemon (recording with
that config), its API routes, and the real CLI with ``--config FILE``; every stored result records the
value it used.  The packaged defaults give the other answer, so a surface that read another copy fails.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from collector.api import create_app
from collector.cli import main
from collector.config import load_config
from collector.daemon import Daemon
from collector.features import build_daemon
from collector.eligibility.store import record_fact
from collector.storage.db import open_db
from simulators.spirometer import SCENARIO_DIR, SpirometerSimulator, TcpEndpoint, load_scenario
from test_eligibility_service import GOOD_FACTS, PASS_NIGHT, Bench, record_good_facts, state
from conftest import invoke

pytestmark = pytest.mark.timeout(120)
TOKEN = {"Authorization": "Bearer tok"}
# About 3 % of analysed time below 90 % (seven 2-min dips): fails at 2 %, passes at 5 %, not borderline at either.
T90_3PCT_NIGHT = {**PASS_NIGHT, "desaturations": [{"count": 7, "depth": 10, "duration_s": 120}]}
FAST = "[storage]\nflush_interval_s = 0.05\nsynchronous = \"NORMAL\"\n"


def site(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(FAST + text, encoding="utf-8")
    return path


def run_cli(db: Path, config: Path | None, *args: str) -> Any:
    """The real CLI; ``--json`` output parsed."""
    r = invoke(db, *args, operator="nurse.a", config=config, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def criterion(decision: dict[str, Any], cid: str) -> dict[str, Any]:
    return next(c for c in decision["criteria"] if c["id"] == cid)


async def api_get(daemon: Daemon, path: str) -> Any:
    app = create_app(daemon, "tok")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.get(path, headers=TOKEN)
        assert r.status_code == 200, r.text
        return r.json()


# --------------------------------------------------------------------------- T90 limit
def test_t90_limit_from_the_site_file_governs_report_alerts_page_and_eligibility(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    assert invoke(db, "subject", "add", "SCR-0001").exit_code == 0
    record_good_facts(db, "SCR-0001")
    cfg_file = site(tmp_path, "[oximetry]\nt90_threshold_pct = 5.0\n")

    async def scenario() -> int:
        b = Bench(db, load_config(cfg_file))
        try:
            await b.spirometry("SCR-0001", 74.2, 77.0)
            sid, dev = await b.start("SCR-0001", T90_3PCT_NIGHT)
            await dev.finished.wait()
            # While the night is open: the live engine, the page's alerts and its bed figures use 5 %
            # (at the packaged 2 % this night raises the live T90 alert).
            assert b.events("t90_threshold_exceeded") == []
            assert not any(a["kind"] == "t90_above_threshold" for a in b.daemon.services["web"].alerts.evaluate())
            beds = (await api_get(b.daemon, "/api/v1/web/status"))["beds"]
            assert [(x["t90_threshold_pct"], x["above_threshold"]) for x in beds] == [(5.0, False)]
            assert 2.0 < beds[0]["t90_pct"] < 5.0
            info = await b.daemon.stop_session(sid)
            await b.svc.idle()
            rep = info["report"]
            assert 2.0 < rep["t90_pct"] < 5.0 and rep["night_valid"] and not rep["borderline"]
            assert rep["decision"] == "pass" and rep["definitions"]["threshold_pct"] == 5.0  # stored with the value used
            d = b.decision("SCR-0001")
            assert state(d, "nocturnal_spo2") == "met" and d["thresholds"]["t90_pct_max"] == 5.0
            assert d["decision"] == "eligible"
            # The API: the eligibility route, the stored session report and the page's settings.
            api = await api_get(b.daemon, "/api/v1/subjects/SCR-0001/eligibility")
            assert criterion(api, "nocturnal_spo2")["state"] == "met" and api["thresholds"]["t90_pct_max"] == 5.0
            assert "<= 5 %" in criterion(api, "nocturnal_spo2")["reason"]
            page = await api_get(b.daemon, "/api/v1/web/config")
            assert page["t90_threshold_pct"] == 5.0
            return info["id"]
        finally:
            await b.close()

    sid = asyncio.run(scenario())
    report = run_cli(db, cfg_file, "report", str(sid), "--json")
    assert report["decision"] == "pass" and report["definitions"]["threshold_pct"] == 5.0
    elig = run_cli(db, cfg_file, "eligibility", "SCR-0001", "--json")
    assert state(elig, "nocturnal_spo2") == "met" and elig["thresholds"]["t90_pct_max"] == 5.0
    assert elig["decision"] == "eligible"
    # Under the packaged 2 % the stored report (made with 5 %) cannot decide: its borderline flag belongs to
    # the old limit, so the criterion asks for a recompute; the recomputed report records 2 % and fails.
    stale = next(c for c in run_cli(db, None, "eligibility", "SCR-0001", "--json")["criteria"] if c["id"] == "nocturnal_spo2")
    assert stale["state"] == "needs_review" and f"collector report {sid} --recompute" in stale["reason"]
    again = run_cli(db, None, "report", str(sid), "--recompute", "--json")
    assert again["decision"] == "fail" and again["definitions"]["threshold_pct"] == 2.0
    assert state(run_cli(db, None, "eligibility", "SCR-0001", "--json"), "nocturnal_spo2") == "not_met"


# --------------------------------------------------------------------------- FVC limit and equation
SPIRO_FACTS = {"sex": "male", "height_cm": "178", "birth_date": "1964-05-02", "screening_date": "2025-03-10"}


async def spirometry_session(db: Path, cfg_file: Path) -> tuple[int, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The ALS scenario (FVC 2.20 L, about 50 % predicted) through the daemon given the site config:
    returns the session id, the stored result, the API's session detail and the API's eligibility decision."""
    config = load_config(cfg_file)
    config["spirometry"].update(backoff_initial_s=0.02, backoff_max_s=0.2, gdt_idle_s=0.5)
    daemon = build_daemon(db, config=config)
    results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    daemon.listeners.append(lambda kind, p: results.put_nowait(p) if kind == "spirometry_result" else None)
    try:
        await daemon.add_subject("SCR-0101")
        fdb = open_db(db)
        for name, value in SPIRO_FACTS.items():
            record_fact(fdb, "SCR-0101", name, value, by="nurse", now_utc=1_741_600_000.0)
        fdb.conn.close()
        sim = SpirometerSimulator(load_scenario(SCENARIO_DIR / "spirometry_als_session.toml"), "hl7")
        ep = TcpEndpoint(sim.on_bytes)
        info = await daemon.services["spirometry"].start("SCR-0101", await ep.open(), model="sim-hl7", by="nurse")
        await asyncio.wait_for(ep.client_connected.wait(), 10)
        await asyncio.wait_for(sim.run_session(ep.write), 10)
        result = (await asyncio.wait_for(results.get(), 10))["result"]
        await daemon.stop_session(info["id"], by="nurse")
        await ep.close()
        detail = await api_get(daemon, f"/api/v1/spirometry/sessions/{info['id']}")
        decision = await api_get(daemon, "/api/v1/subjects/SCR-0101/eligibility")
        return info["id"], result, detail, decision
    finally:
        await daemon.shutdown()


# The ALS scenario gives about 50.7 % (GLI Global 2022) and 51.7 % (GLI-2012, ethnicity 'other').
@pytest.mark.parametrize("text, limit, equation, flagged, expected", [
    ("", 50.0, "gli-global-2022", False, "met"),
    ("[spirometry]\nfvc_threshold_pct = 60.0\n", 60.0, "gli-global-2022", False, "not_met"),
    ("[spirometry]\nfvc_threshold_pct = 51.0\n", 51.0, "gli-global-2022", True, "needs_review"),
    ('[spirometry]\nequation = "gli-2012"\n', 50.0, "gli-2012", False, "met"),
], ids=["packaged", "fvc-limit-60", "fvc-limit-51", "equation-gli-2012"])
def test_fvc_limit_and_equation_from_the_site_file_govern_result_and_eligibility(
        tmp_path: Path, text: str, limit: float, equation: str, flagged: bool, expected: str) -> None:
    db = tmp_path / "c.sqlite"
    cfg_file = site(tmp_path, text)
    sid, result, detail, api = asyncio.run(spirometry_session(db, cfg_file))
    # The stored spirometry result records the limit and equation it used, and decides with them.
    assert result["valid"] and result["threshold_pct"] == limit and result["equation"] == equation
    p, o = result["prediction"], result["other_prediction"]
    assert p["equation"] == equation and o["equation"] != equation
    pct, other = p["percent_predicted_fvc"], o["percent_predicted_fvc"]
    by_eq = {p["equation"]: pct, o["equation"]: other}
    assert 50.0 < by_eq["gli-global-2022"] < 51.0 < by_eq["gli-2012"] < 60.0
    assert result["equation_decides"] is flagged  # the other equation falls on the other side of this limit
    assert detail["result"]["equation"] == equation
    assert detail["result"]["fvc_pct_predicted"] == pytest.approx(pct)
    # Eligibility (API and CLI with the same file) uses the same equation's % and the same limit.
    cli = run_cli(db, cfg_file, "eligibility", "SCR-0101", "--json")
    for d in (api, cli):
        fvc = criterion(d, "fvc")
        assert fvc["state"] == expected, fvc["reason"]
        assert fvc["value"]["equation"] == equation and fvc["value"]["fvc_pct_predicted"] == pytest.approx(pct)
        assert d["thresholds"]["fvc_pct_min"] == limit and d["thresholds"]["equation"] == equation
        assert f"{limit:g} %" in fvc["reason"]
    shown = run_cli(db, cfg_file, "spirometry", "show", str(sid), "--json")
    assert shown["result"]["result"]["threshold_pct"] == limit and shown["result"]["result"]["equation"] == equation


# --------------------------------------------------------------------------- WFN categories
def test_accepted_wfn_categories_from_the_site_file(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    assert invoke(db, "subject", "add", "SCR-0001").exit_code == 0
    for fact, value in [*GOOD_FACTS, ("screening_date", "2025-06-15")]:
        r = invoke(db, "criteria", "set", "SCR-0001", fact, "possible" if fact == "wfn_category" else value, operator="nurse.a")
        assert r.exit_code == 0, r.output
    cfg_file = site(tmp_path, '[eligibility]\naccepted_wfn_categories = ["definite", "probable", "probable_lab_supported"]\n')

    assert state(run_cli(db, None, "eligibility", "SCR-0001", "--json"), "als_diagnosis") == "met"
    cli = run_cli(db, cfg_file, "eligibility", "SCR-0001", "--json")

    async def via_daemon() -> dict[str, Any]:
        b = Bench(db, load_config(cfg_file))
        try:
            assert state(b.decision("SCR-0001"), "als_diagnosis") == "not_met"
            return await api_get(b.daemon, "/api/v1/subjects/SCR-0001/eligibility")
        finally:
            await b.close()

    api = asyncio.run(via_daemon())
    for d in (cli, api):
        diag = criterion(d, "als_diagnosis")
        assert diag["state"] == "not_met" and "possible" in diag["reason"], diag["reason"]
        assert d["thresholds"]["accepted_wfn_categories"] == ["definite", "probable", "probable_lab_supported"]
        assert diag["value"]["accepted_wfn_categories"] == ["definite", "probable", "probable_lab_supported"]

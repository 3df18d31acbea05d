"""The FVC criterion decides only on a repeatable session (ATS/ERS 2019 FVC grade A-C).

Whole sessions through the real daemon (simulator over a pty -> serial transport -> codec -> SQLite), then
the eligibility decision through the CLI, as an investigator would read it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from collector.cli import main as cli_main
from collector.spirometry.store import FVC_GRADES, evaluation_settings
from simulators.spirometer import PtyEndpoint, SpirometerSimulator, load_scenario
from tests.test_spirometry_session import POSIX, SUBJECT, WAIT, harness
from conftest import invoke

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(not POSIX, reason="pseudo-terminals are POSIX only")]

HEADER = """
[device]
protocol = "hl7"
model = "sim-hl7"
messages = "session"
ack_timeout_s = 5.0
[session]
start = "2025-03-10T09:30:00"
manoeuvre_type = "FVC"
posture = "sitting"
interval_s = 90
"""


def blows(*fvcs: float) -> str:
    return HEADER + "".join(
        f"\n[[manoeuvre]]\nfvc = {f}\nfev1 = {round(f * 0.82, 2)}\npef = 5.3\nbev = 0.06\nfet = 6.8\ncurve = true\n" for f in fvcs)


def run_session(tmp_path: Path, scenario: str, **spirometry_cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Record one spirometry session from ``scenario``; return (stored result, eligibility --json)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "scenario.toml"
    path.write_text(scenario, encoding="utf-8")

    async def main() -> tuple[Path, dict[str, Any]]:
        async with harness(tmp_path) as h:
            h.daemon.config["spirometry"].update(spirometry_cfg)
            sim = SpirometerSimulator(load_scenario(path), "hl7")
            ep = PtyEndpoint(sim.on_bytes)
            info = await h.svc.start(SUBJECT, ep.open(), model="sim-hl7", by="nurse")
            await asyncio.wait_for(sim.run_session(ep.write), WAIT)
            result = (await h.next_result())["result"]
            await h.daemon.stop_session(info["id"], by="nurse")
            ep.close()
            return h.db, result

    db, result = asyncio.run(main())
    r = invoke(db, "eligibility", SUBJECT, "--json")
    assert r.exit_code == 0, r.output
    return result, json.loads(r.output)


def fvc(decision: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in decision["criteria"] if c["id"] == "fvc")


def test_one_acceptable_blow_is_grade_e_and_never_meets_the_criterion(tmp_path: Path) -> None:
    result, decision = run_session(tmp_path, blows(2.6))
    assert result["fvc"]["grade"] == "E" and result["fvc"]["n_acceptable"] == 1
    assert result["valid"] is False and result["fvc_grades"] == list(FVC_GRADES)
    assert "1 acceptable blow, not repeatable" in result["note"]
    crit = fvc(decision)
    assert crit["state"] == "pending", crit
    assert "grade E" in crit["reason"] and "not repeatable" in crit["reason"]


def test_an_implausibly_large_single_blow_does_not_pass(tmp_path: Path) -> None:
    result, decision = run_session(tmp_path, blows(11.9))
    assert result["valid"] is False
    assert fvc(decision)["state"] != "met"


def test_two_acceptable_blows_too_far_apart_are_not_repeatable(tmp_path: Path) -> None:
    # 2.60 and 2.30 L: 300 mL apart, grade E (> 0.250 L).
    result, decision = run_session(tmp_path, blows(2.6, 2.3))
    assert result["fvc"]["grade"] == "E" and result["fvc"]["repeatability_diff_ml"] == 300
    assert result["valid"] is False
    assert "differ by 300 mL" in result["note"]
    assert fvc(decision)["state"] == "pending"


def test_a_repeatable_session_decides_with_its_grade_in_the_reason(tmp_path: Path) -> None:
    result, decision = run_session(tmp_path, blows(2.6, 2.5, 2.55))
    assert result["fvc"]["grade"] == "A" and result["valid"] is True and result["grade_review"] is None
    crit = fvc(decision)
    assert crit["state"] == "met" and "grade A" in crit["reason"]


def test_grade_c_decides_and_grade_d_does_not(tmp_path: Path) -> None:
    result_c, decision_c = run_session(tmp_path / "c", blows(2.6, 2.42))  # 180 mL: grade C
    assert result_c["fvc"]["grade"] == "C" and fvc(decision_c)["state"] == "met"
    result_d, decision_d = run_session(tmp_path / "d", blows(2.6, 2.37))  # 230 mL: grade D
    assert result_d["fvc"]["grade"] == "D" and result_d["valid"] is False
    assert fvc(decision_d)["state"] == "pending" and "grade D" in fvc(decision_d)["reason"]


def test_a_site_rule_accepting_grade_e_needs_review_with_the_rule_named(tmp_path: Path) -> None:
    result, decision = run_session(tmp_path, blows(2.6), fvc_grades_review=["D", "E"])
    assert result["valid"] is True and result["fvc_grades_review"] == ["D", "E"]
    assert "site rule" in result["grade_review"]
    crit = fvc(decision)
    assert crit["state"] == "needs_review", crit
    assert "grade E" in crit["reason"] and "site rule" in crit["reason"]
    assert decision["decision"] != "eligible"


def test_a_bad_grade_list_in_the_config_is_refused() -> None:
    with pytest.raises(ValueError, match="fvc_grades must be a list of ATS/ERS grades"):
        evaluation_settings({"fvc_grades": "ABC"})
    with pytest.raises(ValueError, match="fvc_grades_review"):
        evaluation_settings({"fvc_grades_review": ["Z"]})

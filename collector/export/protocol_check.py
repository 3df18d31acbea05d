"""What ``collector verify`` holds a bundle to: the protocol's definitions and limits, not the bundle's own.

Why: a bundle that says of itself "threshold 10 %" and "eligible", with its manifests
recomputed, verified as intact.  The protocol's values are the packaged defaults of this
software version (config/defaults.toml: the one owner of every threshold); a site file
that changed one is a protocol deviation, and verify names it.  The decision is worked
out again from the bundle's criteria and, for the nightly criterion, from the nights
recomputed with the protocol's definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from collector.config import defaults
from collector.eligibility.engine import CriterionResult, NightResult, evaluate, summarise, thresholds_from_config
from collector.oximetry.analysis.report import DEFINITION_NAME, AnalysisConfig
from collector.oximetry.live import analysis_config


@dataclass(frozen=True)
class Protocol:
    """The protocol's night definitions and eligibility thresholds (this software version's defaults)."""

    night: dict[str, Any]
    thresholds: dict[str, Any]
    analysis: AnalysisConfig


def protocol() -> Protocol:
    cfg = defaults()
    ox = cfg["oximetry"]
    night = {"t90": DEFINITION_NAME, "threshold_pct": float(ox["t90_threshold_pct"]), "max_hold_s": float(ox["max_hold_s"]),
             "min_analysed_h": float(ox["min_analysed_h"]), "min_analysed_pct": float(ox["min_analysed_pct"])}
    return Protocol(night, thresholds_from_config(cfg).as_dict(), analysis_config(cfg))


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) > 1e-9
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return sorted(map(str, a)) != sorted(map(str, b))
    return bool(a != b)


def night_definition_problems(report: Mapping[str, Any], p: Protocol) -> list[str]:
    """Each definition of a night report that is not the protocol's."""
    d = report.get("definitions") or {}
    return [f"uses {k} = {d.get(k)!r}, the protocol's is {v!r}" for k, v in p.night.items() if _differs(d.get(k), v)]


def threshold_problems(eligibility: Mapping[str, Any], p: Protocol) -> list[str]:
    th = eligibility.get("thresholds") or {}
    return [f"decided with {k} = {th.get(k)!r}, the protocol's is {v!r}" for k, v in p.thresholds.items() if _differs(th.get(k), v)]


def _criteria(eligibility: Mapping[str, Any]) -> list[CriterionResult]:
    out = []
    for c in eligibility.get("criteria") or []:
        if isinstance(c, dict) and isinstance(c.get("id"), str) and c.get("state") in ("met", "not_met", "pending", "needs_review"):
            out.append(CriterionResult(id=c["id"], state=c["state"], reason=str(c.get("reason", ""))))
    return out


def decision_problems(eligibility: Mapping[str, Any], recomputed_nights: Sequence[Mapping[str, Any]], p: Protocol) -> list[str]:
    """The bundle's decision against its own criteria, and its nightly criterion against the recomputed nights."""
    problems: list[str] = []
    criteria = _criteria(eligibility)
    nightly = next((c for c in criteria if c.id == "nocturnal_spo2"), None)
    if recomputed_nights:
        nights = [NightResult(session_id=str(n["session_id"]), t90_pct=n.get("t90_pct"), night_valid=bool(n.get("night_valid")),
                              borderline=bool(n.get("borderline"))) for n in recomputed_nights]
        expected = next(c for c in evaluate({}, nights=nights, thresholds=thresholds_from_config(defaults()),
                                             evaluated_at="verify").criteria if c.id == "nocturnal_spo2")
        # Reasons the figures cannot see (a clock step, a live alert) may hold a passing night for review;
        # nothing may turn a failing or open nightly criterion into a pass, or a failing one into an open one.
        held_for_review = nightly is not None and nightly.state == "needs_review" and expected.state == "met"
        # An investigator's signed resolution decides a criterion the figures leave for review.
        raw: dict[str, Any] = next((c for c in eligibility.get("criteria") or []
                                    if isinstance(c, dict) and c.get("id") == "nocturnal_spo2"), {})
        review: dict[str, Any] = raw["review"] if isinstance(raw.get("review"), dict) else {}
        held_for_review = held_for_review or (expected.state == "needs_review" and review.get("status") == "resolved"
                                              and nightly is not None and nightly.state == review.get("decision"))
        if nightly is None:
            problems.append("has no nocturnal_spo2 criterion although the bundle holds nights")
        elif nightly.state != expected.state and not held_for_review:
            problems.append(f"nocturnal_spo2 is {nightly.state} but the nights recomputed with the protocol's "
                            f"definitions give {expected.state} ({expected.reason})")
    if criteria:
        decision, _ = summarise(criteria)
        if eligibility.get("decision") != decision:
            problems.append(f"decision is {eligibility.get('decision')!r} but its criteria give {decision!r}")
    return problems

"""Eligibility as a feature: stored facts + stored device results -> a decision, live flags, audit.

Everything here reads what is stored (facts, night reports, spirometry results, live alerts
recorded as events) so the CLI, the API and the daemon's live listener give the same answer.
The last decision of a subject is itself kept in the audit trail (``eligibility_changed``
rows), so "did the decision change?" survives restarts and is the same for every process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
from datetime import date, datetime
from typing import Any, Mapping

from collector.storage.sqlite_lib import sqlite_utils
from pydantic import BaseModel, Field

from collector.clock import utc_iso
from collector.config import defaults
from collector.eligibility.engine import (
    EligibilityConfigError,
    NightResult,
    SpirometryResult,
    Thresholds,
    evaluate,
    summarise,
    summary_messages,
    thresholds_from_config,
)
from collector.eligibility.messages import Node, english, join, msg
from collector.i18n import N_
from collector.eligibility.facts import FACTS, IDENTIFYING_FACTS, FactError, display_value
from collector.eligibility.store import (
    CorrectionReasonRequiredError,
    FactStoreError,
    UnknownSubjectError,
    current_facts,
    fact_history,
    record_fact,
)
from collector.oximetry import store as night_store
from collector.errors import Conflict, InvalidInput, NotFound
from collector.limit_text import limit_text
from collector.spirometry import store as spirometry_store
from collector.storage import audit, repo

__all__ = [
    "EligibilityService",
    "attach",
    "check_config_change",
    "config_fingerprint",
    "criteria_report",
    "evaluate_subject",
    "make_router",
    "record_decision_change",
    "set_fact",
    "thresholds_for_config",
]

log = logging.getLogger(__name__)

LIVE_ALERT = "t90_threshold_exceeded"
TRIGGERS = (LIVE_ALERT, "night_report", "spirometry_result")
WITHHELD = "<withheld>"


# --------------------------------------------------------------------------- thresholds
def thresholds_for_config(config: Mapping[str, Any] | None) -> Thresholds:
    """Effective thresholds of a collector config (None: the packaged defaults).  Built from the same
    keys every other screen reads ([oximetry] t90_threshold_pct, [spirometry] fvc_threshold_pct and
    equation, [eligibility]), so one site file governs every decision."""
    try:
        return thresholds_from_config(config if config is not None else defaults())
    except EligibilityConfigError as exc:
        raise InvalidInput(f"{exc}; fix the config file") from None


def _thresholds(thresholds: Thresholds | Mapping[str, Any] | None) -> Thresholds:
    if isinstance(thresholds, Thresholds):
        return thresholds
    return thresholds_for_config(thresholds)  # None -> packaged defaults; a mapping is a collector config


# --------------------------------------------------------------------------- stored device results
def _night_note(report: dict[str, Any]) -> str:
    parts = list(report.get("night_invalid_reasons") or [])
    if report.get("borderline"):
        parts.append("borderline variants: " + ", ".join(report.get("borderline_variants") or []))
    return "; ".join(parts)


def _night_review(report: dict[str, Any]) -> Node | None:
    """What a person must confirm before a stored night decides (None when nothing), as a message tree."""
    steps = report.get("clock_steps") or []
    if not steps:
        return None
    sizes = join(", ", (msg(N_("{step} s at {time}"), step=f"{st['step_s']:+.0f}", time=str(st["t_utc"])) for st in steps))
    return msg(N_("the host clock stepped during the night ({steps}); confirm the recording before it decides"), steps=sizes)


def _night_stale(report: dict[str, Any], limit: float) -> Node | None:
    """A report made with another T90 limit: its borderline flag belongs to that limit, so it cannot decide now."""
    used = (report.get("definitions") or {}).get("threshold_pct")
    if used is None or float(used) == float(limit):
        return None
    return msg(N_("its stored report used a T90 limit of {used} %, the protocol's is now {limit} %; "
                  "recompute it: collector report {session} --recompute"),
               used=f"{float(used):g}", limit=f"{float(limit):g}", session=str(report.get("session_id")))


def _nights(conn: sqlite3.Connection, subject_id: str, limit: float) -> tuple[list[NightResult], list[dict[str, Any]]]:
    """Stopped nights with a report count (newest report row per session); the others are in progress."""
    sessions = repo.subject_sessions(conn, subject_id, "night")
    reports = night_store.subject_night_reports(conn, subject_id)  # the oximetry store owns the night tables
    results, pending = [], []
    for s in sessions:
        rep = reports.get(s["id"])
        if s["state"] != "stopped" or rep is None:
            pending.append({"session_id": s["id"], "kind": "night", "state": s["state"], "started_utc": s["started_utc"],
                            "status": "recording" if s["state"] != "stopped" else "stopped, report not computed yet"})
            continue
        report = rep["report"]
        review, stale = _night_review(report), _night_stale(report, limit)
        results.append(NightResult(
            session_id=str(s["id"]), t90_pct=rep["t90_pct"], night_valid=bool(rep["night_valid"]),
            borderline=bool(rep["borderline"]), analysed_at=rep["computed_utc"], note=_night_note(report),
            review=english(review) if review else "", stale=english(stale) if stale else "",
            review_message=review, stale_message=stale,
        ))
    return results, pending


def _spirometry(conn: sqlite3.Connection, subject_id: str) -> tuple[list[SpirometryResult], list[dict[str, Any]]]:
    """Newest result row of each spirometry session of the subject (the spirometry module decides validity)."""
    sessions = repo.subject_sessions(conn, subject_id, "spirometry")
    if not sessions:
        return [], []
    rows = spirometry_store.latest_results_of_subject(conn, subject_id)
    results, pending = [], []
    for s in sessions:
        r = rows.get(s["id"])
        if r is None:
            pending.append({"session_id": s["id"], "kind": "spirometry", "state": s["state"], "started_utc": s["started_utc"],
                            "status": "no result yet"})
            continue
        try:
            detail = json.loads(r["result_json"] or "{}")
        except ValueError:
            detail = {}
        note = detail.get("note") or "; ".join(str(x) for x in detail.get("reasons", []) or []) if isinstance(detail, dict) else ""
        results.append(SpirometryResult(
            session_id=str(s["id"]), valid=bool(r["valid"]), fvc_pct_predicted=r["fvc_pct_predicted"], equation=r["equation"],
            other_equation=r["other_equation"], other_fvc_pct_predicted=r["other_fvc_pct_predicted"], fvc_l=r["fvc_l"],
            grade=r["grade_fvc"], manoeuvre=(detail.get("manoeuvre_type") if isinstance(detail, dict) else None) or "FVC",
            sex=r["sex"], height_cm=r["height_cm"], analysed_at=r["computed_utc"], note=note or "",
            review=str(detail.get("grade_review") or "") if isinstance(detail, dict) else "",
            lower_row_fvc_pct_predicted=detail.get("lower_row_fvc_pct_predicted") if isinstance(detail, dict) else None,
        ))
    return results, pending


def _first_session_on(conn: sqlite3.Connection, subject_id: str) -> date | None:
    started = repo.first_session_started_utc(conn, subject_id)
    if started is None:
        return None
    # The screening date is a calendar date at the site: the host's local date of the first session.
    return datetime.fromisoformat(started.replace("Z", "+00:00")).astimezone().date()


def _live_alerts(conn: sqlite3.Connection, session_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Latest live T90 alert of each night still in progress (stored as an event by the pipeline)."""
    out: dict[int, dict[str, Any]] = {}
    for sid in session_ids:
        event = repo.latest_event(conn, sid, LIVE_ALERT)
        if event:
            detail = json.loads(event["detail_json"] or "{}")
            out[sid] = {"t_utc": utc_iso(event["t_utc_ms"] / 1000), "t90_pct": detail.get("t90_pct"), "analysed_s": detail.get("analysed_s")}
    return out


def _apply_live_alerts(criteria: list[Any], in_progress: list[dict[str, Any]], alerts: dict[int, dict[str, Any]], th: Thresholds) -> None:
    """A night in progress whose live T90 crossed the limit makes nocturnal_spo2 ``needs_review``.

    Why not ``not_met``: the live figure is provisional (T90 can fall back below the limit as the
    night goes on, and validity is only known at the end); the final report decides.  A criterion
    already ``not_met`` from a finished night stays so.
    """
    if not alerts:
        return
    for entry in in_progress:
        if entry["session_id"] in alerts:
            entry["live_alert"] = alerts[entry["session_id"]]
    crit = next(c for c in criteria if c.id == "nocturnal_spo2")
    if crit.state == "not_met":
        return
    limit = f"{th.t90_pct_max:g}"
    live: list[Node] = [
        msg(N_("night {session} in progress: live T90 {t90} % above {limit} % at {time} (provisional until the night is stopped)"),
            session=str(sid), t90=limit_text(a["t90_pct"], th.t90_pct_max, "le", decimals=2), limit=limit,
            time=str(a["t_utc"]))
        if isinstance(a.get("t90_pct"), (int, float)) else
        msg(N_("night {session} in progress: live T90 above {limit} % at {time} (provisional)"),
            session=str(sid), limit=limit, time=str(a["t_utc"]))
        for sid, a in sorted(alerts.items())]
    crit.state = "needs_review"
    before = crit.message if crit.message is not None else crit.reason
    crit.set_reason(join("; ", [*live, before] if crit.reason else live))
    crit.source, crit.recorded_by, crit.recorded_at = f"session:{min(alerts)}", "device", alerts[min(alerts)]["t_utc"]


# --------------------------------------------------------------------------- evaluation (contract)
def evaluate_subject(
    conn: sqlite3.Connection,
    subject_id: str,
    *,
    now: float,
    thresholds: Thresholds | Mapping[str, Any] | None = None,
    apply_reviews: bool = True,
    messages: bool = False,
) -> dict[str, Any]:
    """The subject's decision exactly as ``collector eligibility --json`` prints it.

    ``messages``: add ``messages`` (each criterion's reason and each summary line as a message tree,
    collector/eligibility/messages.py) for a page or PDF in another language; it is not part of the
    decision (not signed, not exported), so only a reader asks for it.

    ``apply_reviews``: resolved ``needs_review`` criteria take the investigator's decision (False: as the
    figures leave them, which is what a resolution is made on).

    ``thresholds``: a :class:`Thresholds`, a collector config dict (its effective thresholds are
    used) or None (the packaged defaults).  Read-only: never writes.  Raises NotFound for an
    unknown subject.  Identifying facts (birth date) appear only as ``<withheld>``.
    """
    repo.get_subject(conn, subject_id)
    th = _thresholds(thresholds)
    db = sqlite_utils.Database(conn, recursive_triggers=False)
    facts = current_facts(db, subject_id)
    nights, night_pending = _nights(conn, subject_id, th.t90_pct_max)
    spiro, spiro_pending = _spirometry(conn, subject_id)
    decision = evaluate(facts, spirometry=spiro, nights=nights, first_session_on=_first_session_on(conn, subject_id),
                        thresholds=th, evaluated_at=utc_iso(now))
    in_progress = night_pending + spiro_pending
    open_nights = [p["session_id"] for p in night_pending if p["state"] in ("open", "interrupted")]
    _apply_live_alerts(decision.criteria, in_progress, _live_alerts(conn, open_nights), th)
    if apply_reviews:
        from collector.eligibility import review

        review.apply(conn, subject_id, decision.criteria, th)
    decision.decision, decision.summary = summarise(decision.criteria)
    out = decision.as_dict()
    out["subject_id"] = subject_id
    out["in_progress"] = sorted(in_progress, key=lambda p: p["session_id"])
    if messages:
        out["messages"] = {"criteria": {c.id: c.message if c.message is not None else c.reason for c in decision.criteria},
                           "summary": summary_messages(decision.criteria),
                           "needs_review": {c.id: c.review_message for c in decision.criteria if c.review_message is not None}}
    return out


def _snapshot(result: Mapping[str, Any]) -> dict[str, Any]:
    return {"decision": result["decision"], "criteria": {c["id"]: c["state"] for c in result["criteria"]}}


def last_decision(conn: sqlite3.Connection, subject_id: str) -> dict[str, Any] | None:
    """The last decision recorded in the audit trail for this subject (None before the first)."""
    row = audit.last_entry(conn, ("eligibility_changed",), subject_id=subject_id)
    if not row or not row["new_value"]:
        return None
    value = json.loads(row["new_value"])
    return {"decision": value.get("decision"), "criteria": value.get("criteria", {})}


def record_decision_change(
    conn: sqlite3.Connection,
    subject_id: str,
    result: Mapping[str, Any],
    *,
    at: float,
    actor: str,
    reason: str,
    session_id: int | None = None,
    event: bool = False,
) -> dict[str, Any] | None:
    """Append an ``eligibility_changed`` audit row (and optionally an event) if the decision or any
    criterion state differs from the last recorded one.  Caller owns the write transaction."""
    old = last_decision(conn, subject_id)
    new = _snapshot(result)
    if old == new:
        return None
    old_states = (old or {}).get("criteria", {})
    changed = sorted(c for c in new["criteria"] if old_states.get(c) != new["criteria"][c])
    change = {
        "subject_id": subject_id,
        "old_decision": old["decision"] if old else None,
        "new_decision": new["decision"],
        "changed_criteria": {c: {"old": old_states.get(c), "new": new["criteria"][c]} for c in changed},
        "reason": reason,
        "evaluated_at": result["evaluated_at"],
    }
    # The thresholds travel with the row (not compared): a change caused by a new config is visible.
    audit.append(conn, at=at, actor=actor, action="eligibility_changed", subject_id=subject_id, session_id=session_id,
                 old=old, new={**new, "changed": changed, "thresholds": result.get("thresholds")}, reason=reason)
    if event:
        repo.add_event(conn, session_id, t_ms=int(round(at * 1000)), kind="eligibility_changed", detail=change)
    return change


# --------------------------------------------------------------------------- recording facts
def _fact_audit_value(fact: str, rec: Any) -> dict[str, Any]:
    # The birth date (and any identifying fact) stays in criteria_facts only: the audit trail is
    # exported with extracts and checked by people outside the site, so it carries "<withheld>".
    return {"fact": fact, "value": WITHHELD if fact in IDENTIFYING_FACTS else display_value(fact, rec.value),
            "row": rec.id, "source": rec.source}


def set_fact(
    conn: sqlite3.Connection,
    subject_id: str,
    fact: str,
    raw_value: str,
    *,
    by: str,
    at: float,
    reason: str | None = None,
    config: Mapping[str, Any] | None = None,
    source: str = "staff",
) -> dict[str, Any]:
    """Record one fact with its audit row and any decision change, inside the caller's transaction.

    Returns ``{"fact", "row", "changed", "decision"}``.  Bad input raises InvalidInput / NotFound
    (one line) before anything is written; the caller rolls back on any error.
    """
    repo.get_subject(conn, subject_id)
    db = sqlite_utils.Database(conn, recursive_triggers=False)
    before = current_facts(db, subject_id).get(fact)
    try:
        rec = record_fact(db, subject_id, fact, raw_value, by=by, reason=reason, now_utc=at, source=source)
    except UnknownSubjectError as exc:
        raise NotFound(str(exc)) from None
    except CorrectionReasonRequiredError as exc:
        raise InvalidInput(str(exc)) from None
    except (FactError, FactStoreError) as exc:
        raise InvalidInput(str(exc)) from None
    changed = before is None or rec.id != before.id
    if changed:
        corrected = rec.supersedes is not None
        audit.append(
            conn, at=at, actor=by, action="criterion_corrected" if corrected else "criterion_recorded", subject_id=subject_id,
            old=_fact_audit_value(fact, before) if corrected and before is not None else None,
            new=_fact_audit_value(fact, rec),
            # A typed reason may quote the old or new birth date: for identifying facts it stays in
            # criteria_facts (local) and the audit row points to it.
            reason=(f"{WITHHELD} (see criteria_facts row {rec.id})" if fact in IDENTIFYING_FACTS and rec.reason else rec.reason),
        )
    result = evaluate_subject(conn, subject_id, now=at, thresholds=thresholds_for_config(config))
    if changed:
        record_decision_change(conn, subject_id, result, at=at, actor=by, reason=f"{fact} {'corrected' if rec.supersedes else 'recorded'}")
    shown_reason = WITHHELD if fact in IDENTIFYING_FACTS and rec.reason else rec.reason
    return {"fact": {**_fact_audit_value(fact, rec), "recorded_by": rec.recorded_by, "recorded_at": rec.recorded_at,
                     "reason": shown_reason, "supersedes": rec.supersedes}, "changed": changed, "decision": result}


def retract(conn: sqlite3.Connection, subject_id: str, fact: str, *, by: str, at: float, reason: str,
            config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Mark FACT's current value as entered in error, inside the caller's transaction: a null row with the reason
    (the value is kept in the history), an audit row, and the criterion back to ``pending``."""
    from collector.eligibility.store import retract_fact

    repo.get_subject(conn, subject_id)
    if fact not in FACTS:
        raise InvalidInput(f"unknown fact {fact!r}; known facts: {', '.join(sorted(FACTS))}")
    db = sqlite_utils.Database(conn, recursive_triggers=False)
    before = current_facts(db, subject_id).get(fact)
    try:
        rec = retract_fact(db, subject_id, fact, by=by, reason=reason, now_utc=at)
    except (CorrectionReasonRequiredError, FactStoreError) as exc:
        raise InvalidInput(str(exc).replace("(--reason)", "(--reason TEXT)")) from None
    audit.append(conn, at=at, actor=by, action="criterion_retracted", subject_id=subject_id,
                 old=_fact_audit_value(fact, before) if before is not None else None, new={"fact": fact, "row": rec.id, "value": None},
                 reason=f"{WITHHELD} (see criteria_facts row {rec.id})" if fact in IDENTIFYING_FACTS else rec.reason)
    result = evaluate_subject(conn, subject_id, now=at, thresholds=thresholds_for_config(config))
    record_decision_change(conn, subject_id, result, at=at, actor=by, reason=f"{fact} retracted (entered in error)")
    return {"fact": {"fact": fact, "row": rec.id, "retracted_row": rec.supersedes, "recorded_by": rec.recorded_by,
                     "recorded_at": rec.recorded_at, "reason": WITHHELD if fact in IDENTIFYING_FACTS else rec.reason},
            "decision": result}


def criteria_report(conn: sqlite3.Connection, subject_id: str) -> dict[str, Any]:
    """Current value and full history of every fact (identifying values withheld)."""
    repo.get_subject(conn, subject_id)
    db = sqlite_utils.Database(conn, recursive_triggers=False)

    history = fact_history(db, subject_id)
    retracted = {r.supersedes for r in history if r.value is None and r.supersedes is not None}

    def row(r: Any) -> dict[str, Any]:
        return {"id": r.id, "fact": r.fact, "value": display_value(r.fact, r.value) if r.value is not None else None,
                "entered_in_error": r.id in retracted, "retraction": r.value is None,
                "recorded_by": r.recorded_by, "recorded_at": r.recorded_at, "source": r.source,
                "reason": WITHHELD if r.fact in IDENTIFYING_FACTS and r.reason else r.reason,
                "supersedes": r.supersedes}

    return {"subject_id": subject_id,
            "current": [row(r) for _, r in sorted(current_facts(db, subject_id).items())],
            "history": [row(r) for r in history]}


# --------------------------------------------------------------------------- reviews and signatures
def review_items(conn: sqlite3.Connection, subject_id: str | None, *, now: float,
                 thresholds: Thresholds | Mapping[str, Any] | None = None, messages: bool = False) -> list[dict[str, Any]]:
    """Every criterion that needs review, is resolved or was re-opened, with its evidence (one subject or all).
    ``messages``: each item's ``reason`` also as a message tree (``reason_message``), for the page's language."""
    th = _thresholds(thresholds)
    subjects = [subject_id] if subject_id is not None else [s["id"] for s in repo.list_subjects(conn)]
    out = []
    for sid in subjects:
        result = evaluate_subject(conn, sid, now=now, thresholds=th, messages=messages)
        trees = result.pop("messages", None) or {}
        for c in result["criteria"]:
            review = c.get("review") or {}
            status = review.get("status")
            if c["state"] != "needs_review" and status != "resolved":
                continue
            details = _night_variants(conn, sid) if c["id"] == "nocturnal_spo2" else None
            out.append({"subject_id": sid, "criterion": c["id"], "state": c["state"], "variants": details,
                        "status": status if status in ("resolved", "reopened") else "open",
                        "reason": review.get("needs_review_reason") or c["reason"],
                        "evidence": {"value": c["value"], "inputs": c["inputs"], "source": c["source"]},
                        "evidence_sha256": review.get("current_evidence_sha256") or review.get("evidence_sha256")
                        or _evidence_hash(c, th), "review": review or None})
            if messages:
                out[-1]["reason_message"] = ((trees.get("needs_review") or {}).get(c["id"]) if review.get("needs_review_reason")
                                             else (trees.get("criteria") or {}).get(c["id"]))
    return out


def _night_variants(conn: sqlite3.Connection, subject_id: str) -> list[dict[str, Any]]:
    """Each stored night's T90 by the primary definition and by the reported variants (what a borderline night is about)."""
    keys = ("t90_pct", "t90_pct_inclusive", "t90_pct_of_recording", "night_valid", "borderline", "borderline_variants",
            "analysed_s", "recording_s")
    reports = night_store.subject_night_reports(conn, subject_id)
    return [{"session_id": sid, **{k: rep["report"].get(k) for k in keys}} for sid, rep in sorted(reports.items())]


def _evidence_hash(c: Mapping[str, Any], th: Thresholds) -> str:
    from collector.eligibility.review import evidence_sha256

    return evidence_sha256(c, th)


def resolve_review(conn: sqlite3.Connection, subject_id: str, criterion: str, *, decision: str, reason: str,
                   user: Mapping[str, Any], at: float, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Record an investigator's resolution of a needs_review criterion, signed "reviewed", inside the caller's transaction.

    The resolution is bound to the SHA-256 of the criterion's evidence as evaluated now; the criterion then
    shows the resolved state with who, when and why, until its evidence changes.
    """
    from collector.eligibility.engine import CRITERIA
    from collector.eligibility.review import DECISIONS, evidence
    from collector.eligibility.store import add_resolution
    from collector.signatures import service as signatures
    from collector.signatures.content import canonical, content_hash

    if criterion not in CRITERIA:
        raise InvalidInput(f"unknown criterion {criterion!r}; use one of: {', '.join(CRITERIA)}")
    if decision not in DECISIONS:
        raise InvalidInput(f"--decision must be met or not_met, not {decision!r}")
    reason = " ".join((reason or "").split())
    if not reason:
        raise InvalidInput("a resolution needs its reason: --reason TEXT (what you looked at and why the decision stands)")
    from collector.export.privacy import Scrubber, forbidden_tokens

    if Scrubber(forbidden_tokens(conn, subject_id)).hits(reason):
        # The signed reason travels in bundles; it cannot be withheld afterwards without breaking its signature.
        raise InvalidInput("the reason quotes the subject's birth date or a device address; write it without them")
    th = thresholds_for_config(config)
    raw = evaluate_subject(conn, subject_id, now=at, thresholds=th, apply_reviews=False)
    crit = next(c for c in raw["criteria"] if c["id"] == criterion)
    if crit["state"] != "needs_review":
        raise Conflict(f"{criterion} of {subject_id} is {crit['state']}, not needs_review: there is nothing to resolve")
    ev = evidence(crit, th)
    row = add_resolution(conn, subject_id=subject_id, criterion=criterion, decision=decision, reason=reason, by=str(user["name"]),
                         at=utc_iso(at), evidence_sha256=content_hash(ev), evidence_json=canonical(ev).decode("utf-8"))
    audit.append(conn, at=at, actor=str(user["name"]), action="review_resolved", subject_id=subject_id,
                 old={"criterion": criterion, "state": "needs_review"},
                 new={"criterion": criterion, "state": decision, "resolution_id": row["id"], "evidence_sha256": row["evidence_sha256"]},
                 reason=reason)
    sig = signatures.prepare(dict(user), meaning="reviewed", record_type="review_resolution", record_ref=str(row["id"]),
                             subject_id=subject_id, content=signatures.resolution_content(row), at=at, tz=_site_tz(config))
    signatures.record(conn, sig, at=at)
    result = evaluate_subject(conn, subject_id, now=at, thresholds=th)
    record_decision_change(conn, subject_id, result, at=at, actor=str(user["name"]), reason=f"{criterion} review resolved {decision}")
    after = next(c for c in result["criteria"] if c["id"] == criterion)
    return {"resolution": {k: v for k, v in row.items() if k != "evidence"}, "criterion": after,
            "signature": signatures.public(sig, True, ""), "decision": result}


def sign_decision(conn: sqlite3.Connection, subject_id: str, *, meaning: str, user: Mapping[str, Any], at: float,
                  config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Sign the subject's decision as evaluated now (everything but its evaluation time), inside the caller's transaction."""
    from collector.signatures import service as signatures
    from collector.signatures.content import decision_content

    result = evaluate_subject(conn, subject_id, now=at, thresholds=thresholds_for_config(config))
    if result["decision"] == "incomplete":
        raise Conflict(f"the decision of {subject_id} is incomplete ({'; '.join(result['summary'])[:300]}); record what is "
                       f"pending and resolve reviews first (collector review list {subject_id}), then sign")
    record_decision_change(conn, subject_id, result, at=at, actor=str(user["name"]), reason=f"decision signed ({meaning})")
    sig = signatures.prepare(dict(user), meaning=meaning, record_type="eligibility_decision", record_ref=subject_id,
                             subject_id=subject_id, content=decision_content(signed_form(conn, subject_id, result, config)),
                             at=at, tz=_site_tz(config))
    signatures.record(conn, sig, at=at)
    return {"signature": signatures.public(sig, True, ""), "decision": result}


def subject_signatures(conn: sqlite3.Connection, subject_id: str, *, now: float,
                       config: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The subject's signatures, each valid or not against the records as they are now."""
    from collector.signatures import service as signatures

    repo.get_subject(conn, subject_id)
    decision = evaluate_subject(conn, subject_id, now=now, thresholds=thresholds_for_config(config))
    return signatures.subject_signatures(conn, subject_id, signed_form(conn, subject_id, decision, config))


def signed_form(conn: sqlite3.Connection, subject_id: str, decision: dict[str, Any], config: Mapping[str, Any] | None) -> Any:
    """The decision as it is signed and exported (personal data withheld, figures at the form's precision)."""
    from collector.export.privacy import export_form

    return export_form(conn, subject_id, decision, config=dict(config if config is not None else defaults()))


def _site_tz(config: Mapping[str, Any] | None) -> str:
    return str(((config or defaults()).get("site") or {}).get("timezone") or "Asia/Shanghai")


# --------------------------------------------------------------------------- configuration changes
def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def config_fingerprint(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """SHA-256 of the effective configuration (collector config + effective eligibility thresholds)."""
    flat = _flatten(config)
    flat.update(_flatten(thresholds_for_config(config).as_dict(), "eligibility."))
    flat = json.loads(json.dumps(flat, sort_keys=True, default=str))
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return digest, flat


def check_config_change(conn: sqlite3.Connection, config: Mapping[str, Any], *, at: float, actor: str = "collector") -> dict[str, Any] | None:
    """Append ``config_loaded`` (first start) or ``configuration_changed`` (hash differs from the last
    recorded one); nothing when unchanged.  Caller owns the write transaction."""
    digest, flat = config_fingerprint(config)
    row = audit.last_entry(conn, ("config_loaded", "configuration_changed"))
    prev: dict[str, Any] = {}
    if row and row["new_value"]:
        try:
            prev = json.loads(row["new_value"])
        except ValueError:
            prev = {}
    if not row:
        audit.append(conn, at=at, actor=actor, action="config_loaded", new={"hash": digest, "config": flat},
                     reason="first start with this database")
        return {"action": "config_loaded", "hash": digest}
    if prev.get("hash") == digest:
        return None
    old_flat: dict[str, Any] | None = prev.get("config") if isinstance(prev.get("config"), dict) else None
    keys = sorted(k for k in set(flat) | set(old_flat or {}) if (old_flat or {}).get(k) != flat.get(k)) if old_flat is not None else None
    audit.append(
        conn, at=at, actor=actor, action="configuration_changed",
        old={"hash": prev.get("hash"), "values": {k: old_flat.get(k) for k in keys} if keys is not None and old_flat is not None else None},
        new={"hash": digest, "changed_keys": keys, "values": {k: flat.get(k) for k in keys} if keys is not None else None, "config": flat},
        reason="effective configuration differs from the one last recorded",
    )
    return {"action": "configuration_changed", "hash": digest, "changed_keys": keys}


# --------------------------------------------------------------------------- the daemon side
class EligibilityService:
    """Re-evaluates a subject when a device result arrives; keeps the latest decisions for status."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.latest: dict[str, dict[str, Any]] = {}  # subject -> summary of the latest evaluation
        self.changes: list[dict[str, Any]] = []  # recent eligibility_changed details (newest last)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock: asyncio.Lock | None = None

    @property
    def thresholds(self) -> Thresholds:
        return thresholds_for_config(self.daemon.config)

    # -- listener ---------------------------------------------------------------------------
    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind not in TRIGGERS:
            return
        session_id = payload.get("session_id")
        if session_id is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # notified from a thread without a loop: nothing to schedule on
            log.error("eligibility: %s for session %s arrived outside the event loop; not re-evaluated", kind, session_id)
            return
        task = loop.create_task(self.reevaluate(int(session_id), kind, payload.get("subject_id")))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("eligibility re-evaluation failed: %s", task.exception())

    async def idle(self) -> None:
        """Wait until every scheduled re-evaluation has finished (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _read_eval(self, session_id: int, subject_id: str | None) -> tuple[str, dict[str, Any]]:
        conn = self.daemon.open_reader()
        try:
            if subject_id is None:
                subject_id = repo.get_session(conn, session_id)["subject_id"]
            return subject_id, evaluate_subject(conn, subject_id, now=self.daemon.clock.now(), thresholds=self.thresholds)
        finally:
            conn.close()

    async def reevaluate(self, session_id: int, kind: str, subject_id: str | None = None) -> dict[str, Any] | None:
        """Evaluate in a worker thread, then record a change (event + audit row) through the writer."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # keep evaluations and their recording in order
            await self.daemon.flush()  # the triggering data is committed
            subject, result = await asyncio.to_thread(self._read_eval, session_id, subject_id)
            at = self.daemon.clock.now()
            reason = {LIVE_ALERT: f"live T90 alert on night {session_id}", "night_report": f"night {session_id} report stored",
                      "spirometry_result": f"spirometry session {session_id} result stored"}[kind]
            change = await self.daemon.write(lambda c: record_decision_change(
                c, subject, result, at=at, actor="collector", reason=reason, session_id=session_id, event=True))
            self._remember(subject, result, change)
            if change is not None:
                self.changes = (self.changes + [change])[-50:]
                # A first decision is routine; a decision that changes is worth a warning in the log.
                log.log(logging.INFO if change["old_decision"] is None else logging.WARNING,
                        "eligibility of %s: %s -> %s (%s)", subject, change["old_decision"], change["new_decision"],
                        ", ".join(change["changed_criteria"]) or "no criterion")
            return change

    def _remember(self, subject_id: str, result: dict[str, Any], change: dict[str, Any] | None) -> None:
        prev = self.latest.get(subject_id, {})
        self.latest[subject_id] = {
            "decision": result["decision"],
            "criteria": {c["id"]: c["state"] for c in result["criteria"]},
            "summary": result["summary"],
            "evaluated_at": result["evaluated_at"],
            "last_change": change or prev.get("last_change"),
        }

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Latest decisions of subjects with open sessions (evaluated on first request if unknown)."""
        conn = self.daemon.open_reader()
        try:
            subjects = repo.subjects_with_open_sessions(conn)
            for s in subjects:
                if s not in self.latest:
                    self._remember(s, evaluate_subject(conn, s, now=self.daemon.clock.now(), thresholds=self.thresholds), None)
        finally:
            conn.close()
        return {"subjects": {s: self.latest[s] for s in subjects}, "recent_changes": self.changes[-10:]}

    async def stop(self) -> None:
        await self.idle()


def attach(daemon: Any) -> None:
    """Register the service, its listener and status; record the effective configuration."""
    service = EligibilityService(daemon)
    daemon.services["eligibility"] = service
    daemon.listeners.append(service.on_event)
    daemon.status_providers["eligibility"] = service.status
    daemon.shutdown_hooks.append(service.stop)
    now = daemon.clock.now()
    daemon.writer.submit(lambda c: check_config_change(c, daemon.config, at=now)).result(timeout=30)


class FactIn(BaseModel):
    """POST /subjects/{id}/facts: the value as typed (parsed like the CLI argument)."""

    fact: str = Field(min_length=1, max_length=64)
    value: str = Field(min_length=1, max_length=2000)
    reason: str | None = Field(default=None, max_length=500)
    by: str | None = Field(default=None, max_length=100)


class ReviewIn(BaseModel):
    """POST /subjects/{id}/reviews: resolve a needs_review criterion; the password is asked again (a signed act)."""

    criterion: str = Field(min_length=1, max_length=64)
    decision: str = Field(pattern="^(met|not_met)$")
    reason: str = Field(min_length=1, max_length=2000)
    password: str = Field(min_length=1, max_length=200)
    by: str | None = Field(default=None, max_length=100)


class SignIn(BaseModel):
    """POST /subjects/{id}/signatures: sign the eligibility decision as it is now."""

    meaning: str = Field(pattern="^(approved|reviewed)$")
    password: str = Field(min_length=1, max_length=200)
    by: str | None = Field(default=None, max_length=100)


def _page_signer(daemon: Any, name: str, password: str, what: str) -> dict[str, Any]:
    from collector.errors import NotAuthorised
    from collector.signatures import service as signatures

    conn = daemon.open_reader()
    try:
        return signatures.signer(conn, name, password, at=daemon.clock.now(), what=what)
    except NotAuthorised:
        now = daemon.clock.now()
        daemon.writer.submit(lambda w: signatures.refusal(w, name, at=now, what=what)).result(timeout=30)
        raise
    finally:
        conn.close()


def make_router(daemon: Any, auth: Any) -> Any:
    from fastapi import APIRouter, Depends

    router = APIRouter(dependencies=[Depends(auth)])

    def read(fn: Any) -> Any:
        conn = daemon.open_reader()
        try:
            return fn(conn)
        finally:
            conn.close()

    @router.get("/subjects/{subject_id}/eligibility")
    async def eligibility(subject_id: str) -> dict[str, Any]:
        """The decision with its reasons' message trees (``messages``): the page shows them in the reader's language."""
        th = thresholds_for_config(daemon.config)
        return await asyncio.to_thread(read, lambda c: evaluate_subject(c, subject_id, now=daemon.clock.now(), thresholds=th,
                                                                         messages=True))

    @router.get("/subjects/{subject_id}/criteria")
    async def criteria(subject_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(read, lambda c: criteria_report(c, subject_id))

    from collector.eligibility.roles import check_fact_role
    from collector.users.roles import INVESTIGATOR, TECHNICIAN, Principal

    @router.post("/subjects/{subject_id}/facts", status_code=201)
    async def add_fact(subject_id: str, body: FactIn,
                       principal: Principal = Depends(auth.roles(INVESTIGATOR, TECHNICIAN))) -> dict[str, Any]:
        check_fact_role(body.fact, principal.role)
        now = daemon.clock.now()
        by = principal.name
        out = await daemon.write(lambda c: set_fact(c, subject_id, body.fact, body.value, by=by, at=now, reason=body.reason,
                                                     config=daemon.config))
        svc = daemon.services.get("eligibility")
        if svc is not None:
            svc._remember(subject_id, out["decision"], None)
        return out

    @router.get("/reviews")
    async def reviews(subject: str | None = None) -> list[dict[str, Any]]:
        th = thresholds_for_config(daemon.config)
        return await asyncio.to_thread(read, lambda c: review_items(c, subject, now=daemon.clock.now(), thresholds=th,
                                                                     messages=True))

    @router.get("/subjects/{subject_id}/signatures")
    async def signatures_of(subject_id: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(read, lambda c: subject_signatures(c, subject_id, now=daemon.clock.now(), config=daemon.config))

    @router.post("/subjects/{subject_id}/reviews", status_code=201)
    async def resolve(subject_id: str, body: ReviewIn, principal: Principal = Depends(auth.roles(INVESTIGATOR))) -> dict[str, Any]:
        user = await asyncio.to_thread(_page_signer, daemon, principal.name, body.password,
                                       f"review of {body.criterion} of {subject_id}")
        now = daemon.clock.now()
        out = await daemon.write(lambda c: resolve_review(c, subject_id, body.criterion, decision=body.decision, reason=body.reason,
                                                          user=user, at=now, config=daemon.config))
        svc = daemon.services.get("eligibility")
        if svc is not None:
            svc._remember(subject_id, out["decision"], None)
        return out

    @router.post("/subjects/{subject_id}/signatures", status_code=201)
    async def sign(subject_id: str, body: SignIn, principal: Principal = Depends(auth.roles(INVESTIGATOR))) -> dict[str, Any]:
        user = await asyncio.to_thread(_page_signer, daemon, principal.name, body.password,
                                       f"{body.meaning}: eligibility decision of {subject_id}")
        now = daemon.clock.now()
        return dict(await daemon.write(lambda c: sign_decision(c, subject_id, meaning=body.meaning, user=user, at=now,
                                                               config=daemon.config)))

    return router


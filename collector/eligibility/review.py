"""Review resolution: an investigator decides a ``needs_review`` criterion, bound to the evidence seen.

The evidence is the criterion as the engine produced it (its reason, which names the variant, the
other equation, the rounding or the flipped boundary; its value; its inputs with who recorded them
and when) and the thresholds in force.  Its SHA-256 (RFC 8785 canonical JSON) is stored with the
resolution; the resolution applies only while the criterion's evidence still hashes the same, so
a changed fact, a new night or a new limit re-opens the criterion by itself.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Mapping, Sequence

from collector.eligibility.engine import CriterionResult, Thresholds
from collector.eligibility.messages import Node, msg
from collector.i18n import N_
from collector.eligibility.store import latest_resolutions
from collector.signatures.content import content_hash

DECISIONS = ("met", "not_met")
#: A resolved criterion's reason, by the investigator's decision (the investigator's own words stay as written).
RESOLVED = {"met": N_("resolved met by {name} at {time}: {reason} (needs review was: {was})"),
            "not_met": N_("resolved not_met by {name} at {time}: {reason} (needs review was: {was})")}


def _before(c: CriterionResult) -> Node:
    """The criterion's reason so far, as a tree when it has one."""
    return c.message if c.message is not None else c.reason


def evidence(c: CriterionResult | Mapping[str, Any], th: Thresholds) -> dict[str, Any]:
    """What the investigator looks at and the resolution is bound to (a criterion before any resolution)."""
    d = c.as_dict() if isinstance(c, CriterionResult) else c
    return {"criterion": d["id"], "state": d["state"], "reason": d["reason"], "value": d["value"], "inputs": d["inputs"],
            "thresholds": th.as_dict()}


def evidence_sha256(c: CriterionResult | Mapping[str, Any], th: Thresholds) -> str:
    return content_hash(evidence(c, th))


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    return {"resolution_id": r["id"], "decision": r["decision"], "resolved_by": r["resolved_by"], "resolved_at": r["resolved_at"],
            "reason": r["reason"], "evidence_sha256": r["evidence_sha256"]}


def apply(conn: sqlite3.Connection, subject_id: str, criteria: Sequence[CriterionResult], th: Thresholds) -> None:
    """Give each resolved ``needs_review`` criterion its resolved state (in place); mark re-opened ones."""
    resolutions = latest_resolutions(conn, subject_id)
    for c in criteria:
        r = resolutions.get(c.id)
        if r is None:
            continue
        if c.state != "needs_review":
            c.review = {"status": "no_longer_needed", **_summary(r),
                        "note": f"the criterion is {c.state} now; the resolution of {r['resolved_at']} no longer applies"}
            continue
        now_hash = evidence_sha256(c, th)
        if now_hash == r["evidence_sha256"]:
            c.review = {"status": "resolved", **_summary(r), "needs_review_reason": c.reason}
            c.state = r["decision"]
            c.review_message = _before(c)
            c.set_reason(msg(RESOLVED[r["decision"]], name=str(r["resolved_by"]), time=str(r["resolved_at"]),
                             reason=str(r["reason"]), was=_before(c)))
        else:
            c.review = {"status": "reopened", **_summary(r), "current_evidence_sha256": now_hash,
                        "note": f"its inputs changed after {r['resolved_by']} resolved it at {r['resolved_at']}: review it again"}
            c.set_reason(msg(N_("{reason} [re-opened: the inputs changed after the resolution of {time}]"), reason=_before(c),
                             time=str(r["resolved_at"])))

"""Signing: re-verify the password, write the manifestation bound to the content hash, check it later.

A signature means what its ``meaning`` says, by the printed name, at the time shown in UTC and
in the site's zone, about exactly the content whose SHA-256 it holds.  ``check`` recomputes the
hash of the record as it is now: a record changed after signing shows the signature invalid,
and no signature can be carried over to another record (its content names the record).
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from collector.clock import utc_iso
from collector.errors import InvalidInput, NotAuthorised
from collector.signatures import store
from collector.signatures.content import canonical, content_hash, decision_content
from collector.storage import audit

MEANINGS = ("reviewed", "approved", "responsible for this export")
#: The statement each meaning stands for (ODM SignatureDef LegalReason, report.pdf).
LEGAL_REASONS: dict[str, str] = {
    "reviewed": "I have reviewed the evidence and decided this criterion; my electronic signature is the legally binding "
                "equivalent of my handwritten signature.",
    "approved": "I approve this subject's eligibility decision as recorded; my electronic signature is the legally binding "
                "equivalent of my handwritten signature.",
    "responsible for this export": "I am responsible for this export of the subject's screening data; my electronic signature "
                                   "is the legally binding equivalent of my handwritten signature.",
}


def local_time(t: float, tz: str) -> str:
    """``2026-12-02 05:30:05 CST (UTC+08:00)``: the instant as people at the site read it, zone and offset written out."""
    d = datetime.fromtimestamp(t, tz=ZoneInfo(tz))
    off = d.strftime("%z")
    return f"{d:%Y-%m-%d %H:%M:%S} {d.tzname()} (UTC{off[:3]}:{off[3:]})"


def signer(conn: sqlite3.Connection, name: str, password: str, *, at: float, what: str) -> dict[str, Any]:
    """The operator NAME, if PASSWORD is theirs now (a signature is a fresh act, not a login); audits a refusal.

    The refusal's audit row is written by the caller's transaction only if it commits: callers record it
    with :func:`refusal` in a transaction of its own before raising.
    """
    from collector.users.store import get_user, verify_login

    if not verify_login(conn, name, password):
        raise NotAuthorised(f"wrong password for {name}; nothing was signed ({what}). Type your own password to sign")
    user = get_user(conn, name)
    if not user.get("full_name"):
        raise InvalidInput(f"operator {name} has no full name to print under a signature; an admin sets it with: "
                           f'collector user full-name {name} "Full Name"')
    return user


def refusal(conn: sqlite3.Connection, name: str, *, at: float, what: str) -> None:
    audit.append(conn, at=at, actor=name, action="signature_refused", new={"what": what}, reason="wrong password")


def prepare(user: dict[str, Any], *, meaning: str, record_type: str, record_ref: str, subject_id: str, content: Any,
            at: float, tz: str) -> dict[str, Any]:
    """The signature row about to be stored (manifestation and content hash), before it is stored."""
    if meaning not in MEANINGS:
        raise InvalidInput(f"unknown signature meaning {meaning!r}; use one of: {', '.join(MEANINGS)}")
    return {"uuid": str(uuid.uuid4()), "subject_id": subject_id, "record_type": record_type, "record_ref": str(record_ref),
            "meaning": meaning, "signer": user["name"], "full_name": user["full_name"], "role": user["role"],
            "signed_utc": utc_iso(at), "signed_local": local_time(at, tz), "timezone": tz,
            "content_sha256": content_hash(content), "content": content}


def record(conn: sqlite3.Connection, sig: dict[str, Any], *, at: float) -> dict[str, Any]:
    """Store a prepared signature with its audit row (inside the caller's transaction)."""
    row = store.add(conn, sig, canonical(sig["content"]).decode("utf-8"))
    audit.append(conn, at=at, actor=sig["signer"], action="signature_made", subject_id=sig["subject_id"],
                 new={"uuid": sig["uuid"], "meaning": sig["meaning"], "record_type": sig["record_type"],
                      "record_ref": sig["record_ref"], "content_sha256": sig["content_sha256"], "full_name": sig["full_name"]})
    return row


def manifestation(sig: dict[str, Any]) -> str:
    """The line a person reads: who (printed name and role), what it means, when (site zone and UTC offset)."""
    return (f"Signed electronically by {sig['full_name']} ({sig['role']}, operator {sig['signer']}): {sig['meaning']}, "
            f"{sig['signed_local']}; content SHA-256 {sig['content_sha256']}")


def check(sig: dict[str, Any], current: Any | None) -> tuple[bool, str]:
    """Whether ``sig`` still holds for the record as it is now (``current``; None: the record is gone)."""
    if content_hash(sig["content"]) != sig["content_sha256"]:
        return False, "the stored signed content does not match its hash (altered)"
    if current is None:
        return True, ""
    if content_hash(current) != sig["content_sha256"]:
        return False, f"the {sig['record_type'].replace('_', ' ')} changed after it was signed"
    return True, ""


def resolution_content(r: dict[str, Any]) -> dict[str, Any]:
    """What a review signature covers: the resolution and the hash of the evidence it was made on."""
    return {"record": "review_resolution", "resolution_id": r["id"], "subject_id": r["subject_id"], "criterion": r["criterion"],
            "decision": r["decision"], "reason": r["reason"], "resolved_by": r["resolved_by"], "resolved_at": r["resolved_at"],
            "evidence_sha256": r["evidence_sha256"]}


def subject_signatures(conn: sqlite3.Connection, subject_id: str, decision: dict[str, Any]) -> list[dict[str, Any]]:
    """Every signature about a subject with its validity now (``decision``: the subject's current decision, in its
    signed form: collector.eligibility.service.signed_form)."""
    from collector.eligibility.store import resolutions_of_subject

    resolutions = {str(r["id"]): resolution_content(r) for r in resolutions_of_subject(conn, subject_id)}
    now_decision = decision_content(decision)
    out = []
    for sig in store.of_subject(conn, subject_id):
        current: Any | None
        if sig["record_type"] == "eligibility_decision":
            current = now_decision
        elif sig["record_type"] == "review_resolution":
            current = resolutions.get(sig["record_ref"])
        else:
            current = None  # an export's files are in the bundle: collector verify checks them there
        valid, why = check(sig, current)
        out.append(public(sig, valid, why))
    return out


def public(sig: dict[str, Any], valid: bool, why: str) -> dict[str, Any]:
    keep = ("uuid", "subject_id", "record_type", "record_ref", "meaning", "signer", "full_name", "role", "signed_utc",
            "signed_local", "timezone", "content_sha256", "content")
    return {**{k: sig[k] for k in keep}, "valid": valid, "invalid_reason": why or None, "manifestation": manifestation(sig),
            "legal_reason": LEGAL_REASONS.get(sig["meaning"], "")}

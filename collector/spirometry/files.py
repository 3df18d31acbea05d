"""Spirometry result files: decode a vendor export, store it in one transaction, once per content hash.

Two routes share this module: ``collector spirometry import FILE`` (a new session, origin
``import``) and the GDT exchange-folder watcher (collector/spirometry/gdt_folder.py, into an
open session).  Both identify a file by the SHA-256 of its bytes (a file name may carry a
patient's name and is never stored) and write the ``spirometry_files`` row in the transaction
that stores the file's content, so a file is never processed twice: a crash before the commit
leaves nothing, a crash after it leaves a row that says "done".

A file is decoded whole before anything is written: one bad value refuses the whole file with
its line or element named, and nothing is left behind.  The device's subject data is only
compared with the recorded facts (a contradicting sex or birth date refuses the file).  When the
device gives its own acceptability verdict per trial (ndd XML, the CSV layout), each trial where
it differs from our ATS/ERS 2019 judgement becomes a ``spirometry_quality_disagreement`` event.
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any, Mapping

from collector.errors import Conflict, InvalidInput
from collector.spirometry import store
from collector.spirometry.codes import IMPORT_FORMATS
from collector.storage import audit, repo
from collector.storage.db import transaction
from drivers.spirometry.csv_trials import parse_csv_trials
from drivers.spirometry.hl7 import MllpReceiver
from drivers.spirometry.ndd_xml import parse_ndd_xml
from drivers.spirometry.registry import SpirometerModel, get_model, make_decoder
from drivers.spirometry.results import DecodedMessage, DecodeError

FORMATS = IMPORT_FORMATS
MAX_FILE_BYTES = 20_000_000
#: Device subject fields that, when they differ from the recorded facts, mean another person's results.
CONTRADICTING_FIELDS = ("sex", "birth_date")


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def decode_file(raw: bytes, fmt: str, model: SpirometerModel | None = None) -> DecodedMessage | DecodeError:
    """The file's one message, or why it is refused (never raises)."""
    if fmt == "ndd-xml":
        return parse_ndd_xml(raw)
    if fmt == "csv":
        return parse_csv_trials(raw)
    if fmt == "gdt":
        dec = make_decoder(model if model is not None and model.protocol == "gdt" else get_model("generic-gdt"))
        return _one(dec.feed(raw) + dec.end_of_input(), "gdt", "record")
    if fmt == "hl7":
        payload = raw.strip(b"\x0b\x1c\r\n ").replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        if b"\rMSH|" in payload:
            return DecodeError("hl7", "file holds more than one HL7 message: import one message per file", location="MSH")
        codes = dict(model.codes) if model is not None and model.protocol == "hl7" else {}
        single = model.hl7_single_obr_is_summary if model is not None else True
        return MllpReceiver(codes, single_obr_is_summary=single).decode_payload(payload)
    return DecodeError("gdt", f"unknown format {fmt!r}")


def _one(events: list[Any], source: str, what: str) -> DecodedMessage | DecodeError:
    errors = [e for e in events if isinstance(e, DecodeError)]
    msgs = [e for e in events if isinstance(e, DecodedMessage)]
    if errors:
        return errors[0]
    if len(msgs) != 1:
        return DecodeError(source, f"file holds {len(msgs)} {what}s: one {what} per file")  # type: ignore[arg-type]
    return msgs[0]


def refusal_text(err: DecodeError) -> str:
    return f"{err.reason}{' at ' + err.location if err.location else ''}"


def subject_mismatch(conn: sqlite3.Connection, subject_id: str, msg: DecodedMessage) -> list[str]:
    """Names (never values) of the device's subject fields that differ from the recorded facts."""
    s = msg.subject
    if s is None:
        return []
    import sqlite_utils

    from collector.eligibility.store import current_facts

    facts = current_facts(sqlite_utils.Database(conn), subject_id)
    out = []
    if s.sex is not None and "sex" in facts and str(facts["sex"].value) != s.sex:
        out.append("sex")
    if s.height_cm is not None and "height_cm" in facts and abs(float(facts["height_cm"].value) - s.height_cm) > 0.5:
        out.append("height_cm")
    if s.birth_date is not None and "birth_date" in facts and facts["birth_date"].value.isoformat() != s.birth_date:
        out.append("birth_date")
    return out


def store_file_message(conn: sqlite3.Connection, session_id: int, subject_id: str, msg: DecodedMessage, *, raw: bytes,
                       route: str, fmt: str, at: float, actor: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Inside the caller's transaction: store the message, record the file, judge the session again.

    Raises InvalidInput (nothing of it stays once the transaction rolls back) when the device's
    subject contradicts the recorded facts or the file carries no result."""
    digest = sha256(raw)
    mismatch = subject_mismatch(conn, subject_id, msg)
    contradicted = [m for m in mismatch if m in CONTRADICTING_FIELDS]
    if contradicted:
        raise InvalidInput(f"the file's patient data contradicts subject {subject_id}'s recorded {' and '.join(contradicted)}: "
                           f"check that it is this subject's test (nothing stored)")
    if not msg.results:
        raise InvalidInput("the file carries no mapped spirometry values (see docs/spirometry-vendors.md for what is read)")
    store.insert_raw_message(conn, session_id, at=at, source=msg.source, message_id=msg.message_id, status="accepted",
                             reason=None, masked_raw=msg.masked_raw)
    ids = store.insert_message(conn, session_id, msg, at=at)
    store.insert_file(conn, sha256=digest, session_id=session_id, route=route, fmt=fmt, status="accepted", reason=None,
                      nbytes=len(raw), at=at)
    t_ms = int(round(at * 1000))
    notes: dict[str, Any] = {}
    if msg.warnings:
        notes["warnings"] = list(msg.warnings)
    if mismatch:
        notes["device_subject_differs"] = mismatch
    if notes:
        repo.add_event(conn, session_id, t_ms=t_ms, kind="spirometry_message_notes", detail={"message_id": msg.message_id, **notes})
    blows = [r for r in msg.results if not r.summary]
    audit.append(conn, at=at, actor=actor, action="spirometry_file_processed", subject_id=subject_id, session_id=session_id,
                 new={"sha256": digest, "route": route, "format": fmt, "bytes": len(raw), "manoeuvres": len(blows),
                      "summaries": len(msg.results) - len(blows)})
    result = store.recompute(conn, session_id, cfg)
    rows = [r for r in store.load_manoeuvres(conn, session_id) if r["id"] in set(ids)]
    disagreements = store.quality_disagreements(result, rows)
    for d in disagreements:
        repo.add_event(conn, session_id, t_ms=t_ms, kind="spirometry_quality_disagreement", detail=d)
    rid = store.insert_result(conn, session_id, result, at=at)
    p = result.get("prediction") or {}
    audit.append(conn, at=at, actor=actor, action="spirometry_result", subject_id=subject_id, session_id=session_id,
                 new={"result_id": rid, "valid": result["valid"], "equation": result["equation"], "fvc_l": result["fvc_l"],
                      "fvc_pct_predicted": p.get("percent_predicted_fvc"), "grade_fvc": (result.get("fvc") or {}).get("grade"),
                      "note": result["note"] or None})
    return {"manoeuvre_ids": ids, "result": result, "result_id": rid, "disagreements": disagreements}


def store_file_refusal(conn: sqlite3.Connection, session_id: int, subject_id: str, *, raw: bytes, route: str, fmt: str,
                       reason: str, masked: bytes | None, at: float, actor: str, source: str) -> None:
    """Inside the caller's transaction: a refused folder file is recorded (so it is not read again) with its reason."""
    store.insert_raw_message(conn, session_id, at=at, source=source, message_id=None, status="refused", reason=reason,
                             masked_raw=masked)
    store.insert_file(conn, sha256=sha256(raw), session_id=session_id, route=route, fmt=fmt, status="rejected", reason=reason,
                      nbytes=len(raw), at=at)
    repo.add_event(conn, session_id, t_ms=int(round(at * 1000)), kind="spirometry_refused",
                   detail={"source": source, "reason": reason, "route": route})
    audit.append(conn, at=at, actor=actor, action="spirometry_message_refused", subject_id=subject_id, session_id=session_id,
                 new={"sha256": sha256(raw), "route": route}, reason=reason)


def import_file(conn: sqlite3.Connection, raw: bytes, fmt: str, *, subject_id: str, by: str, at: float, cfg: Mapping[str, Any],
                model: SpirometerModel | None = None) -> dict[str, Any]:
    """``collector spirometry import``: a new stopped spirometry session with the file's content, all or nothing."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    repo.validate_subject_id(subject_id)
    ev = decode_file(raw, fmt, model)
    if isinstance(ev, DecodeError):
        raise InvalidInput(f"file refused ({fmt}): {refusal_text(ev)}; nothing was stored")
    digest = sha256(raw)
    settings = {"import": {"format": fmt, "sha256": digest, "bytes": len(raw)}, "protocol": fmt,
                "model": model.name if model is not None else None,
                **{k: v for k, v in store.evaluation_settings(cfg).items() if k != "quality_codes"}}
    with transaction(conn):
        repo.get_subject(conn, subject_id)
        prev = store.find_file(conn, digest)
        if prev is not None:
            where = f"session {prev['session_id']}" if prev["session_id"] is not None else "a session"
            raise Conflict(f"this file was already processed ({prev['route']}, {prev['status']}) into {where}; "
                           f"see it with: collector spirometry show {prev['session_id']}")
        sid = repo.add_recorded_session(conn, subject_id=subject_id, kind="spirometry", origin="import", started_at=at,
                                        stopped_at=at, by=by, settings=settings)
        out = store_file_message(conn, sid, subject_id, ev, raw=raw, route="import", fmt=fmt, at=at, actor=by, cfg=cfg)
    return {"session_id": sid, "subject_id": subject_id, "format": fmt, "sha256": digest,
            "manoeuvres": sum(1 for r in ev.results if not r.summary), "summaries": sum(1 for r in ev.results if r.summary),
            "warnings": list(ev.warnings), "disagreements": out["disagreements"], "result": out["result"]}

"""Build one subject's export bundle from the database (a BagIt bag, folder or zip).

Everything is assembled in memory, scrubbed of personal data, searched once more
for it, and only then written; the export itself is recorded as an audit row
(``export_made``: by whom, which files, their hashes) in the same database.
"""

from __future__ import annotations

import functools
import io
import json
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

import numpy as np

from collector import __version__
from collector.clock import utc_iso
from collector.errors import CollectorError, Conflict, InvalidInput
from collector.i18n import translator
from collector.spirometry import store as spirometry_store
from collector.storage import audit, repo, seals
from collector.storage.db import transaction
from drivers.protocols.common import Flag
from collector.ward import store as ward_store

from . import bag, csvs, edf, pdf, signature
from .privacy import Scrubber, coarsen, forbidden_tokens

SCHEMA = "collector-export/1"
DEFAULT_SITE = "unnamed-site"


class ExportRefused(CollectorError):
    """Personal data would have left the site: nothing was written."""

    exit_code = 9


@dataclass
class ExportResult:
    subject_id: str
    bag_name: str
    path: Path
    sessions: list[int]
    files: dict[str, str] = field(default_factory=dict)  # path in bag -> sha256
    skipped_open: list[int] = field(default_factory=list)
    signature: dict[str, Any] | None = None  # the export's own signature (``--sign``), stored with the export

    def as_dict(self) -> dict[str, Any]:
        out = {"subject_id": self.subject_id, "bundle": self.bag_name, "path": str(self.path),
               "sessions": self.sessions, "skipped_open_sessions": self.skipped_open, "files": self.files}
        if self.signature is not None:
            from collector.signatures.service import manifestation

            out["signature"] = {"uuid": self.signature["uuid"], "manifestation": manifestation(self.signature)}
        return out


def _flag_names(flags: int) -> str:
    from drivers.protocols.common import flag_names

    return flag_names(flags)


def _device(conn: sqlite3.Connection, device_id: int | None) -> dict[str, Any] | None:
    """Model, serial and firmware only: the address could identify a home device's owner."""
    if device_id is None:
        return None
    return repo.device_summary(conn, device_id)


def _device_label(d: dict[str, Any] | None) -> str:
    if not d:
        return "unknown device"
    return (f"{d['kind']} {d.get('model') or d['protocol']} serial {d.get('serial_number') or 'not reported'}"
            f" firmware {d.get('firmware') or 'not reported'}")


def session_uuid(site_uuid: str, session_id: int) -> str:
    """A session's UUID: the same on every export of it, different on every site (UUID v5 under the site UUID)."""
    return str(uuid.uuid5(uuid.UUID(site_uuid), f"session/{session_id}"))


def _session_meta(s: dict[str, Any], device: dict[str, Any] | None, ident: dict[str, str]) -> dict[str, Any]:
    keep = ("id", "subject_id", "kind", "state", "origin", "started_utc", "stopped_utc")
    return {**ident, **{k: s[k] for k in keep}, "device": device}


def _ident(site: str, sid: int) -> dict[str, str]:
    return {"site_uuid": site, "session_uuid": session_uuid(site, sid)}


# ----------------------------------------------------------------------------- nights


_OVERLAP = int(Flag.BACKFILL_OVERLAP)


def _gap_detail(g: dict[str, Any]) -> str | None:
    if g["backfill"] == "uncovered":
        return "part of the gap the device memory did not cover"
    if g["backfill"] in ("backfilled", "partial"):
        note = f"back-filled from device memory ({g['backfill']})"
        return f"{g['detail']}; {note}" if g["detail"] else note
    return g["detail"]


def _alert_rows(conn: sqlite3.Connection, sid: int, ident: dict[str, Any], scrub: Scrubber, lang: str) -> list[dict[str, Any]]:
    """The night's alerts, oldest first, in the reader's language (``language``) and in English."""
    from collector.ward.messages import localise

    rows = ward_store.list_alerts(conn, include_resolved=True, session_id=sid, limit=10**9)
    out = []
    for a in reversed(rows):
        a = localise(a, lang)
        out.append({**ident, "alert_id": a["id"], "kind": a["kind"], "state": a["state"], "raised_utc": a["raised_utc"],
                    "cleared_utc": a["cleared_utc"], "acknowledged_utc": a["acknowledged_utc"],
                    "acknowledged_by": a["acknowledged_by"], "language": lang, "title": a["title"],
                    "message": scrub.text(a["message"]), "message_en": scrub.text(a["message_en"]),
                    "message_id": a["message_id"],
                    "params_json": None if a["message_id"] is None else scrub.text(json.dumps(a["params"], ensure_ascii=False, sort_keys=True))})
    return out


def _night_files(conn: sqlite3.Connection, s: dict[str, Any], config: dict[str, Any], scrub: Scrubber,
                 pseudonym: str, device: dict[str, Any] | None, site: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    from collector.oximetry.analysis.plot import night_figure
    from collector.oximetry.store import compute_report, gaps_as_analysed, latest_report, night_from_columns, sample_rows

    from .verify import config_from_report

    sid = s["id"]
    ident = _ident(site, sid)
    rows = sample_rows(conn, sid)
    n = len(rows)
    cols: list[tuple[Any, ...]] = list(zip(*rows)) if rows else [()] * 10
    t_col, dt_col, spo2_col, pulse_col, pai_col, valid_col, pvalid_col, flags_col, raw_col, counter_col = cols
    names = {f: _flag_names(f) for f in set(flags_col)}
    samples_csv = csvs.write_columns(csvs.SAMPLE_COLUMNS, {
        "site_uuid": ident["site_uuid"], "session_uuid": ident["session_uuid"], "host_utc": csvs.iso_ms_column(np.array(t_col)),
        "device_time": csvs.cells([scrub.text(v) for v in dt_col]), "spo2_pct": csvs.cells(spo2_col),
        "pulse_bpm": csvs.cells(pulse_col), "pai_pct": csvs.cells(pai_col), "valid": csvs.cells(valid_col),
        "pulse_valid": csvs.cells(pvalid_col), "flags": csvs.cells(flags_col), "flag_names": [names[f] for f in flags_col],
        "status_raw": csvs.cells(raw_col), "counter": csvs.cells(counter_col)}, n)
    # Gaps as the analysis applies them: a back-filled gap does not break the hold, its uncovered parts do.
    all_gaps = gaps_as_analysed(conn, sid)
    gaps = [g for g in all_gaps if g["backfill"] is None or g["breaks_hold"]]  # the EDF's discontinuities
    events = repo.session_events(conn, sid)
    gap_rows = [{**ident, "start_utc": csvs.iso_ms(g["start_utc_ms"]),
                 "end_utc": None if g["end_utc_ms"] is None else csvs.iso_ms(g["end_utc_ms"]),
                 "duration_s": None if g["end_utc_ms"] is None else (g["end_utc_ms"] - g["start_utc_ms"]) / 1000.0,
                 "cause": g["cause"], "breaks_hold": g["breaks_hold"], "detail": scrub.text(_gap_detail(g))}
                for g in all_gaps]
    event_rows = [{**ident, "t_utc": csvs.iso_ms(e["t_utc_ms"]), "kind": e["kind"], "detail_json": scrub.text(e["detail_json"])}
                  for e in events]
    night_notes = [{**n, "text": scrub.text(n["text"])} for n in ward_store.list_notes(conn, sid)]
    note_rows = [{**ident, "t_utc": csvs.iso_ms(n["t_utc_ms"]), "noted_by": n["noted_by"], "text": n["text"]} for n in night_notes]
    alert_rows = _alert_rows(conn, sid, ident, scrub, str(config["site"]["language"]))

    stored = latest_report(conn, sid)
    report = stored if stored is not None else compute_report(conn, sid, config)
    source = "stored night_reports row (newest)" if stored is not None else "computed at export (no stored report)"
    report = scrub.obj(report)

    # Records from device memory on time already covered are in the samples file (flagged), not in the signal.
    flags = np.array(flags_col, dtype=np.int64)
    keep = (flags & _OVERLAP) == 0
    t_ms = np.array(t_col, dtype=np.int64)[keep]
    spo2 = np.array(spo2_col, dtype=np.float64)[keep]  # NULL -> NaN
    pulse = np.array(pulse_col, dtype=np.float64)[keep]
    valid = np.array(valid_col, dtype=np.float64).astype(bool)[keep]
    pulse_valid = np.array(pvalid_col, dtype=np.float64).astype(bool)[keep]
    edf_args: dict[str, Any] = dict(
        t_ms=t_ms, spo2=spo2, pulse=pulse, valid=valid,
        pulse_valid=pulse_valid, gaps=gaps, events=events, pseudonym=pseudonym,
        equipment=(device or {}).get("model") or (device or {}).get("protocol") or "X", session_id=sid,
        night_notes=night_notes)
    edf_bytes, grid = edf.night_edf(**edf_args, layout=edf.CONTINUOUS)
    edf_d_bytes, _ = edf.night_edf(**edf_args, layout=edf.DISCONTINUOUS)

    data = night_from_columns(conn, sid, t_ms, spo2, pulse, valid, pulse_valid, flags[keep])
    # one figure per night, in the export's language (the reader's): saved as the PNG here and reused as the
    # night's page of report.pdf instead of being drawn a second time
    lang = str(config["site"]["language"])
    title = translator(lang)("Overnight oximetry: subject {subject}, session {session}").format(subject=pseudonym, session=sid)
    fig = night_figure(data, report, config_from_report(report), title=title, tz=ZoneInfo(site_timezone(config)), lang=lang)
    png_buf = io.BytesIO()
    fig.savefig(png_buf, format="png")
    png_bytes = png_buf.getvalue()

    start_utc = None if report.get("start_s") is None else utc_iso(report["start_s"])
    night_json = {
        "schema": SCHEMA, "session": _session_meta(s, device, ident), "report_source": source, "report": report,
        "edf_grid": {**grid.as_dict(), "start_utc": csvs.iso_ms(grid.start_ms)},
    }
    files = {
        f"samples_{sid}.csv": samples_csv,
        f"gaps_{sid}.csv": csvs.write_csv(csvs.GAP_COLUMNS, gap_rows),
        f"events_{sid}.csv": csvs.write_csv(csvs.EVENT_COLUMNS, event_rows),
        f"notes_{sid}.csv": csvs.write_csv(csvs.NOTE_COLUMNS, note_rows),
        f"alerts_{sid}.csv": csvs.write_csv(csvs.ALERT_COLUMNS, alert_rows),
        f"night_{sid}.json": _json(night_json),
        f"night_{sid}.edf": edf_bytes,
        f"night_{sid}.discontinuous.edf": edf_d_bytes,
        f"night_{sid}.png": png_bytes,
    }
    return files, {**ident, "session_id": sid, "start_utc": start_utc, "report": report, "png": png_bytes, "data": data,
                   "notes": night_notes, "figure": fig}


# ----------------------------------------------------------------------------- spirometry


def _coarsener(config: dict[str, Any]) -> Callable[[Any], Any]:
    """Exported figures at the form's precision, never rounded onto the FVC limit (both from the one config)."""
    return functools.partial(coarsen, fvc_threshold_pct=float(config["spirometry"]["fvc_threshold_pct"]),
                             pct_decimals=int(config["eligibility"]["crf_decimals"]))


def _spirometry_files(conn: sqlite3.Connection, s: dict[str, Any], scrub: Scrubber, device: dict[str, Any] | None,
                      coarsen_figures: Callable[[Any], Any], site: str) -> tuple[dict[str, bytes], dict[str, Any] | None]:
    """Every manoeuvre with its quality flags and the newest result (raw device messages stay local:
    they can carry the name and birth date the device was given)."""
    sid = s["id"]
    ident = _ident(site, sid)
    man = spirometry_store.manoeuvre_rows(conn, sid)
    result = spirometry_store.latest_result_row(conn, sid)
    out_man = []
    for m in man:
        m = {k: v for k, v in m.items() if k not in ("raw_json", "message_id")}
        m["device_quality"] = json.loads(m.pop("device_quality_json") or "{}")
        m["curve"] = json.loads(m.pop("curve_json")) if m.get("curve_json") else None
        out_man.append(scrub.obj(m))
    if result is not None:
        result = dict(result)
        result["result"] = json.loads(result.pop("result_json") or "{}")
        result = coarsen_figures(scrub.obj(result))
    csv_rows = [{**ident, **m, "device_quality_json": json.dumps(m["device_quality"], sort_keys=True)} for m in out_man]
    files = {
        f"spirometry_{sid}.csv": csvs.write_csv(csvs.MANOEUVRE_COLUMNS, csv_rows),
        f"spirometry_{sid}.json": _json({"schema": SCHEMA, "session": _session_meta(s, device, ident),
                                         "manoeuvres": out_man, "result": result}),
    }
    return files, (None if result is None else {**ident, **result, "session_id": sid})


# ----------------------------------------------------------------------------- subject level


def _eligibility(conn: sqlite3.Connection, subject_id: str, now: float, config: dict[str, Any]) -> dict[str, Any]:
    """The decision as ``collector eligibility --json`` prints it (same thresholds: the site config's).

    Imported lazily (a separate feature); read-only, so the export does not record a decision change."""
    try:
        from collector.eligibility.service import evaluate_subject, thresholds_for_config
    except (ImportError, AttributeError) as exc:
        return {"decision": "not_evaluated", "criteria": [], "summary": [f"eligibility service unavailable ({exc})"]}
    return evaluate_subject(conn, subject_id, now=now, thresholds=thresholds_for_config(config), messages=True)


def _age_at_screening(conn: sqlite3.Connection, subject_id: str, eligibility: dict[str, Any],
                      first_session: str | None) -> tuple[int | None, str | None]:
    """Age in completed years on the screening date (the birth date itself never leaves)."""
    for c in eligibility.get("criteria") or []:
        if c.get("id") == "age" and isinstance(c.get("value"), dict) and c["value"].get("age_years") is not None:
            return int(c["value"]["age_years"]), c["value"].get("screening_date")
    try:
        from collector.storage.sqlite_lib import sqlite_utils

        from collector.eligibility.engine import age_on
        from collector.eligibility.store import current_facts

        facts = current_facts(sqlite_utils.Database(conn), subject_id)
    except (ImportError, sqlite3.OperationalError):
        return None, None
    birth = facts.get("birth_date")
    screening = facts.get("screening_date")
    on = screening.value if screening is not None else (
        datetime.fromisoformat(first_session.replace("Z", "+00:00")).date() if first_session else None)
    if birth is None or not isinstance(birth.value, date) or not isinstance(on, date):
        return None, None
    return age_on(birth.value, on), on.isoformat()


def _audit_extract(conn: sqlite3.Connection, subject_id: str, session_ids: list[int], scrub: Scrubber, site: str) -> bytes:
    rows = audit.rows_about(conn, subject_id, session_ids)
    out = []
    for r in rows:
        withheld = [f for f in csvs.AUDIT_TEXT if scrub.hits(r.get(f))]
        ident = {"site_uuid": site, "session_uuid": None if r.get("session_id") is None else session_uuid(site, r["session_id"])}
        r = {**r, **ident, **{f: scrub.text(r[f]) for f in withheld}}
        out.append(csvs.audit_row_out(r, withheld))
    return csvs.write_csv(csvs.AUDIT_COLUMNS, out)


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def site_name(config: dict[str, Any]) -> str:
    """``[site] name``; the packaged default is refused so two laptops' bundles never share a name."""
    name = str((config.get("site") or {}).get("name") or DEFAULT_SITE).strip()
    if name == DEFAULT_SITE:
        raise InvalidInput(f'the site has no name yet ([site] name is "{DEFAULT_SITE}"); '
                           'set it in the site config, e.g. [site] name = "Example Hospital Neurology", then export again')
    return name


def site_timezone(config: dict[str, Any]) -> str:
    return str((config.get("site") or {}).get("timezone") or "Asia/Shanghai")


#: Payload files the printed payload hash leaves out: the report (it prints the hash) and the signatures
#: (the export's own signature covers the report; each signature carries the hash of what it signs).
NOT_IN_PAYLOAD_HASH = ("report.pdf", "signatures.json")


def payload_hash_without_report(payload: dict[str, bytes]) -> str:
    """SHA-256 of the payload manifest without ``data/report.pdf`` and ``data/signatures.json`` (the report prints it)."""
    return bag.sha256(bag.manifest_text({f"data/{k}": v for k, v in payload.items() if k not in NOT_IN_PAYLOAD_HASH}))


def _record_signatures(conn: sqlite3.Connection, subject_id: str, eligibility: dict[str, Any]) -> list[dict[str, Any]]:
    """The people's signatures about the subject's records, each valid or not against the decision as exported
    (signatures of earlier exports belong to those bundles and stay out)."""
    from collector.signatures.service import subject_signatures

    return [s for s in subject_signatures(conn, subject_id, eligibility) if s["record_type"] != "export"]


def build_subject_bag(conn: sqlite3.Connection, subject_id: str, *, config: dict[str, Any], by: str, now: float,
                      session_ids: list[int] | None = None,
                      export_signer: dict[str, Any] | None = None) -> tuple[str, dict[str, bytes], ExportResult]:
    """All files of the bag in memory (nothing written, no audit row).

    ``export_signer``: the operator signing the export ("responsible for this export"): the signature covers
    every payload file but signatures.json, is written there, and is stored by :func:`export_subject`."""
    repo.get_subject(conn, subject_id)
    sessions = repo.list_sessions(conn, subject_id)
    if session_ids is not None:
        sessions = [s for s in sessions if s["id"] in session_ids]
    skipped = [s["id"] for s in sessions if s["state"] == "open"]
    if session_ids is not None and skipped:
        raise Conflict(f"session {skipped[0]} is still recording; stop it first (collector session stop {skipped[0]}), then export")
    sessions = [s for s in sessions if s["state"] != "open"]
    scrub = Scrubber(forbidden_tokens(conn, subject_id))
    site = site_name(config)
    site_id = repo.site_uuid(conn)
    software = f"collector {__version__}"
    payload: dict[str, bytes] = {}
    nights: list[dict[str, Any]] = []
    try:
        return _build_subject_bag(conn, subject_id, config=config, by=by, now=now, sessions=sessions, skipped=skipped,
                                  scrub=scrub, site=site, site_id=site_id, software=software, payload=payload, nights=nights,
                                  export_signer=export_signer)
    finally:  # a night figure kept for report.pdf is closed there; not when the export stopped before it
        for n in nights:
            if n.get("figure") is not None:
                import matplotlib.pyplot as plt

                plt.close(n["figure"])


def _build_subject_bag(conn: sqlite3.Connection, subject_id: str, *, config: dict[str, Any], by: str, now: float,
                       sessions: list[dict[str, Any]], skipped: list[int], scrub: Scrubber, site: str, site_id: str,
                       software: str, payload: dict[str, bytes], nights: list[dict[str, Any]],
                       export_signer: dict[str, Any] | None) -> tuple[str, dict[str, bytes], ExportResult]:
    spiro: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    for s in sessions:
        device = _device(conn, s["device_id"])
        if device and device not in devices:
            devices.append(device)
        if s["kind"] == "night":
            files, night = _night_files(conn, s, config, scrub, subject_id, device, site_id)
            nights.append(night)
        else:
            files, spiro_result = _spirometry_files(conn, s, scrub, device, _coarsener(config), site_id)
            if spiro_result is not None:
                spiro.append(spiro_result)
        payload.update(files)
    eligibility = _coarsener(config)(scrub.obj(_eligibility(conn, subject_id, now, config)))
    # The reasons' message trees only serve report.pdf's language: eligibility.json keeps the decision as signed.
    reason_trees = eligibility.pop("messages", None)
    first = min((s["started_utc"] for s in repo.list_sessions(conn, subject_id)), default=None)
    age, screening_date = _age_at_screening(conn, subject_id, eligibility, first)
    ids = [s["id"] for s in sessions]
    all_ids = [s["id"] for s in repo.list_sessions(conn, subject_id)]
    payload["eligibility.json"] = _json(eligibility)
    payload["audit.csv"] = _audit_extract(conn, subject_id, all_ids, scrub, site_id)
    head = audit.head(conn)
    seal = seals.head(conn)
    payload["subject.json"] = _json({
        "schema": SCHEMA, "pseudonym": subject_id, "site": site, "site_uuid": site_id, "software": software, "export_utc": utc_iso(now),
        "age_at_screening_years": age, "screening_date": screening_date,
        "sessions": [{"id": s["id"], "session_uuid": session_uuid(site_id, s["id"]), "kind": s["kind"], "state": s["state"],
                      "started_utc": s["started_utc"]} for s in sessions],
        "skipped_open_sessions": skipped, "devices": devices,
        "audit_chain_head": {"id": head[0], "row_hash": head[1]} if head else None,
        "samples_seal_head": {"id": seal[0], "seal_hash": seal[1]} if seal else None,
    })
    payload_hash = payload_hash_without_report(payload)
    record_sigs = _record_signatures(conn, subject_id, eligibility)
    payload["report.pdf"] = pdf.summary_pdf(pseudonym=subject_id, site=site, site_uuid=site_id, timezone=site_timezone(config),
                                            export_utc=utc_iso(now), software=software, age_years=age, eligibility=eligibility,
                                            nights=nights, spirometry=spiro, payload_hash=payload_hash, signatures=record_sigs,
                                            export_signed=export_signer is not None,
                                            lang=config["site"]["language"], messages=reason_trees)
    name = f"{subject_id}_{_stamp(now)}"
    export_sig = None
    if export_signer is not None:
        from collector.signatures import service as signatures

        content = {"record": "export", "bundle": name, "subject_id": subject_id,
                   "files": {f"data/{k}": bag.sha256(v) for k, v in sorted(payload.items())}}
        export_sig = signatures.prepare(export_signer, meaning="responsible for this export", record_type="export",
                                        record_ref=name, subject_id=subject_id, content=content, at=now, tz=site_timezone(config))
        record_sigs = record_sigs + [signatures.public(export_sig, True, "")]
    payload["signatures.json"] = _json({"schema": SCHEMA, "subject": subject_id, "canonicalisation": "RFC 8785 (JCS), SHA-256",
                                        "signatures": record_sigs})
    info = [
        ("Source-Organization", site), ("Site-UUID", site_id), ("Bag-Software-Agent", software),
        ("Bagging-Date", datetime.fromtimestamp(now, tz=timezone.utc).date().isoformat()),
        ("External-Identifier", subject_id), ("Subject-Pseudonym", subject_id), ("Export-Time-UTC", utc_iso(now)),
        ("Exported-By", by), ("Software-Version", __version__),
        ("Sessions", " ".join(str(i) for i in ids) or "none"),
        *[("Device", _device_label(d)) for d in devices],
        ("Audit-Chain-Head", f"{head[0]} {head[1]}" if head else "empty"),
        ("Samples-Seal-Head", f"{seal[0]} {seal[1]}" if seal else "empty"),
        (pdf.HASH_LABEL, payload_hash),
    ]
    files = bag.build_bag(payload, [(k, scrub.text(v)) for k, v in info])
    leaks = scrub.leaks(files)
    if leaks:
        raise ExportRefused(f"personal data (birth date or device address) found in {', '.join(leaks)}; nothing was written: report this bug")
    result = ExportResult(subject_id, name, Path(), ids, {k: bag.sha256(v) for k, v in files.items()}, skipped, export_sig)
    return name, files, result


def export_subject(conn: sqlite3.Connection, subject_id: str, out_dir: Path, *, config: dict[str, Any], by: str,
                   now: float, session_ids: list[int] | None = None, as_zip: bool = False,
                   export_signer: dict[str, Any] | None = None) -> ExportResult:
    """Write one subject's bundle under ``out_dir`` and record the export (and its signature) in the audit trail."""
    name, files, result = build_subject_bag(conn, subject_id, config=config, by=by, now=now, session_ids=session_ids,
                                            export_signer=export_signer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (name + ".zip" if as_zip else name)
    if target.exists():
        raise Conflict(f"{target} already exists; export into another --out folder or move it away")
    result.path = target
    try:
        with transaction(conn):  # the audit row and the files land together or not at all
            files[signature.SIGNATURE_FILE] = signature.sign_bundle(conn, name, files, at=now)  # logs the signed heads
            result.files[signature.SIGNATURE_FILE] = bag.sha256(files[signature.SIGNATURE_FILE])
            audit.append(conn, at=now, actor=by, action="export_made", subject_id=subject_id,
                         new={"bundle": name, "zip": as_zip, "sessions": result.sessions, "files": result.files})
            if result.signature is not None:
                from collector.signatures.service import record

                record(conn, result.signature, at=now)
            try:
                bag.write_zip(files, target, name) if as_zip else bag.write_folder(files, target)
            except OSError as exc:
                raise InvalidInput(f"cannot write the bundle to {target}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(target)
        raise
    return result


def _remove(target: Path) -> None:
    import shutil

    if target.is_dir():
        shutil.rmtree(target, ignore_errors=True)
    elif target.exists():
        target.unlink()

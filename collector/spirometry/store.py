"""Spirometry sessions in the database: manoeuvres in, the session's result out.

Why one module: what a session *means* (ATS/ERS quality, GLI % predicted) is
always recomputed from the stored manoeuvre rows and the subject's recorded
facts, never from what a device claims, so the daemon (after every message),
the CLI (``spirometry recompute``) and ``spirometry show`` share this code.

Decisions recorded here (and in every result row's JSON):

* Attempt order is arrival order (row id): ATS/ERS's third end-of-expiration
  rule compares a blow with the *earlier* ones, and device numbering may restart
  between messages.  The device's own number is kept next to it.
* Device quality codes become ATS/ERS flags only through an explicit map
  (``[spirometry.quality_codes]``); unknown codes are listed, never guessed.
* ``valid`` = an acceptable *and repeatable* FVC session: its ATS/ERS 2019 FVC
  grade is one of ``fvc_grades`` (A, B, C: two or more acceptable blows within
  0.200 L).  One acceptable blow is grade E and never decides on its own.  A
  site may name further grades in ``fvc_grades_review`` (e.g. D, E for ALS
  patients who cannot repeat): such a session is valid with ``grade_review``
  set, and the criterion is ``needs_review`` whenever it decides.  Both lists
  are recorded in every result.
* A session with only the device's own summary (its best values, no manoeuvres) is judged
  honestly: the FVC is the device's, its quality grade unknown (``fvc_basis`` =
  ``device_summary``); such a session is valid with ``grade_review`` set (the criterion is
  ``needs_review``) unless the site sets ``device_summary_acceptable``.  When manoeuvres
  arrived, they decide and the device summary is kept for comparison only.
* The % predicted is also computed with the GLI splines read at the lower quarter-year row
  (rspiro, spiref) instead of interpolated: ``lower_row_fvc_pct_predicted``; eligibility flags
  the criterion when the two fall on different sides of its limit.
* Plateau and hesitation rules are recorded in ``rules`` (quality.PLATEAU_RULE and the
  hesitation rule the site chose with ``hesitation_fails``).
* Age is decimal years ``days / 365.25`` (the GLI calculators' convention)
  from the ``birth_date`` fact to the ``screening_date`` fact, or to the
  session's start date (host local date, as the eligibility service does)
  when no screening date is recorded.
* Missing sex / height / birth date: the row says what is missing, % predicted
  stays NULL.  Out-of-range age or height: the equation's refusal is stored.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Iterable, Mapping, Sequence

from collector.storage.sqlite_lib import sqlite_utils

from collector.clock import utc_iso
from collector.eligibility.store import current_facts
from collector.spirometry import gli
from collector.spirometry.quality import (
    HESITATION_RULE_FAIL,
    HESITATION_RULE_WARN,
    PLATEAU_RULE,
    InvalidManoeuvreError,
    Manoeuvre,
    OutcomeSummary,
    assess_session,
)
from collector.storage import repo
from collector.spirometry.codes import ALL_GRADES, DEFAULT_QUALITY_CODES, FVC_GRADES, QUALITY_FLAGS
from drivers.spirometry.results import DecodedMessage, ManoeuvreResult, Observation


# --------------------------------------------------------------------------- manoeuvres


def _curves_json(r: ManoeuvreResult) -> str | None:
    if not r.curves:
        return None
    return json.dumps([{"kind": c.kind, "x": list(c.x), "y": list(c.y)} for c in r.curves], separators=(",", ":"))


def _raw_json(r: ManoeuvreResult) -> str:
    """What the device sent beyond the columns; never subject data (it identifies)."""
    raw = {
        "source": r.source,
        "time": r.time,
        "bronchodilator": r.bronchodilator,
        "vc_l": r.vc_l,
        "device_derived": dict(r.device_derived),
        "last_second_volume_l": r.last_second_volume_l,
        "hesitation_s": r.hesitation_s,
        "device_acceptable": r.device_acceptable,
        "reference_ranges": [list(x) for x in r.reference_ranges],
        "unknown": [{"code": u.code, "value": u.value, "unit": u.unit, "text": u.text, "system": u.system} for u in r.unknown],
    }
    return json.dumps(raw, sort_keys=True)


def _insert_observations(conn: sqlite3.Connection, session_id: int, manoeuvre_id: int | None, message_id: str | None,
                         observations: Iterable[Observation]) -> None:
    for o in observations:
        ref = o.reference
        conn.execute(
            "INSERT INTO spirometry_observations (session_id, manoeuvre_id, message_id, grp, code, text, system, value_type,"
            " value, unit, ref_text, ref_low, ref_high, abnormal_flags, status, sub_id, mapped_to)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (session_id, manoeuvre_id, message_id, o.group, o.code, o.text, o.system, o.value_type, o.value, o.unit,
             ref.text if ref else None, ref.low if ref else None, ref.high if ref else None, o.abnormal_flags, o.status,
             o.sub_id, o.mapped_to))


def insert_message(conn: sqlite3.Connection, session_id: int, msg: DecodedMessage, *, at: float) -> list[int]:
    """Store every result of an accepted message (device summaries flagged) and every observation line
    it carried, mapped or not; returns the manoeuvre row ids."""
    ids = []
    _insert_observations(conn, session_id, None, msg.message_id, msg.observations)
    for r in msg.results:
        cur = conn.execute(
            "INSERT INTO spirometry_manoeuvres (session_id, received_utc, message_id, number, manoeuvre_type, posture, is_summary,"
            " fvc_l, fev1_l, fev1_fvc, pef_l_s, bev_l, fet_s, device_quality_json, curve_json, raw_json)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (session_id, utc_iso(at), r.message_id or msg.message_id, None if r.summary else r.number, r.manoeuvre_type,
             r.posture, int(r.summary), r.fvc_l, r.fev1_l, r.fev1_fvc, r.pef_l_s, r.bev_l, r.fet_s,
             json.dumps(list(r.device_quality)), _curves_json(r), _raw_json(r)),
        )
        ids.append(repo.inserted_id(cur))
        _insert_observations(conn, session_id, ids[-1], r.message_id or msg.message_id, r.observations)
    return ids


def insert_raw_message(conn: sqlite3.Connection, session_id: int, *, at: float, source: str, message_id: str | None,
                       status: str, reason: str | None, masked_raw: bytes | None) -> int:
    """Keep the device's message as received, identifying fields masked, for audit at the site (never exported)."""
    import hashlib

    digest = hashlib.sha256(masked_raw).hexdigest() if masked_raw is not None else None
    cur = conn.execute(
        "INSERT INTO spirometry_messages (session_id, received_utc, source, message_id, status, reason, sha256, raw_masked)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (session_id, utc_iso(at), source, message_id, status, reason, digest, masked_raw))
    return repo.inserted_id(cur)


def observation_rows(conn: sqlite3.Connection, session_id: int) -> list[dict[str, Any]]:
    """Every observation line of a session as the device sent it (mapped or not), in arrival order."""
    return repo._rows(conn, "SELECT * FROM spirometry_observations WHERE session_id = ? ORDER BY id", (session_id,))


def message_rows(conn: sqlite3.Connection, session_id: int, *, with_raw: bool = False) -> list[dict[str, Any]]:
    """The session's received messages (status, reason, digest; the masked text only when asked)."""
    cols = "*" if with_raw else "id, session_id, received_utc, source, message_id, status, reason, sha256, length(raw_masked) AS raw_bytes"
    return repo._rows(conn, f"SELECT {cols} FROM spirometry_messages WHERE session_id = ? ORDER BY id", (session_id,))


def message_already_stored(conn: sqlite3.Connection, session_id: int, message_id: str | None) -> bool:
    """A device resends a message whose ACK it missed: the second copy must not count twice."""
    if not message_id:
        return False
    return conn.execute("SELECT 1 FROM spirometry_manoeuvres WHERE session_id = ? AND message_id = ? LIMIT 1",
                        (session_id, message_id)).fetchone() is not None


def find_file(conn: sqlite3.Connection, sha256: str) -> dict[str, Any] | None:
    """The record of a result file with these bytes processed before (folder or import), if any."""
    return repo._row(conn, "SELECT * FROM spirometry_files WHERE sha256 = ?", (sha256,))


def insert_file(conn: sqlite3.Connection, *, sha256: str, session_id: int | None, route: str, fmt: str, status: str,
                reason: str | None, nbytes: int, at: float) -> int:
    """Record that a result file was processed; in the transaction that stored (or refused) its content."""
    cur = conn.execute(
        "INSERT INTO spirometry_files (sha256, session_id, route, format, status, reason, bytes, processed_utc)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (sha256, session_id, route, fmt, status, reason, nbytes, utc_iso(at)))
    return repo.inserted_id(cur)


def quality_disagreements(result: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Trials where the device's own acceptability verdict differs from our ATS/ERS 2019 FVC judgement."""
    judged = {m["row_id"]: m for m in result.get("manoeuvres", []) if "fvc" in m}
    out = []
    for row in rows:
        raw = row.get("raw") or (json.loads(row["raw_json"]) if row.get("raw_json") else {})
        device = raw.get("device_acceptable")
        j = judged.get(row["id"])
        if device is None or j is None:
            continue
        ours = j["fvc"]["status"] == "acceptable"
        if bool(device) != ours:
            out.append({"row_id": row["id"], "number": row["number"], "device_acceptable": bool(device),
                        "ours": j["fvc"]["status"], "our_reasons": list(j["fvc"]["reasons"]),
                        "device_codes": list(row.get("device_quality") or [])})
    return out


def manoeuvre_rows(conn: sqlite3.Connection, session_id: int) -> list[dict[str, Any]]:
    """A session's manoeuvre rows as stored (JSON columns still text), in arrival order."""
    return repo._rows(conn, "SELECT * FROM spirometry_manoeuvres WHERE session_id = ? ORDER BY id", (session_id,))


def last_received_utc(conn: sqlite3.Connection, session_id: int) -> str | None:
    """When the session's newest manoeuvre arrived (None before the first)."""
    return conn.execute("SELECT MAX(received_utc) FROM spirometry_manoeuvres WHERE session_id = ?", (session_id,)).fetchone()[0]


def load_manoeuvres(conn: sqlite3.Connection, session_id: int) -> list[dict[str, Any]]:
    rows = manoeuvre_rows(conn, session_id)
    for row in rows:
        row["device_quality"] = json.loads(row.pop("device_quality_json") or "[]")
        row["curves"] = json.loads(row.pop("curve_json")) if row.get("curve_json") else []
        row["raw"] = json.loads(row.pop("raw_json") or "{}")
    return rows


# --------------------------------------------------------------------------- subject inputs


@dataclass
class SubjectInputs:
    """What the reference equations need, from the recorded facts.  No birth date kept (it identifies)."""

    sex: str | None = None
    height_cm: float | None = None
    age_years: float | None = None
    on_date: str | None = None
    on_date_basis: str | None = None  # 'screening_date fact' | 'session start (local date)'
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"sex": self.sex, "height_cm": self.height_cm, "age_years": self.age_years, "age_on": self.on_date,
                "age_on_basis": self.on_date_basis, "missing": list(self.missing), "problems": list(self.problems)}


def decimal_age(birth: date, on: date) -> float:
    """Decimal years, days / 365.25 (the GLI calculators' convention)."""
    return (on - birth).days / 365.25


def subject_inputs(conn: sqlite3.Connection, subject_id: str, session_started_utc: str) -> SubjectInputs:
    facts = current_facts(sqlite_utils.Database(conn), subject_id)
    out = SubjectInputs()
    sex = facts.get("sex")
    height = facts.get("height_cm")
    birth = facts.get("birth_date")
    screening = facts.get("screening_date")
    out.sex = str(sex.value) if sex is not None else None
    out.height_cm = float(height.value) if height is not None else None
    if screening is not None:
        on, out.on_date_basis = screening.value, "screening_date fact"
    else:
        # Same rule as the eligibility service: the site's (host's local) calendar date of the session start.
        on = datetime.fromisoformat(session_started_utc.replace("Z", "+00:00")).astimezone().date()
        out.on_date_basis = "session start (local date)"
    out.on_date = on.isoformat()
    out.missing = [name for name, rec in (("sex", sex), ("height_cm", height), ("birth_date", birth)) if rec is None]
    if birth is not None:
        if birth.value >= on:
            out.problems.append(f"birth date is not before {out.on_date} ({out.on_date_basis}): check both")
        else:
            out.age_years = decimal_age(birth.value, on)
    return out


# --------------------------------------------------------------------------- evaluation


def _flags(codes: Iterable[str], code_map: Mapping[str, str]) -> tuple[dict[str, bool], list[str], list[str]]:
    flags: dict[str, bool] = {}
    used, ignored = [], []
    for code in codes:
        flag = code_map.get(str(code).strip().lower())
        if flag in QUALITY_FLAGS:
            flags[flag] = True
            used.append(code)
        else:
            ignored.append(code)
    return flags, used, ignored


def _volume_time(curves: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[float]] | None:
    for c in curves:
        if c.get("kind") == "volume_time" and len(c.get("x", [])) >= 2:
            return list(map(float, c["x"])), list(map(float, c["y"]))
    return None


def prediction_record(p: gli.Prediction) -> dict[str, Any]:
    """Flat JSON of a prediction (the ``collector predict --json`` keys)."""
    out: dict[str, Any] = {"equation": p.equation, "ethnicity": p.ethnicity, "sex": p.sex, "age_years": p.age_years,
                           "height_cm": p.height_cm}
    for name, unit in (("fvc", "_l"), ("fev1", "_l"), ("fev1_fvc", "")):
        o = p.outcome(name)
        out[f"{name}{unit}"] = o.measured
        out[f"predicted_{name}{unit}"] = o.predicted
        out[f"lln_{name}{unit}"] = o.lln
        out[f"uln_{name}{unit}"] = o.uln
        out[f"z_{name}"] = o.z
        out[f"percent_predicted_{name}"] = o.percent_predicted
    return out


def _summary_dict(s: OutcomeSummary, number_of: Mapping[int, int | None]) -> dict[str, Any]:
    d = dict(s.__dict__)
    d["reported_from_attempt"] = d.pop("reported_from")
    d["reported_from_number"] = number_of.get(s.reported_from) if s.reported_from is not None else None
    return d


def evaluate(
    rows: Sequence[Mapping[str, Any]],
    inputs: SubjectInputs,
    *,
    equation: str = gli.DEFAULT_EQUATION,
    ethnicity_2012: str = "other",
    threshold_pct: float = 50.0,
    quality_codes: Mapping[str, str] | None = None,
    fvc_grades: Sequence[str] = FVC_GRADES,
    fvc_grades_review: Sequence[str] = (),
    device_summary_acceptable: bool = False,
    hesitation_fails: bool = False,
) -> dict[str, Any]:
    """The session's result from its stored manoeuvre rows (see the module docstring for the rules)."""
    if equation not in gli.EQUATIONS:
        raise ValueError(f"unknown reference equation {equation!r}: use one of {', '.join(gli.EQUATIONS)}")
    code_map = {k.lower(): v for k, v in {**DEFAULT_QUALITY_CODES, **(quality_codes or {})}.items()}
    blows: list[Manoeuvre] = []
    per_row: list[dict[str, Any]] = []
    not_assessed: list[dict[str, Any]] = []
    types: set[str] = set()
    number_of: dict[int, int | None] = {}
    summaries: list[Mapping[str, Any]] = []
    for row in rows:
        ident = {"row_id": row["id"], "number": row["number"]}
        if row["is_summary"]:
            not_assessed.append({**ident, "reason": "device summary (its own best values), not a blow"})
            if (row["manoeuvre_type"] or "FVC") == "FVC" and row["fvc_l"] is not None:
                summaries.append(row)
            continue
        mtype = row["manoeuvre_type"] or ("FVC" if row["fvc_l"] is not None else "SVC")
        types.add(mtype)
        if mtype != "FVC" or row["fvc_l"] is None:
            not_assessed.append({**ident, "reason": f"{mtype} manoeuvre: not judged by the forced (FVC) criteria"})
            continue
        if row["fev1_l"] is None:
            not_assessed.append({**ident, "reason": "no FEV1 reported: cannot be judged"})
            continue
        flags, used, ignored = _flags(row["device_quality"], code_map)
        attempt = len(blows) + 1
        try:
            raw = row.get("raw") or {}
            m = Manoeuvre(number=attempt, fvc_l=row["fvc_l"], fev1_l=row["fev1_l"], pef_l_s=row["pef_l_s"],
                          bev_l=row["bev_l"], fet_s=row["fet_s"], curve=_volume_time(row["curves"]),
                          last_second_volume_change_l=raw.get("last_second_volume_l"), hesitation_s=raw.get("hesitation_s"),
                          **flags)
        except InvalidManoeuvreError as exc:
            not_assessed.append({**ident, "reason": str(exc).replace(f"manoeuvre {attempt}: ", "")})
            continue
        blows.append(m)
        number_of[attempt] = row["number"]
        per_row.append({**ident, "attempt": attempt, "device_codes_used": used, "device_codes_ignored": ignored})

    result: dict[str, Any] = {
        "definition": "ats-ers-2019", "manoeuvre_types": sorted(types), "attempts": len(blows),
        "manoeuvres": per_row, "not_assessed": not_assessed, "inputs": inputs.as_dict(),
        "equation": equation, "ethnicity_2012": ethnicity_2012, "threshold_pct": threshold_pct,
        "fvc_grades": list(fvc_grades), "fvc_grades_review": list(fvc_grades_review), "grade_review": None,
        "fvc": None, "fev1": None, "more_attempts_needed": True, "more_attempts_reasons": [],
        "prediction": None, "other_prediction": None, "prediction_refused": None, "equation_decides": None,
        "fvc_basis": None, "device_summary": None, "device_summary_acceptable": device_summary_acceptable,
        "lower_row_fvc_pct_predicted": None, "interpolation_decides": None,
        "rules": {"plateau": PLATEAU_RULE, "hesitation": HESITATION_RULE_FAIL if hesitation_fails else HESITATION_RULE_WARN,
                  "spline_lookup": "interpolated between quarter-year rows (lower-row lookup computed for comparison)"},
    }
    notes: list[str] = []
    if blows:
        a = assess_session(blows, age_years=inputs.age_years, hesitation_fails=hesitation_fails)
        for item, ma in zip(per_row, a.manoeuvres):
            item.update(fvc={"status": ma.fvc.status, "reasons": list(ma.fvc.reasons)},
                        fev1={"status": ma.fev1.status, "reasons": list(ma.fev1.reasons)},
                        eofe_by=list(ma.eofe_by), warnings=list(ma.warnings))
        result.update(fvc=_summary_dict(a.fvc, number_of), fev1=_summary_dict(a.fev1, number_of),
                      more_attempts_needed=a.more_attempts_needed, more_attempts_reasons=list(a.more_attempts_reasons))
        fvc_l, fev1_l = a.fvc.reported_l, a.fev1.reported_l
        result["fvc_basis"] = "manoeuvres"
    elif summaries:
        last = summaries[-1]  # the device's newest session result
        fvc_l, fev1_l = last["fvc_l"], last["fev1_l"]
        result["fvc_basis"] = "device_summary"
        result["more_attempts_needed"] = False
        result["more_attempts_reasons"] = ["device_summary_only"]
    else:
        fvc_l = fev1_l = None
        notes.append("no FVC manoeuvre" + (" (SVC only; the protocol asks for FVC)" if "SVC" in types else " received yet"))
    if summaries:
        last = summaries[-1]
        result["device_summary"] = {"row_id": last["id"], "fvc_l": last["fvc_l"], "fev1_l": last["fev1_l"],
                                    "summaries": len(summaries),
                                    "differs_from_manoeuvres_l": (round(last["fvc_l"] - fvc_l, 3)
                                                                  if blows and fvc_l is not None else None)}
    valid = False
    if not blows and summaries:
        valid = True
        if device_summary_acceptable:
            notes.append("FVC from the device's own session summary (no manoeuvres received; quality grade unknown), "
                         "accepted by the site setting device_summary_acceptable")
        else:
            result["grade_review"] = ("FVC is the device's own session summary (no manoeuvres received): its ATS/ERS quality "
                                      "grade is unknown; confirm it from the device report, or send the manoeuvres")
    if blows:
        g = a.fvc.grade
        if a.fvc.reported_basis == "acceptable" and g in fvc_grades:
            valid = True
        elif a.fvc.reported_basis == "acceptable" and g in fvc_grades_review:
            valid = True
            result["grade_review"] = (f"FVC grade {g} is accepted only by the site rule (fvc_grades_review); "
                                      f"ATS/ERS 2019 repeatable grades are {', '.join(fvc_grades)}")
        elif a.fvc.reported_basis == "acceptable":
            notes.append(f"FVC grade {g}: {_grade_gap(a.fvc.n_acceptable, a.fvc.repeatability_diff_ml)}; "
                         f"the criterion needs grade {', '.join(fvc_grades)}; more attempts needed")
        else:
            notes.append(f"no acceptable FVC manoeuvre (grade {g}); more attempts needed")

    if fvc_l is not None:
        if inputs.missing or inputs.problems:
            if inputs.missing:
                notes.append(f"% predicted not computed: {', '.join(inputs.missing)} not recorded")
            notes.extend(inputs.problems)
        else:
            other = gli.GLI_2012 if equation == gli.GLI_GLOBAL_2022 else gli.GLI_GLOBAL_2022
            try:
                preds = {eq: gli.predict(inputs.sex, inputs.age_years, inputs.height_cm, equation=eq,  # type: ignore[arg-type]
                                         ethnicity=ethnicity_2012 if eq == gli.GLI_2012 else None, fvc_l=fvc_l, fev1_l=fev1_l)
                         for eq in (equation, other)}
                lower = gli.predict(inputs.sex, inputs.age_years, inputs.height_cm, equation=equation,  # type: ignore[arg-type]
                                    ethnicity=ethnicity_2012 if equation == gli.GLI_2012 else None, fvc_l=fvc_l,
                                    spline_lookup="lower_row")
            except gli.SpirometryReferenceError as exc:
                result["prediction_refused"] = str(exc)
                notes.append(f"% predicted refused: {exc}")
            else:
                result["prediction"] = prediction_record(preds[equation])
                result["other_prediction"] = prediction_record(preds[other])
                p1 = preds[equation].fvc.percent_predicted
                p2 = preds[other].fvc.percent_predicted
                result["equation_decides"] = (p1 >= threshold_pct) != (p2 >= threshold_pct)  # type: ignore[operator]
                p3 = lower.fvc.percent_predicted
                result["lower_row_fvc_pct_predicted"] = p3
                result["interpolation_decides"] = (p1 >= threshold_pct) != (p3 >= threshold_pct)  # type: ignore[operator]
    result["valid"] = valid
    result["manoeuvre_type"] = "FVC" if blows else ("SVC" if "SVC" in types else None)
    result["fvc_l"], result["fev1_l"] = fvc_l, fev1_l
    result["note"] = "; ".join(notes)
    return result


# --------------------------------------------------------------------------- results


def insert_result(conn: sqlite3.Connection, session_id: int, result: Mapping[str, Any], *, at: float) -> int:
    p, o = result.get("prediction") or {}, result.get("other_prediction") or {}
    inputs = result["inputs"]
    cur = conn.execute(
        "INSERT INTO spirometry_results (session_id, computed_utc, valid, equation, ethnicity, sex, age_years, height_cm, fvc_l,"
        " fev1_l, predicted_fvc_l, lln_fvc_l, z_fvc, fvc_pct_predicted, other_equation, other_fvc_pct_predicted, grade_fvc,"
        " grade_fev1, result_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (session_id, utc_iso(at), int(bool(result["valid"])), result["equation"],
         p.get("ethnicity") if p else (result["ethnicity_2012"] if result["equation"] == gli.GLI_2012 else None),
         inputs["sex"], inputs["age_years"], inputs["height_cm"], result["fvc_l"], result["fev1_l"],
         p.get("predicted_fvc_l"), p.get("lln_fvc_l"), p.get("z_fvc"), p.get("percent_predicted_fvc"),
         o.get("equation"), o.get("percent_predicted_fvc"),
         (result.get("fvc") or {}).get("grade"), (result.get("fev1") or {}).get("grade"),
         json.dumps(result, sort_keys=True)),
    )
    return repo.inserted_id(cur)


def latest_result_row(conn: sqlite3.Connection, session_id: int) -> dict[str, Any] | None:
    """The session's newest result row as stored (``result_json`` still text)."""
    return repo._row(conn, "SELECT * FROM spirometry_results WHERE session_id = ? ORDER BY id DESC LIMIT 1", (session_id,))


def latest_results_of_subject(conn: sqlite3.Connection, subject_id: str) -> dict[int, dict[str, Any]]:
    """Session ID -> newest result row of each of the subject's spirometry sessions that has one.

    Empty when the table is missing (a database made without the spirometry feature)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spirometry_results'").fetchone() is None:
        return {}
    rows = repo._rows(
        conn,
        "SELECT r.* FROM spirometry_results r JOIN sessions s ON s.id = r.session_id WHERE s.subject_id = ? AND r.id = "
        "(SELECT MAX(id) FROM spirometry_results WHERE session_id = r.session_id)", (subject_id,))
    return {r["session_id"]: r for r in rows}


def latest_result(conn: sqlite3.Connection, session_id: int) -> dict[str, Any] | None:
    row = latest_result_row(conn, session_id)
    if row is not None:
        row["result"] = json.loads(row.pop("result_json"))
    return row


def recompute(conn: sqlite3.Connection, session_id: int, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate a session from what is stored (read-only; the caller stores the result)."""
    session = repo.get_session(conn, session_id)
    inputs = subject_inputs(conn, session["subject_id"], session["started_utc"])
    return evaluate(load_manoeuvres(conn, session_id), inputs, **evaluation_settings(settings))


def _grade_gap(n_acceptable: int, diff_ml: int | None) -> str:
    if n_acceptable < 2:
        return f"{n_acceptable} acceptable blow, not repeatable"
    return f"the two largest acceptable FVCs differ by {diff_ml} mL, not repeatable"


def _grades(cfg: Mapping[str, Any], key: str, default: Sequence[str]) -> tuple[str, ...]:
    raw = cfg.get(key, list(default))
    if not isinstance(raw, (list, tuple)) or not all(isinstance(g, str) and g.upper() in ALL_GRADES for g in raw):
        raise ValueError(f"[spirometry] {key} must be a list of ATS/ERS grades (A-F, U), got {raw!r}")
    return tuple(g.upper() for g in raw)


def evaluation_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate` from the ``[spirometry]`` config table."""
    # ``equation`` and ``fvc_threshold_pct`` are the keys eligibility reads too: one value for both screens.
    return {"equation": cfg.get("equation", gli.DEFAULT_EQUATION),
            "ethnicity_2012": cfg.get("ethnicity_2012", "other"),
            "threshold_pct": float(cfg.get("fvc_threshold_pct", 50.0)),
            "quality_codes": dict(cfg.get("quality_codes", {})),
            "fvc_grades": _grades(cfg, "fvc_grades", FVC_GRADES),
            "fvc_grades_review": _grades(cfg, "fvc_grades_review", ()),
            "device_summary_acceptable": bool(cfg.get("device_summary_acceptable", False)),
            "hesitation_fails": bool(cfg.get("hesitation_fails", False))}


def session_detail(conn: sqlite3.Connection, session_id: int) -> dict[str, Any]:
    """Everything ``spirometry show`` and the API report for one session (curves summarised)."""
    session = repo.get_session(conn, session_id)
    if session["kind"] != "spirometry":
        from collector.errors import InvalidInput

        raise InvalidInput(f"session {session_id} is a {session['kind']} session, not spirometry; use collector session list")
    device = repo._row(conn, "SELECT protocol, address, model FROM devices WHERE id = ?", (session["device_id"],)) \
        if session["device_id"] is not None else None
    manoeuvres = load_manoeuvres(conn, session_id)
    for m in manoeuvres:
        m["curves"] = [{"kind": c["kind"], "points": len(c.get("x", []))} for c in m["curves"]]
    events = [{**e, "detail": json.loads(e.pop("detail_json") or "{}")} for e in repo.session_events(conn, session_id)]
    session["settings"] = json.loads(session.pop("settings_json") or "{}")
    return {
        "session": session,
        "device": device,
        "manoeuvres": manoeuvres,
        "observations": observation_rows(conn, session_id),
        "messages": message_rows(conn, session_id),
        "result": latest_result(conn, session_id),
        "events": events,
        "gaps": repo.session_gaps(conn, session_id),
    }

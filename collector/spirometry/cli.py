"""``collector spirometry show|recompute`` and ``collector predict``.

These read (and for ``recompute`` write) the database directly, so they work
whether or not the daemon runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from collector.context import no_login, requires
from collector.errors import InvalidInput
from collector.limit_text import limit_text
from collector.users.roles import INVESTIGATOR, TECHNICIAN
from collector.output import emit_json
from collector.spirometry import equations
from collector.spirometry.codes import IMPORT_FORMATS


def _f(v: Any, fmt: str = ".2f", none: str = "--") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, fmt)


@click.group("spirometry")
def spirometry() -> None:
    """Spirometry sessions: manoeuvres, ATS/ERS quality, % predicted."""


@spirometry.command("show")
@click.argument("session_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@click.pass_obj
@no_login("reads only")
def show(c: Any, session_id: int, as_json: bool) -> None:
    """Manoeuvres with their acceptability and reasons, grades, chosen FVC and % predicted."""
    from collector.spirometry import store  # numpy and the equations: loaded by the commands that use them

    conn = c.conn()
    try:
        d = store.session_detail(conn, session_id)
    finally:
        conn.close()
    if as_json:
        emit_json(d)
        return
    for line in render(d):
        click.echo(line)


def render(d: dict[str, Any]) -> list[str]:
    """Human-readable lines of a session detail (no identifying data: none is stored)."""
    s, dev = d["session"], d["device"] or {}
    settings = s.get("settings") or {}
    out = [f"session {s['id']}: spirometry for subject {s['subject_id']}, {s['state']}, started {s['started_utc']}"
           f"{', stopped ' + s['stopped_utc'] if s.get('stopped_utc') else ''}; {settings.get('protocol', dev.get('protocol'))} "
           f"model {settings.get('model', dev.get('model'))}"]
    res = (d.get("result") or {}).get("result") or {}
    judged = {m["row_id"]: m for m in res.get("manoeuvres", [])}
    skipped = {m["row_id"]: m for m in res.get("not_assessed", [])}
    out.append("")
    out.append(f"{'#':>3} {'try':>3} {'type':4} {'FVC L':>6} {'FEV1 L':>6} {'ratio':>5} {'PEF':>5} {'BEV L':>5} {'FET s':>5}  "
               f"{'FVC':11} {'FEV1':11} reasons / device codes")
    for m in d["manoeuvres"]:
        j = judged.get(m["id"])
        num = "best" if m["is_summary"] else ("" if m["number"] is None else str(m["number"]))
        line = (f"{num:>3} {(str(j['attempt']) if j else ''):>3} {(m['manoeuvre_type'] or ''):4} {_f(m['fvc_l']):>6} "
                f"{_f(m['fev1_l']):>6} {_f(m['fev1_fvc']):>5} {_f(m['pef_l_s'], '.1f'):>5} {_f(m['bev_l']):>5} "
                f"{_f(m['fet_s'], '.1f'):>5}  ")
        if j and "fvc" in j:
            reasons = sorted(set(j["fvc"]["reasons"]) | set(j["fev1"]["reasons"]))
            line += f"{j['fvc']['status']:11} {j['fev1']['status']:11} {', '.join(reasons) or '-'}"
        elif m["id"] in skipped:
            line += f"{'not judged':23} {skipped[m['id']]['reason']}"
        else:
            line += f"{'':23} (not yet assessed)"
        if j and j.get("warnings"):
            line += f"  (warning: {', '.join(j['warnings'])})"
        if m["device_quality"]:
            line += f"  [device: {', '.join(map(str, m['device_quality']))}]"
        out.append(line)
    if not d["manoeuvres"]:
        out.append("  (no manoeuvres received yet)")
    out.append("")
    for name in ("fvc", "fev1"):
        o = res.get(name)
        if not o:
            continue
        rep = "none" if o["reported_l"] is None else (
            f"{o['reported_l']:.2f} L from {o['reported_basis']} manoeuvre {o['reported_from_number'] or o['reported_from_attempt']}")
        diff = "n/a" if o["repeatability_diff_ml"] is None else f"{o['repeatability_diff_ml'] / 1000:.3f} L"
        out.append(f"{name.upper():4}: grade {o['grade']}, {o['n_acceptable']} acceptable + {o['n_usable']} usable only, "
                   f"two largest differ by {diff} (tolerance {o['repeatability_tolerance_ml'] / 1000:.3f} L); reported {rep}")
    if res.get("more_attempts_needed"):
        out.append(f"more attempts needed: {', '.join(res.get('more_attempts_reasons', []))}")
    elif res.get("more_attempts_reasons"):
        out.append(f"session incomplete: {', '.join(res['more_attempts_reasons'])}")
    if res.get("fvc_basis") == "device_summary":
        review = "accepted by the site setting" if res.get("device_summary_acceptable") else "NEEDS REVIEW"
        out.append(f"FVC from the device's own session summary (no manoeuvres received): quality grade unknown, {review}")
    elif (ds := res.get("device_summary")) and ds.get("differs_from_manoeuvres_l") is not None:
        out.append(f"device summary FVC {ds['fvc_l']:.2f} L (ours from the manoeuvres differs by {ds['differs_from_manoeuvres_l']:+.3f} L;"
                   " ours decides)")
    thr = res.get("threshold_pct")
    p, o = res.get("prediction"), res.get("other_prediction")
    if p:
        eth = f", {p['ethnicity']}" if p.get("ethnicity") else ""
        out.append(f"FVC {p['fvc_l']:.2f} L = {limit_text(p['percent_predicted_fvc'], thr, 'ge', 1)} % predicted ({p['equation']}{eth}): predicted "
                   f"{p['predicted_fvc_l']:.2f} L, LLN {p['lln_fvc_l']:.2f} L, z {p['z_fvc']:.2f}"
                   f" (age {p['age_years']:.1f} y, {p['height_cm']:g} cm, {p['sex']})")
        if p.get("percent_predicted_fev1") is not None:
            out.append(f"FEV1 {p['fev1_l']:.2f} L = {p['percent_predicted_fev1']:.1f} % predicted, z {p['z_fev1']:.2f}; "
                       f"FEV1/FVC {p['fev1_fvc']:.2f} (LLN {p['lln_fev1_fvc']:.2f}, z {p['z_fev1_fvc']:.2f})")
    if o:
        eth = f", {o['ethnicity']}" if o.get("ethnicity") else ""
        flag = f"  -> the equation decides at {res['threshold_pct']:g} %: NEEDS REVIEW" if res.get("equation_decides") else ""
        out.append(f"other equation ({o['equation']}{eth}): {limit_text(o['percent_predicted_fvc'], thr, 'ge', 1)} % predicted{flag}")
    if res.get("lower_row_fvc_pct_predicted") is not None:
        flag = f"  -> on the other side of {thr:g} %: NEEDS REVIEW" if res.get("interpolation_decides") else ""
        out.append(f"GLI splines at the lower quarter-year row (no interpolation): "
                   f"{limit_text(res['lower_row_fvc_pct_predicted'], thr, 'ge', 1)} % predicted{flag}")
    if res:
        out.append(f"valid: {'yes' if res.get('valid') else 'NO'}{('  (' + res['note'] + ')') if res.get('note') else ''}")
    else:
        out.append("no result yet")
    for rule in (res.get("rules") or {}).values():
        out.append(f"rule: {rule}")
    obs = d.get("observations") or []
    if obs:
        out.append("")
        out.append(f"observations as the device sent them ({len(obs)}; mapped ones name their parameter):")
        for ob in obs:
            ref = f"  ref {ob['ref_text']}" if ob.get("ref_text") else ""
            flags = f"  flags {ob['abnormal_flags']}" if ob.get("abnormal_flags") else ""
            label = f" {ob['text']}" if ob.get("text") else ""
            unit = f" {ob['unit']}" if ob.get("unit") else ""
            out.append(f"  group {ob['grp']}: {ob['code']}{label} = {ob['value']}{unit}{ref}{flags}"
                       f"  -> {ob['mapped_to'] or 'not mapped (kept)'}")
    refused = [e for e in d["events"] if e["kind"] == "spirometry_refused"]
    for e in refused:
        out.append(f"refused from the device: {e['detail'].get('reason')}"
                   f"{' at ' + e['detail']['location'] if e['detail'].get('location') else ''}")
    for g in d["gaps"]:
        out.append(f"gap ({g['cause']}): {g['start_utc_ms']} -> {g['end_utc_ms'] if g['end_utc_ms'] is not None else 'open'} ms")
    return out


@spirometry.command("recompute")
@click.argument("session_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the recomputed result as JSON.")
@click.pass_obj
@requires(TECHNICIAN, INVESTIGATOR)
def recompute(c: Any, session_id: int, as_json: bool) -> None:
    """Re-evaluate a session from its stored manoeuvres and the current facts (after recording sex/height/birth date)."""
    from collector.clock import SystemClock
    from collector.storage import audit, repo
    from collector.storage.db import transaction
    from collector.spirometry import store

    conn = c.conn()
    now = SystemClock().now()
    try:
        session = repo.get_session(conn, session_id)
        if session["kind"] != "spirometry":
            raise InvalidInput(f"session {session_id} is a {session['kind']} session, not spirometry")
        result = store.recompute(conn, session_id, c.config.get("spirometry") or {})
        with transaction(conn):
            rid = store.insert_result(conn, session_id, result, at=now)
            audit.append(conn, at=now, actor=c.by, action="spirometry_result", subject_id=session["subject_id"],
                         session_id=session_id, new={"result_id": rid, "valid": result["valid"], "equation": result["equation"],
                                                     "fvc_pct_predicted": (result.get("prediction") or {}).get("percent_predicted_fvc")},
                         reason="recomputed on request")
        if as_json:
            emit_json(result)
            return
        for line in render(store.session_detail(conn, session_id)):
            click.echo(line)
    finally:
        conn.close()


@spirometry.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--subject", "subject_id", required=True, help="Subject's screening ID (pseudonym, never a name).")
@click.option("--format", "fmt", required=True, type=click.Choice(list(IMPORT_FORMATS)),
              help="hl7: one ORU^R01 message; gdt: one 6310 record; ndd-xml: ndd EasyWare/EasyOne Connect XML; "
                   "csv: the collector's trial layout (docs/spirometry-vendors.md).")
@click.option("--model", help="Spirometer model whose code map reads the file (hl7/gdt; default the protocol's default model).")
@click.option("--json", "as_json", is_flag=True, help="Print the new session and its result as JSON.")
@click.pass_obj
@requires(TECHNICIAN)
def import_cmd(c: Any, file: Path, subject_id: str, fmt: str, model: str | None, as_json: bool) -> None:
    """Import a spirometry session from a vendor export file: manoeuvres or summary, judged like a live session."""
    from collector.clock import SystemClock
    from collector.spirometry import store
    from collector.spirometry.files import MAX_FILE_BYTES, import_file
    from collector.spirometry.service import resolve_model

    cfg = c.config.get("spirometry") or {}
    m = resolve_model(cfg, fmt, model) if fmt in ("hl7", "gdt") else None
    if model is not None and m is None:
        raise InvalidInput(f"--model applies to --format hl7 or gdt, not {fmt}")
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise InvalidInput(f"{file} is larger than {MAX_FILE_BYTES // 1_000_000} MB: not one spirometry export")
        raw = file.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror}; check the path and permissions") from None
    conn = c.conn()
    try:
        out = import_file(conn, raw, fmt, subject_id=subject_id, by=c.by, at=SystemClock().now(), cfg=cfg, model=m)
        if as_json:
            emit_json(out)
            return
        click.echo(f"session {out['session_id']}: imported {out['manoeuvres']} manoeuvre(s)"
                   f"{' and the device summary' if out['summaries'] else ''} ({fmt}) for subject {subject_id}")
        for d in out["disagreements"]:
            click.echo(f"  trial {d['number']}: the device says {'acceptable' if d['device_acceptable'] else 'not acceptable'}, "
                       f"ATS/ERS 2019 says {d['ours']} ({', '.join(d['our_reasons']) or 'no reason'}): event recorded")
        for line in render(store.session_detail(conn, out["session_id"])):
            click.echo("  " + line if line else line)
    finally:
        conn.close()


@click.command("predict")
@click.option("--sex", type=click.Choice(["female", "male"]), required=True, help="Sex for the GLI reference equations.")
@click.option("--age", "age", type=float, required=True, help="Age in decimal years.")
@click.option("--height-cm", "height_cm", type=float, required=True, help="Standing height in cm.")
@click.option("--fvc-l", "fvc_l", type=float, help="Measured FVC (L) for z-score and % predicted.")
@click.option("--fev1-l", "fev1_l", type=float, help="Measured FEV1 (L).")
@click.option("--equation", type=click.Choice(list(equations.EQUATIONS)), default=None,
              help="Reference equation (default from config [spirometry] equation: gli-global-2022).")
@click.option("--ethnicity", type=click.Choice(list(equations.ETHNICITIES)), default=None,
              help="GLI-2012 ethnic group (default from config [spirometry] ethnicity_2012: other).")
@click.option("--json", "as_json", is_flag=True, help="Print the predicted values as JSON.")
@click.pass_obj
@no_login("computes only")
def predict(c: Any, sex: str, age: float, height_cm: float, fvc_l: float | None, fev1_l: float | None,
            equation: str | None, ethnicity: str | None, as_json: bool) -> None:
    """GLI predicted values, LLN, z-scores and % predicted for one person (never extrapolated)."""
    from collector.spirometry import gli, store

    cfg = (c.config.get("spirometry") if c is not None else None) or {}
    equation = equation or cfg.get("equation", equations.DEFAULT_EQUATION)
    if equation == equations.GLI_GLOBAL_2022 and ethnicity is not None:
        raise InvalidInput("--ethnicity applies to gli-2012 only (gli-global-2022 is race-neutral); add --equation gli-2012 or drop it")
    if equation == equations.GLI_2012 and ethnicity is None:
        ethnicity = cfg.get("ethnicity_2012", "other")
    try:
        p = gli.predict(sex, age, height_cm, equation=equation, ethnicity=ethnicity, fvc_l=fvc_l, fev1_l=fev1_l)
    except gli.SpirometryReferenceError as exc:
        raise InvalidInput(str(exc)) from None
    rec = store.prediction_record(p)
    if as_json:
        emit_json(rec)
        return
    click.echo(f"{p.equation}{', ' + p.ethnicity if p.ethnicity else ''}: {p.sex}, {p.age_years:g} y, {p.height_cm:g} cm")
    click.echo(f"{'':9} {'predicted':>9} {'LLN':>6} {'measured':>8} {'z':>6} {'% pred':>7}")
    for name, label, fmt in (("fvc", "FVC L", ".2f"), ("fev1", "FEV1 L", ".2f"), ("fev1_fvc", "FEV1/FVC", ".3f")):
        unit = "" if name == "fev1_fvc" else "_l"
        click.echo(f"{label:9} {_f(rec[f'predicted_{name}{unit}'], fmt):>9} {_f(rec[f'lln_{name}{unit}'], fmt):>6} "
                   f"{_f(rec[f'{name}{unit}'], fmt):>8} {_f(rec[f'z_{name}']):>6} {_f(rec[f'percent_predicted_{name}'], '.1f'):>7}")


COMMANDS = [spirometry, predict]

"""``collector report`` and ``collector import``: overnight reports on demand, and nights recorded elsewhere.

``report`` prints the stored (newest) report of a night.  A stopped night with no
stored report is computed and stored once; ``--recompute`` stores a new row with
the current configuration (both audited).  A night still open or interrupted is
computed on the fly and shown as provisional, never stored: its final report is
made when it is stopped.  The primary figure and the rule that decided are
printed first, then every variant and secondary figure with its definition.
"""

from __future__ import annotations

import math
from datetime import timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from collector.cli import Ctx, emit_json, pass_ctx
from collector.clock import SystemClock, utc_iso
from collector.errors import InvalidInput, StorageError
from collector.oximetry import store
from collector.storage import repo
from collector.storage.db import transaction

FINAL_STATES = ("stopped",)


# -- report data ---------------------------------------------------------------------------------
def get_report(c: Ctx, session_id: int, *, recompute: bool = False) -> dict[str, Any]:
    """The report of a night with how it was obtained (keys ``report``, ``report_id``, ``computed_utc``, ``stored``, ``provisional``)."""
    conn = c.conn()
    session = repo.get_session(conn, session_id)
    if session["kind"] != "night":
        raise InvalidInput(f"session {session_id} is a {session['kind']} session, not a night; use collector spirometry show {session_id}")
    base = {"session": session}
    if session["state"] not in FINAL_STATES:
        report = store.compute_report(conn, session_id, c.config)
        return {**base, "report": report, "report_id": None, "computed_utc": utc_iso(SystemClock().now()),
                "stored": False, "provisional": True}
    existing = store.latest_report_row(conn, session_id)
    if existing is not None and not recompute:
        return {**base, **existing, "stored": True, "provisional": False}
    with transaction(conn):
        result = store.finalise(conn, session_id, c.config, at=SystemClock().now(), actor=c.by,
                                reason="collector report --recompute" if existing else "no stored report")
    return {**base, **result, "stored": True, "provisional": False}


# -- text ----------------------------------------------------------------------------------------
def pct_text(value: float | None, threshold: float | None = None) -> str:
    """A percentage with enough decimals that rounding never hides which side of the threshold it is on."""
    if value is None:
        return "n/a"
    for k in (2, 3, 4, 6, 9):
        s = f"{value:.{k}f}"
        if threshold is None or (float(s) > threshold) == (value > threshold):
            return s + " %"
    return f"{value!r} %"


def hms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = int(round(seconds))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _num(v: Any, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:{spec}}{unit}"


def _side(v: float | None, thr: float) -> str:
    if v is None:
        return ""
    return "above" if v > thr else "within"


def report_text(info: dict[str, Any]) -> list[str]:
    """Human-readable report: decision first, then every figure with its definition."""
    r = info["report"]
    d = r["definitions"]
    s = info["session"]
    thr = float(d["threshold_pct"])
    out: list[str] = []
    out.append(f"Night report: session {s['id']}, subject {s['subject_id']}, origin {s['origin']}, session {s['state']}")
    if info["provisional"]:
        out.append(f"PROVISIONAL (session is {s['state']}; computed now, not stored; the final report is made when it is stopped)")
    else:
        out.append(f"Report #{info['report_id']} computed {info['computed_utc']}")
    if r.get("start_s") is not None:
        out.append(f"Recorded {utc_iso(r['start_s'])} to {utc_iso(r['end_s'])} ({r['n_samples']} samples, {r['n_usable_samples']} usable)")
    out.append("")
    t90 = r["t90_pct"]
    decision = r["decision"]
    if decision == "pass":
        out.append(f"DECISION: PASS - meets the T90 criterion: T90 {pct_text(t90, thr)} <= {thr:g} % of analysed time")
    elif decision == "fail":
        out.append(f"DECISION: FAIL - does not meet the T90 criterion: T90 {pct_text(t90, thr)} > {thr:g} % of analysed time")
    else:
        reasons = {
            "analysed_time_below_minimum": f"analysed {r['analysed_s'] / 3600:.2f} h < {d['min_analysed_h']:g} h",
            "analysed_pct_below_minimum": f"analysed {_num(r['analysed_pct'], '.1f', ' %')} of recording < {d['min_analysed_pct']:g} %",
        }
        why = "; ".join(reasons.get(x, x) for x in r["night_invalid_reasons"])
        out.append(f"DECISION: INVALID NIGHT - neither pass nor fail, repeat the night ({why}); T90 would be {pct_text(t90, thr)}")
    if r["borderline"]:
        names = {"inclusive_le90": f"T90 with <= 90 is {pct_text(r['t90_pct_inclusive'], thr)}",
                 "pct_of_recording": f"T90 as % of recording time is {pct_text(r['t90_pct_of_recording'], thr)}"}
        out.append("BORDERLINE - needs investigator review: " + "; ".join(names.get(v, v) for v in r["borderline_variants"])
                   + f", on the other side of {thr:g} % (the primary figure still decides)")
    else:
        out.append(f"Borderline: no (every T90 variant is on the same side of {thr:g} %)")
    out.append(f"Night valid: {'yes' if r['night_valid'] else 'NO'} (needs >= {d['min_analysed_h']:g} h analysed and "
               f">= {d['min_analysed_pct']:g} % of recording analysed)")
    if r.get("needs_review"):
        out.append("Needs review: " + ", ".join(r["review_reasons"]))
    out.append("")
    out.append(f"Definition {d['t90']}: below 90 means SpO2 < 90 strictly; each usable sample is held until the next")
    out.append(f"  (at most {d['max_hold_s']:g} s, never across a disconnect); gaps count in neither numerator nor denominator;")
    out.append(f"  usable = {d['usable_sample']}; pass rule: {d['pass_rule']}.")
    out.append("")
    out.append("Time")
    out.append(f"  recording            {hms(r['recording_s'])}  ({r['recording_s'] / 3600:.2f} h, first to last sample)")
    out.append(f"  analysed             {hms(r['analysed_s'])}  ({r['analysed_s'] / 3600:.2f} h, {_num(r['analysed_pct'], '.1f', ' %')} of recording)")
    g = r["gaps"]
    causes = ", ".join(f"{k} {v['count']}x {hms(v['total_s'])}" for k, v in g["by_cause"].items()) or "none"
    out.append(f"  gaps                 {g['count']} totalling {hms(g['total_s'])}, longest {hms(g['longest_s'])}; by cause: {causes}")
    out.append("T90 (time with SpO2 below 90 %)")
    out.append(f"  primary              {pct_text(t90, thr):>10} of analysed time ({hms(r['t90_s'])})  <- decides")
    out.append(f"  of recording time    {pct_text(r['t90_pct_of_recording'], thr):>10}  ({_side(r['t90_pct_of_recording'], thr)} {thr:g} %)")
    out.append(f"  inclusive (<= 90)    {pct_text(r['t90_pct_inclusive'], thr):>10}  ({_side(r['t90_pct_inclusive'], thr)} {thr:g} %; "
               f"{hms(r['t90_s_inclusive'])})")
    out.append("Other SpO2 figures (time-weighted over analysed time; not criteria)")
    out.append(f"  nadir {_num(r['nadir_spo2'], 'g', ' %')}, sustained nadir (held >= {d['sustained_nadir_min_s']:g} s) "
               f"{_num(r['sustained_nadir_spo2'], 'g', ' %')}, mean {_num(r['mean_spo2'], '.1f', ' %')}, median {_num(r['median_spo2'], 'g', ' %')}")
    out.append(f"  T88 {pct_text(r['t88_pct'])} ({hms(r['t88_s'])}), T85 {pct_text(r['t85_pct'])} ({hms(r['t85_s'])}), "
               f"T80 {pct_text(r['t80_pct'])} ({hms(r['t80_s'])}); longest run <= 88 %: {hms(r['longest_run_le88_s'])}")
    a = r["odi_algorithm"]
    out.append(f"  ODI3 {_num(r['odi3_per_h'], '.1f', '/h')} ({r['odi3_events']} events), ODI4 {_num(r['odi4_per_h'], '.1f', '/h')} "
               f"({r['odi4_events']} events) per analysed hour; algorithm {a['name']}: baseline {a['baseline']}, "
               f"{a['window_s']:g} s window, events {a['min_event_s']:g}-{a['max_event_s']:g} s")
    out.append(f"  pulse min/mean/max {_num(r['pulse_min'], 'g')}/{_num(r['pulse_mean'], '.1f')}/{_num(r['pulse_max'], 'g')} bpm")
    out.append("  SpO2 histogram: " + ", ".join(f"{b['band']} % {pct_text(b['pct'])}" for b in r["spo2_histogram"]))
    deep = r.get("suspected_deep_desaturation") or []
    if deep:
        out.append(f"Suspected deep desaturations (invalid readings right after a falling SpO2 < 80 %; review): {len(deep)}")
        for ev in deep[:10]:
            out.append(f"  {utc_iso(ev['start_s'])}  {hms(ev['duration_s'])}  last valid SpO2 {ev['last_valid_spo2']:g} %")
        if len(deep) > 10:
            out.append(f"  ... {len(deep) - 10} more (see --json)")
    else:
        out.append("Suspected deep desaturations: none")
    return out


# -- picture -------------------------------------------------------------------------------------
def _zone(name: str | None) -> tzinfo:
    if not name:
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"--tz {name!r} is not a known IANA time zone; use a name like Europe/Berlin") from None


def write_png(c: Ctx, info: dict[str, Any], path: Path, tz: tzinfo = timezone.utc) -> Path:
    """Draw the night with the parameters its report was computed with (title: pseudonym and session only)."""
    from collector.oximetry.analysis.plot import plot_night
    from collector.oximetry.analysis.report import AnalysisConfig

    d = info["report"]["definitions"]
    cfg = AnalysisConfig(max_hold_s=float(d["max_hold_s"]), threshold_pct=float(d["threshold_pct"]),
                         min_analysed_h=float(d["min_analysed_h"]), min_analysed_pct=float(d["min_analysed_pct"]))
    s = info["session"]
    title = f"Overnight oximetry - subject {s['subject_id']} - session {s['id']}"
    if s["origin"] != "live":
        title += f" ({s['origin']})"
    if info["provisional"]:
        title += " (PROVISIONAL)"
    data = store.load_night(c.conn(), s["id"])
    try:
        return plot_night(data, info["report"], path, config=cfg, title=title, tz=tz)
    except OSError as exc:
        raise StorageError(f"cannot write the picture to {path}: {exc}; choose another path") from None


# -- commands ------------------------------------------------------------------------------------
@click.command("report")
@click.argument("session_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (stable keys, see README).")
@click.option("--png", "png", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the night (A4) to this PNG/PDF file.")
@click.option("--tz", "tz_name", help="Time zone for the picture's time axis (IANA name; default UTC).")
@click.option("--recompute", is_flag=True, help="Recompute from the stored samples with the current config and store it (audited).")
@pass_ctx
def report_cmd(c: Ctx, session_id: int, as_json: bool, png: Path | None, tz_name: str | None, recompute: bool) -> None:
    """The overnight report of night SESSION_ID (the stored one; computed if none is stored)."""
    tz = _zone(tz_name)
    info = get_report(c, session_id, recompute=recompute)
    if png is not None:
        write_png(c, info, png, tz)
    if as_json:
        s = info["session"]
        emit_json({**info["report"], "session_id": s["id"], "subject_id": s["subject_id"], "origin": s["origin"],
                   "report_id": info["report_id"], "computed_utc": info["computed_utc"], "stored": info["stored"],
                   "provisional": info["provisional"], **({"png": str(png)} if png is not None else {})})
        return
    for line in report_text(info):
        click.echo(line)
    if png is not None:
        click.echo(f"\npicture written to {png}")


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--subject", "subject_id", required=True, help="Subject's screening ID (pseudonym, never a name).")
@click.option("--format", "fmt", required=True, type=click.Choice(["csv", "o2ring-csv", "edf"]),
              help="csv: time,spo2[,pulse]; o2ring-csv: Wellue/ViHealth export; edf: EDF/EDF+ with an SpO2 channel.")
@click.option("--start", "start", help="csv with seconds-from-start times: the start as UTC ISO-8601 (2025-03-06T22:20:56Z).")
@click.option("--tz", "tz_name", help="o2ring-csv/edf: IANA zone the device clock was set to (e.g. Europe/Berlin).")
@click.option("--utc-offset", "utc_offset", help="o2ring-csv/edf: the device clock's offset from UTC instead of --tz (e.g. +01:00).")
@click.option("--channel", help="edf: label of the SpO2 channel (default: first labelled SpO2/SaO2, else unit %).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def import_cmd(c: Ctx, file: Path, subject_id: str, fmt: str, start: str | None, tz_name: str | None,
               utc_offset: str | None, channel: str | None, as_json: bool) -> None:
    """Import a night recorded elsewhere as a new night session with its report."""
    from collector.oximetry.importers.ingest import import_night, parse_night

    repo.validate_subject_id(subject_id)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror}; check the path and permissions") from None
    night = parse_night(raw, fmt, start=start, tz=tz_name, utc_offset=utc_offset, channel=channel)
    conn = c.conn()
    result = import_night(conn, raw, night, subject_id=subject_id, by=c.by, at=SystemClock().now(), config=c.config)
    if as_json:
        emit_json(result)
        return
    src = result["source"]
    click.echo(f"session {result['session_id']}: imported {result['samples']} samples ({fmt}) for subject {subject_id}, "
               f"{utc_iso(float(night.t_utc_s[0]))} to {utc_iso(float(night.t_utc_s[-1]))}")
    clock = src.get("device_clock")
    if clock:
        click.echo(f"  device clock converted with UTC offset {clock['utc_offset']}" + (f" ({clock['tz']})" if clock.get("tz") else ""))
        if clock.get("note"):
            click.echo(f"  note: {clock['note']}")
    if src.get("spo2_channel"):
        click.echo(f"  SpO2 channel {src['spo2_channel']!r} (chosen by {src['spo2_channel_chosen_by']}), pulse channel {src.get('pulse_channel')!r}")
    info = {"session": repo.get_session(conn, result["session_id"]), "report": result["report"],
            "report_id": result["report_id"], "provisional": False}
    click.echo("  " + _decision_line(info["report"]))
    click.echo(f"  full report: collector report {result['session_id']}")


def _decision_line(r: dict[str, Any]) -> str:
    thr = float(r["definitions"]["threshold_pct"])
    verdict = {"pass": "PASS (meets the T90 criterion)", "fail": "FAIL (T90 criterion not met)",
               "invalid": "INVALID night (repeat it)"}[r["decision"]]
    return (f"T90 {pct_text(r['t90_pct'], thr)} of {r['analysed_s'] / 3600:.2f} h analysed "
            f"({_num(r['analysed_pct'], '.1f', ' %')} of recording): {verdict}" + ("; BORDERLINE, needs review" if r["borderline"] else ""))


COMMANDS = [report_cmd, import_cmd]

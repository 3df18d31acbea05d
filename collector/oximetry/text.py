"""A night's report as text: what the technician and the investigator read.

Kept apart from the commands so that every place that prints a night (``report``,
``import``, ``replay``, ``session stop``) says it the same way, and a value just
over the threshold is never printed as equal to it.
"""

from __future__ import annotations

import math
from typing import Any

from collector.clock import utc_iso
from collector.localtime import duration_text, local_time
from collector.limit_text import limit_text


def pct_text(value: float | None, threshold: float | None = None) -> str:
    """A percentage with enough decimals that rounding never hides which side of the threshold it is on
    (T90 passes at or below it; a value above it is never printed equal to it)."""
    if value is None:
        return "n/a"
    return limit_text(value, threshold, "le", 2) + " %"


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


MAX_BREAKS_LISTED = 40


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
    for step in r.get("clock_steps") or []:
        out.append(f"  host clock stepped by {step['step_s']:+.1f} s at {step['t_utc']} (wall clock {step['wall_utc']}); "
                   "samples kept the monotonic timeline, so durations are unchanged")
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
    tz = info.get("tz")
    if tz is not None:  # each interruption at the site's local time with its duration (the JSON keeps UTC seconds)
        breaks = g.get("breaks") or []
        for b in breaks[:MAX_BREAKS_LISTED]:
            out.append(f"    {local_time(b['start_s'], tz)} for {duration_text(b['duration_s'])} ({b['cause']})")
        if len(breaks) > MAX_BREAKS_LISTED:
            out.append(f"    ... and {len(breaks) - MAX_BREAKS_LISTED} more (--json lists every one)")
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


def decision_line(r: dict[str, Any]) -> str:
    """One line: T90, analysed time and the verdict (a night without samples says so)."""
    if not r.get("n_samples"):
        return "no samples were recorded in this night: it is INVALID (repeat it)"
    thr = float(r["definitions"]["threshold_pct"])
    verdict = {"pass": "PASS (meets the T90 criterion)", "fail": "FAIL (T90 criterion not met)",
               "invalid": "INVALID night (repeat it)"}[r["decision"]]
    return (f"T90 {pct_text(r['t90_pct'], thr)} of {r['analysed_s'] / 3600:.2f} h analysed "
            f"({_num(r['analysed_pct'], '.1f', ' %')} of recording): {verdict}" + ("; BORDERLINE, needs review" if r["borderline"] else ""))

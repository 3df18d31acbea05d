"""``collector report``, ``import`` and ``replay``: overnight reports on demand, nights recorded elsewhere, raw captures.

``report`` prints the stored (newest) report of a night.  A stopped night with no
stored report is computed and stored once; ``--recompute`` stores a new row with
the current configuration (both audited).  A night still open or interrupted is
computed on the fly and shown as provisional, never stored: its final report is
made when it is stopped.  The primary figure and the rule that decided are
printed first, then every variant and secondary figure with its definition.
"""

from __future__ import annotations

from datetime import timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from collector.context import Ctx, pass_ctx, requires
from collector.users.roles import INVESTIGATOR, TECHNICIAN
from collector.output import emit_json
from collector.clock import SystemClock, utc_iso
from collector.errors import InvalidInput, StorageError
from collector.oximetry.text import decision_line, report_text
from collector.storage import repo
from collector.storage.db import transaction

FINAL_STATES = ("stopped",)


# -- report data ---------------------------------------------------------------------------------
def get_report(c: Ctx, session_id: int, *, recompute: bool = False) -> dict[str, Any]:
    """The report of a night with how it was obtained (keys ``report``, ``report_id``, ``computed_utc``, ``stored``, ``provisional``)."""
    from collector.oximetry import store  # numpy and the analysis: only for commands that report

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


# -- picture -------------------------------------------------------------------------------------
def _zone(name: str | None) -> tzinfo:
    if not name:
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"--tz {name!r} is not a known IANA time zone; use a name like Europe/Berlin") from None


def write_png(c: Ctx, info: dict[str, Any], path: Path, tz: tzinfo = timezone.utc) -> Path:
    """Draw the night with the parameters its report was computed with (title: pseudonym and session only), in the
    reader's language (the logged-in operator's, else the site's)."""
    from collector.i18n import translator
    from collector.oximetry.analysis.plot import plot_night
    from collector.oximetry.analysis.report import AnalysisConfig
    from collector.oximetry import store

    d = info["report"]["definitions"]
    cfg = AnalysisConfig(max_hold_s=float(d["max_hold_s"]), threshold_pct=float(d["threshold_pct"]),
                         min_analysed_h=float(d["min_analysed_h"]), min_analysed_pct=float(d["min_analysed_pct"]))
    s = info["session"]
    conn = c.conn()
    lang = c.reader_language(conn)
    _ = translator(lang)
    title = _("Overnight oximetry: subject {subject}, session {session}").format(subject=s["subject_id"], session=s["id"])
    if s["origin"] != "live":
        title += f" ({s['origin']})"
    if info["provisional"]:
        title += _(" (PROVISIONAL)")
    data = store.load_night(conn, s["id"])
    try:
        return plot_night(data, info["report"], path, config=cfg, title=title, tz=tz, lang=lang)
    except OSError as exc:
        raise StorageError(f"cannot write the picture to {path}: {exc}; choose another path") from None


# -- commands ------------------------------------------------------------------------------------
@click.command("report")
@click.argument("session_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (stable keys, see README).")
@click.option("--png", "png", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the night (A4) to this PNG/PDF file.")
@click.option("--tz", "tz_name", help="Time zone for the picture's time axis and the gap times (IANA name; default the site's, [site] timezone).")
@click.option("--recompute", is_flag=True, help="Recompute from the stored samples with the current config and store it (audited).")
@pass_ctx
@requires(TECHNICIAN, INVESTIGATOR, when="recompute")
def report_cmd(c: Ctx, session_id: int, as_json: bool, png: Path | None, tz_name: str | None, recompute: bool) -> None:
    """The overnight report of night SESSION_ID (the stored one; computed if none is stored)."""
    tz = _zone(tz_name or str(c.config["site"]["timezone"]))
    info = get_report(c, session_id, recompute=recompute)
    if png is not None:
        write_png(c, info, png, tz)
    if as_json:
        s = info["session"]
        emit_json({**info["report"], "session_id": s["id"], "subject_id": s["subject_id"], "origin": s["origin"],
                   "report_id": info["report_id"], "computed_utc": info["computed_utc"], "stored": info["stored"],
                   "provisional": info["provisional"], **({"png": str(png)} if png is not None else {})})
        return
    for line in report_text({**info, "tz": tz}):
        click.echo(line)
    if png is not None:
        click.echo(f"\npicture written to {png}")


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--subject", "subject_id", required=True, help="Subject's screening ID (pseudonym, never a name).")
@click.option("--format", "fmt", required=True, type=click.Choice(["csv", "o2ring-csv", "o2ring-dat", "edf"]),
              help="csv: time,spo2[,pulse]; o2ring-csv: Wellue/ViHealth export; o2ring-dat: the O2Ring/Checkme O2's own "
                   "night file; edf: EDF/EDF+ with an SpO2 channel.")
@click.option("--start", "start", help="csv with seconds-from-start times: the start as UTC ISO-8601 (2025-03-06T22:20:56Z).")
@click.option("--tz", "tz_name", help="o2ring-csv/o2ring-dat/edf: IANA zone the device clock was set to (e.g. Europe/Berlin).")
@click.option("--utc-offset", "utc_offset", help="o2ring-csv/o2ring-dat/edf: the device clock's offset from UTC instead of --tz (e.g. +01:00).")
@click.option("--channel", help="edf: label of the SpO2 channel (default: first labelled SpO2/SaO2, else unit %).")
@click.option("--live-session", "live_session_id", type=int,
              help="The live night session this file was downloaded for (a night from the device's memory stays its own session, linked).")
@click.option("--json", "as_json", is_flag=True, help="Print the new session, its samples and report as JSON.")
@pass_ctx
@requires(TECHNICIAN)
def import_cmd(c: Ctx, file: Path, subject_id: str, fmt: str, start: str | None, tz_name: str | None,
               utc_offset: str | None, channel: str | None, live_session_id: int | None, as_json: bool) -> None:
    """Import a night recorded elsewhere as a new night session with its report."""
    from collector.oximetry.importers import ImportLimits
    from collector.oximetry.importers.ingest import import_night, parse_night

    repo.validate_subject_id(subject_id)
    limits = ImportLimits.from_config(c.config)
    try:
        limits.check_size(file.stat().st_size, fmt)  # before reading: a file of days is refused at once
        raw = file.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror}; check the path and permissions") from None
    night = parse_night(raw, fmt, start=start, tz=tz_name, utc_offset=utc_offset, channel=channel, limits=limits,
                        now_utc_s=SystemClock().wall())
    conn = c.conn()
    result = import_night(conn, raw, night, subject_id=subject_id, by=c.by, at=SystemClock().now(), config=c.config,
                          live_session_id=live_session_id)
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
    if src.get("truncated"):
        click.echo(f"  note: the file has {src['file_bytes']} bytes, its header says {src['header_file_size']}: "
                   "the copy or download stopped early; the records present were imported")
    fw = result.get("firmware_t90")
    if fw is not None:
        verdict = "agrees" if fw["agrees"] else f"DISAGREES by more than {fw['allowed_s']:g} s (event recorded for review)"
        click.echo(f"  device firmware's time under 90 %: {fw['firmware_t90_s']:g} s; ours {fw['ours_t90_s']:g} s: {verdict}")
    if live_session_id is not None:
        click.echo(f"  linked to live session {live_session_id}")
    info = {"session": repo.get_session(conn, result["session_id"]), "report": result["report"],
            "report_id": result["report_id"], "provisional": False}
    click.echo("  " + decision_line(info["report"]))
    click.echo(f"  full report: collector report {result['session_id']}")


@click.command("replay")
@click.argument("capture_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--subject", "subject_id", required=True, help="Subject's screening ID the replayed night is recorded for.")
@click.option("--device", help="Only this device's frames (required when the capture holds several beds).")
@click.option("--json", "as_json", is_flag=True, help="Print the replayed sessions as JSON.")
@pass_ctx
@requires(TECHNICIAN)
def replay_cmd(c: Ctx, capture_file: Path, subject_id: str, device: str | None, as_json: bool) -> None:
    """Feed a raw capture through the same decoders into a new night session (timestamps kept)."""
    from collector.oximetry.replay import replay_capture

    result = replay_capture(c.db_path, capture_file, subject_id, by=c.by, config=c.config, device=device)
    if as_json:
        emit_json(result)
        return
    for s in result["sessions"]:
        click.echo(f"session {s['session_id']}: {s['samples']} samples, {s['gaps']} gaps, {s['errors']} decode errors from device {s['device']}")
        if s.get("report"):
            click.echo("  " + decision_line(s["report"]))


COMMANDS = [report_cmd, import_cmd, replay_cmd]

"""The ``collector`` command line.

Commands that only read or record facts work on the database directly; commands
that need a device (starting and watching sessions) talk to the running daemon
through the local control API.  Every failure is one line on stderr saying
what is wrong and what to do, and a non-zero exit status.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Iterable

import click

from collector import __version__, features
from collector.clock import SystemClock, utc_iso
from collector.config import load_config
from collector.i18n import translator
from collector.errors import CollectorError, Conflict, DaemonUnavailable, InvalidInput, StorageError
from collector.context import Ctx, no_login, pass_ctx, requires
from collector.localtime import local_datetime, local_time, site_zone
from collector.output import emit_json, table
from collector.storage import audit, repo
from collector.storage.db import default_db_path, transaction
from collector.users.roles import ANY_ROLE, INVESTIGATOR, TECHNICIAN


def storage_problem(db: Any, exc: BaseException) -> str:
    """One line for a database that cannot be written or read, with what to check."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = {"readonly": "it is read-only: check the file's and folder's permissions",
            "full": "the disk is full: free space, then try again",
            "locked": "another program holds it: wait for it or stop it, then try again"}
    why = next((h for key, h in hint.items() if key in text.lower()), "check the file, its folder and the free disk space")
    return f"cannot use database {db} ({text}); {why}; nothing was changed"


class CollectorGroup(click.Group):
    """Turns CollectorError into one line + exit code (tracebacks only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CollectorError as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except sqlite3.Error as exc:  # read-only file, full disk, locked for too long: the database, not a bug
            db = ctx.obj.db_path if isinstance(ctx.obj, Ctx) else "the database"
            click.echo(f"error: {storage_problem(db, exc)}", err=True)
            ctx.exit(StorageError.exit_code)


@click.group(cls=CollectorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "db", type=click.Path(dir_okay=False, path_type=Path), envvar="COLLECTOR_DB",
              help="SQLite database file (default: $COLLECTOR_DB, else collector.sqlite in the user data directory).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), envvar="COLLECTOR_CONFIG",
              help="Site configuration file (TOML) overriding the packaged defaults (default: config.toml in the user data directory, if present).")
@click.option("--create", is_flag=True,
              help="Allow creating a new, empty database where one was used before and is now missing (deleted or moved).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(__version__, prog_name="collector")
@click.pass_context
def main(ctx: click.Context, db: Path | None, config_path: Path | None, create: bool, verbose: int) -> None:
    """Bedside collector for ALS trial screening: overnight oximetry, spirometry, eligibility.

    Commands that change anything act as the operator logged in with: collector login NAME.
    """
    os.umask(0o077)  # the database, its journals, tokens and exports: this user only (0600 files, 0700 directories)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(config_path)
    ctx.obj = Ctx(db_path=(db or default_db_path()).expanduser().resolve(), config=config, db_explicit=db is not None, create=create)


# -- subjects -----------------------------------------------------------------------------------
@main.group()
def subject() -> None:
    """Add and list subjects (pseudonymous screening IDs only)."""


@subject.command("add")
@click.argument("subject_id")
@click.option("--json", "as_json", is_flag=True, help="Print the new subject as JSON.")
@pass_ctx
@requires(TECHNICIAN, INVESTIGATOR)
def subject_add(c: Ctx, subject_id: str, as_json: bool) -> None:
    """Register SUBJECT_ID (e.g. SCR-0042); never a name."""
    now = SystemClock().now()
    row = c.write(lambda conn: repo.add_subject(conn, subject_id, by=c.by, at=now, pattern=c.config["site"]["subject_id_pattern"]))
    emit_json(row) if as_json else click.echo(f"subject {row['id']} added")


@subject.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the subjects as JSON.")
@pass_ctx
@no_login("reads only")
def subject_list(c: Ctx, as_json: bool) -> None:
    """List subjects."""
    rows = repo.list_subjects(c.conn())
    emit_json(rows) if as_json else table(rows, ["id", "created_utc", "created_by"])


# -- sessions -----------------------------------------------------------------------------------
@main.group()
def session() -> None:
    """Start, stop and inspect recording sessions."""


@session.command("start")
@click.option("--subject", "subject_id", required=True, help="Subject's screening ID.")
@click.option("--kind", type=click.Choice(["night", "spirometry"]), default="night", show_default=True,
              help="Overnight oximetry or a spirometry session.")
@click.option("--oximeter", help="Oximeter BLE address, macOS UUID or advertised name (night sessions).")
@click.option("--protocol", help="Device protocol if it cannot be told from the advertisement (plx, nonin, berrymed, o2ring; spirometers: hl7, gdt).")
@click.option("--spirometer", help="Spirometer port: /dev/ttyUSB0, COM3, or socket://host:port (spirometry sessions).")
@click.option("--model", help="Spirometer model from the config (port settings and code maps).")
@click.option("--gdt-dir", "gdt_dir", help="Spirometry through a GDT exchange folder instead of a port: the request is written "
              "there and result files are taken from it (default [spirometry] gdt_dir with --protocol gdt).")
@click.option("--json", "as_json", is_flag=True, help="Print the new session as JSON.")
@pass_ctx
@requires(TECHNICIAN)
def session_start(c: Ctx, subject_id: str, kind: str, oximeter: str | None, protocol: str | None,
                  spirometer: str | None, model: str | None, gdt_dir: str | None, as_json: bool) -> None:
    """Start a session; the daemon must be running (collector run)."""
    repo.validate_subject_id(subject_id)
    if kind == "night":
        if not oximeter:
            raise InvalidInput("a night session needs --oximeter ADDRESS (list what is in range with: collector scan)")
        body = {"subject_id": subject_id, "kind": "night", "oximeter": oximeter, "protocol": protocol}
    else:
        if spirometer and gdt_dir:
            raise InvalidInput("give either --spirometer PORT or --gdt-dir DIR, not both")
        spiro = c.config.get("spirometry") or {}
        if not spirometer and not gdt_dir and not (spiro.get("gdt_dir") and protocol in (None, "gdt")):
            raise InvalidInput("a spirometry session needs --spirometer PORT (e.g. /dev/ttyUSB0, COM3 or socket://127.0.0.1:5000)"
                               " or --gdt-dir DIR")
        if gdt_dir:
            gdt_dir = str(Path(gdt_dir).expanduser().resolve())  # the daemon may run in another directory
        body = {"subject_id": subject_id, "kind": "spirometry", "spirometer": spirometer, "protocol": protocol, "model": model,
                "gdt_dir": gdt_dir}
    info = c.client().post("/api/v1/sessions" if kind == "night" else "/api/v1/spirometry/sessions", body)
    if as_json:
        emit_json(info)
    else:
        click.echo(f"session {info['id']} started: {kind} for subject {info['subject_id']}; stop it with: collector session stop {info['id']}")


@session.command("stop")
@click.argument("session_id", type=int)
@click.option("--reason", help="Why it is stopped (recorded in the audit trail).")
@click.option("--json", "as_json", is_flag=True, help="Print the stopped session (and its night report) as JSON.")
@pass_ctx
@requires(TECHNICIAN)
def session_stop(c: Ctx, session_id: int, reason: str | None, as_json: bool) -> None:
    """Stop an open session (recording ends; the final report is computed)."""
    try:
        info = c.client().post(f"/api/v1/sessions/{session_id}/stop", {"reason": reason})
    except DaemonUnavailable:
        info = _stop_offline(c, session_id, reason)
    if as_json:
        emit_json(info)
        return
    click.echo(f"session {session_id} stopped")
    report = info.get("report")
    if report:
        from collector.oximetry.text import decision_line

        click.echo(decision_line(report))


def _stop_offline(c: Ctx, session_id: int, reason: str | None) -> dict[str, Any]:
    """The daemon is not running: close the session in the database and compute its report."""
    from collector.oximetry import store as night_store

    conn = c.conn()
    now = SystemClock().now()
    row = repo.get_session(conn, session_id)
    if row["state"] not in ("open", "interrupted"):
        raise Conflict(f"session {session_id} is not open (it is {row['state']}); nothing to stop")
    with transaction(conn):
        if row["state"] == "interrupted":
            repo.resume_session(conn, session_id, by=c.by, at=now)
        info = repo.close_session(conn, session_id, state="stopped", by=c.by, at=now, reason=reason or "stopped while the daemon was not running")
        if info["kind"] == "night":
            info["report"] = night_store.finalise(conn, session_id, c.config, at=now, actor=c.by,
                                                  reason="session stopped while the daemon was not running")["report"]
    return info


@session.command("list")
@click.option("--subject", "subject_id", help="Only this subject's sessions.")
@click.option("--state", type=click.Choice(["open", "stopped", "interrupted"]), help="Only sessions in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print the sessions as JSON.")
@pass_ctx
@no_login("reads only")
def session_list(c: Ctx, subject_id: str | None, state: str | None, as_json: bool) -> None:
    """List sessions."""
    rows = repo.list_sessions(c.conn(), subject_id, state)
    if as_json:
        emit_json(rows)
    else:
        tz = site_zone(c.config)
        shown = [{**r, "started": local_datetime(r.get("started_utc"), tz), "stopped": local_datetime(r.get("stopped_utc"), tz)}
                 for r in rows]
        table(shown, ["id", "subject_id", "kind", "state", "origin", "device_protocol", "started", "stopped", "samples"])


SAMPLE_FIELDS = ["host_utc", "device_time", "spo2_pct", "pulse_bpm", "pai_pct", "valid", "pulse_valid", "flags", "flag_names", "status_raw", "counter"]


def _sample_records(conn: Any, session_id: int) -> Iterable[dict[str, Any]]:
    from collector.oximetry import store as night_store
    from drivers.protocols.common import flag_names

    cur = night_store.iter_sample_rows(conn, session_id)
    for t_ms, dt, spo2, pulse, pai, valid, pvalid, flags, raw, counter in cur:
        yield {
            "host_utc": utc_iso(t_ms / 1000), "device_time": dt, "spo2_pct": spo2, "pulse_bpm": pulse, "pai_pct": pai,
            "valid": bool(valid), "pulse_valid": bool(pvalid), "flags": flags,
            "flag_names": flag_names(flags), "status_raw": raw, "counter": counter,
        }


@session.command("samples")
@click.argument("session_id", type=int)
@click.option("--csv", "fmt", flag_value="csv", default=True, help="CSV (default).")
@click.option("--json", "fmt", flag_value="json", help="JSON array.")
@pass_ctx
@no_login("reads only")
def session_samples(c: Ctx, session_id: int, fmt: str) -> None:
    """Every stored reading of a session: host UTC, device time, SpO2, pulse, validity, status flags."""
    conn = c.conn()
    repo.get_session(conn, session_id)
    records = _sample_records(conn, session_id)
    out = sys.stdout  # what click.get_text_stream("stdout") gave (deprecated in click 8.5)
    if fmt == "json":
        out.write("[")
        for i, rec in enumerate(records):
            out.write(("," if i else "") + "\n" + json.dumps(rec))
        out.write("\n]\n")
    else:
        writer = csv.DictWriter(out, fieldnames=SAMPLE_FIELDS, lineterminator="\n")
        writer.writeheader()
        for rec in records:
            writer.writerow(rec)


# -- daemon, status, scan ---------------------------------------------------------------------------
def _parse_speed(value: str) -> float:
    if value.strip().lower() in ("max", "inf"):
        return math.inf
    try:
        speed = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a number (1 = real time) or 'max'", param_hint="--speed") from None
    if not (speed > 0 and math.isfinite(speed)):
        raise click.BadParameter("must be a positive number or 'max'", param_hint="--speed")
    return speed


@main.command()
@click.option("--host", help="Interface for the control API (default 127.0.0.1 from the config).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port for the control API (0 = any free port).")
@click.option("--simulate", "scenarios", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Serve simulated oximeters from scenario files instead of the Bluetooth adapter (repeatable).")
@click.option("--speed", default="1", help="Virtual-time factor for simulated devices ('max' = as fast as possible).")
@click.option("--capture", type=click.Path(dir_okay=False, path_type=Path), help="Write every raw frame to this JSON Lines file.")
@pass_ctx
@no_login("the daemon: what people do through it is authenticated by its API", writes=True)
def run(c: Ctx, host: str | None, port: int | None, scenarios: tuple[Path, ...], speed: str, capture: Path | None) -> None:
    """Run the collector daemon (recording + local control API) until SIGTERM/Ctrl-C."""
    from collector.client import daemon_running
    from collector.runner import serve

    if scenarios and not c.db_explicit:
        raise InvalidInput("simulated devices need an explicit database (--db FILE or $COLLECTOR_DB) so simulated nights never land in the default one")
    if daemon_running(c.db_path):
        raise Conflict(f"a collector daemon is already running for {c.db_path}; use it (collector status) or stop it first")
    from collector.storage.presence import require_database

    require_database(c.db_path, create=c.create)
    import asyncio

    from collector.host.logfiles import add_log_file
    from collector.storage import writable

    writable.check(c.db_path)  # a read-only disk is one line (exit 3) before anything, the log file included
    add_log_file(c.db_path, c.config)
    sys.exit(asyncio.run(serve(c.db_path, c.config, host=host, port=port, scenarios=list(scenarios),
                               speed=_parse_speed(speed), capture=capture)))


def _localised_alerts(c: Ctx, alerts: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The operator's language (the site's when no one is logged in) and the daemon's alerts with title and
    message in it."""
    from collector.ward.messages import localise

    lang = str(c.config["site"]["language"])
    try:
        conn = c.conn()
        try:
            lang = c.reader_language(conn)
        finally:
            conn.close()
    except CollectorError:
        pass
    return lang, [localise(a, lang) for a in alerts]


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's status as JSON.")
@pass_ctx
@no_login("reads only")
def status(c: Ctx, as_json: bool) -> None:
    """Live figures for every bed (needs the daemon)."""
    st = c.client().get("/api/v1/status")
    if as_json:
        emit_json(st)
        return
    tz = site_zone(c.config)
    click.echo(f"daemon up since {local_datetime(st['daemon_started_utc'], tz)}, now {local_datetime(st['now_utc'], tz)}, "
               f"database {st['db']}")
    writer = st.get("writer") or {}
    if writer.get("failed"):
        click.echo(f"STORAGE FAILED: {writer['failed']}")
    if writer.get("backlog"):
        click.echo(f"STORAGE BEHIND: {writer['unwritten_samples']} samples wait for the disk (none dropped); check the disk")
    if writer.get("spill_file"):
        click.echo(f"STORAGE SPILLING: {writer['spilled_samples']} samples wait in {writer['spill_file']} (memory full; "
                   "written back in order when the database catches up); check the disk")
    if not st["beds"]:
        click.echo("no open sessions")
    for b in st["beds"]:
        live = b.get("live") or {}
        t90 = live.get("t90_pct")
        click.echo(
            f"session {b['session_id']}  subject {b['subject_id']}  {b['protocol']} {b['device']}  link {b['link_state']}\n"
            f"  SpO2 {b['spo2_pct'] if b['spo2_pct'] is not None else '--'} %  pulse {b['pulse_bpm'] if b['pulse_bpm'] is not None else '--'}/min"
            f"  last sample {b['seconds_since_last_sample'] if b['seconds_since_last_sample'] is not None else '--'} s ago  samples {b['samples']}\n"
            f"  T90 (provisional) {'--' if t90 is None else f'{t90:.2f} %'} of {(live.get('analysed_s') or 0) / 3600:.2f} h analysed"
            f"{'  ABOVE THRESHOLD' if live.get('above_threshold') else ''}  nadir {live.get('nadir_spo2') or '--'} %"
        )
        for ev in b.get("events", [])[-3:]:
            click.echo(f"  event: {ev['kind']} at {local_time(ev['t_utc'], tz, seconds=True)}")
    alerts = st.get("alerts")
    if isinstance(alerts, list):
        lang, alerts = _localised_alerts(c, alerts)
        _ = translator(lang)
        from collector.ward.messages import raised_text

        waiting = [a for a in alerts if not a.get("acknowledged_by")]
        head = _("alerts: {n} to acknowledge").format(n=len(waiting))
        if len(alerts) > len(waiting):
            head += _(", {n} acknowledged and still holding").format(n=len(alerts) - len(waiting))
        click.echo(head + (_(" (collector alerts ack ID)") if waiting else ""))
        for a in alerts:
            where = (_("{subject} session {session}").format(subject=a["subject_id"], session=a["session_id"])
                     if a.get("session_id") else _("collector"))
            state = {"active": _("ACTIVE"), "cleared": _("cleared"),
                     "acknowledged": _("acknowledged by {name}").format(name=a.get("acknowledged_by"))}.get(
                a.get("state", ""), a.get("state", ""))
            click.echo("  " + _("alert {id}  {state}  {title}  {where}  raised {time}: {message}").format(
                id=a["id"], state=state, title=a["title"], where=where, time=raised_text(a, tz, _),
                message=a["message"]))
    elif isinstance(alerts, dict) and alerts.get("error"):
        click.echo(f"alerts: unavailable ({alerts['error']})")


@main.command()
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.5, 60), default=5.0, show_default=True,
              help="Seconds to listen for advertisements.")
@click.option("--all", "show_all", is_flag=True, help="Also devices with no known oximeter service.")
@click.option("--json", "as_json", is_flag=True, help="Print the devices found as JSON.")
@pass_ctx
@no_login("reads only")
def scan(c: Ctx, timeout_s: float, show_all: bool, as_json: bool) -> None:
    """List oximeters in Bluetooth range (through the daemon when it runs)."""
    from drivers.ble import scan as ble_scan

    try:
        found = c.client().get("/api/v1/scan", timeout_s=timeout_s)
    except DaemonUnavailable:
        try:
            import asyncio

            found = [d.as_dict() for d in asyncio.run(ble_scan.scan(timeout_s, oximeters_only=not show_all))]
        except Exception as exc:  # bleak raises platform-specific errors when there is no adapter
            raise CollectorError(f"cannot scan for Bluetooth devices ({type(exc).__name__}: {exc}); check the adapter is on") from None
    if as_json:
        emit_json(found)
    else:
        table(found, ["address", "name", "rssi", "protocol"])


# -- demo, audit ----------------------------------------------------------------------------------------
@main.command()
@click.option("--speed", default="2000", show_default=True, help="Virtual-time factor ('max' = as fast as possible).")
@click.option("--scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Scenario file (default: the packaged demo night).")
@click.option("--db", "demo_db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Database for the demo (default: collector-demo.sqlite in the current directory).")
@pass_ctx
@no_login("records into its own demo database", writes=True)
def demo(c: Ctx, speed: str, scenario: Path | None, demo_db: Path | None) -> None:
    """Record a whole simulated night through the daemon into a SQLite file and report it."""
    from collector.demo import run_demo

    db_path = (demo_db or Path("collector-demo.sqlite")).resolve()
    import asyncio

    asyncio.run(run_demo(db_path, c.config, scenario_path=scenario, speed=_parse_speed(speed), echo=click.echo))


@main.command("verify-audit")
@click.option("--expect-head", "expect_head", metavar="'ID HASH'",
              help="The audit chain head an export or upload recorded (bag-info Audit-Chain-Head): it must still be in the chain.")
@click.option("--json", "as_json", is_flag=True, help="Print the check's result as JSON.")
@pass_ctx
@no_login("reads only")
def verify_audit(c: Ctx, expect_head: str | None, as_json: bool) -> None:
    """Check the audit trail's hash chain and the seals of every stored sample; report the first break."""
    from collector.storage import seals

    expected = _parse_head(expect_head) if expect_head else None
    conn = c.conn()
    check = audit.verify(conn)
    problems = [] if check.ok else [f"audit trail BROKEN at row {check.first_bad_id}: {check.problem}"]
    if check.ok and expected is not None and not audit.contains(conn, *expected):
        problems.append(f"audit row {expected[0]} with the recorded hash is missing or differs: the chain was truncated or rewritten")
    anchored = audit.latest_seal_anchor(conn)
    sealed = seals.verify(conn, expect=anchored)
    if not sealed.ok:
        problems.append(f"stored samples: {sealed.problem}")
    if as_json:
        emit_json({**check.__dict__, "seals": sealed.__dict__, "ok": not problems, "problems": problems})
    elif not problems:
        click.echo(f"audit trail intact: {check.rows} rows; {sealed.rows} samples in {sealed.seals} sealed batches intact")
    else:
        for p in problems:
            click.echo(p, err=True)
    if problems:
        sys.exit(8)


def _parse_head(text: str) -> tuple[int, str]:
    ident, _, digest = text.replace(" ", ":", 1).partition(":")
    if not ident.isdigit() or len(digest) != 64:
        raise InvalidInput(f"--expect-head {text!r} is not ID:HASH (e.g. 1234:<64 hex digits> from bag-info.txt Audit-Chain-Head)")
    return int(ident), digest.lower()


def _register_commands(group: click.Group) -> None:
    """Feature packages add their own commands (nights, spirometry, eligibility, export, operators)."""
    for command in features.commands():
        group.add_command(command)


_register_commands(main)

"""``collector alerts [ack ID]`` and ``collector note SESSION TEXT``.

Listing reads the database (works with the daemon stopped).  Acknowledging and noting go
through the running daemon, which owns the alerts; with no daemon running they are written
to the database directly, audited the same way.
"""

from __future__ import annotations

import click

from collector.clock import SystemClock
from collector.context import Ctx, no_login, pass_ctx, requires
from collector.errors import DaemonUnavailable, InvalidInput
from collector.i18n import translator
from collector.localtime import local_time, site_zone
from collector.output import emit_json, table
from collector.users.roles import INVESTIGATOR, TECHNICIAN
from collector.ward import messages, store
from collector.ward.messages import raised_text

__all__ = ["COMMANDS", "alerts", "note"]

STATE_TEXT = messages.STATE_TEXT


@click.group(invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Also resolved alerts (cleared and acknowledged): the night's history.")
@click.option("--session", "session_id", type=click.IntRange(min=1), help="Only the alerts of this session.")
@click.option("--json", "as_json", is_flag=True, help="Print the alerts as JSON (times in UTC).")
@click.pass_context
@no_login("reads only")
def alerts(ctx: click.Context, show_all: bool, session_id: int | None, as_json: bool) -> None:
    """Alerts the daemon raised that still need a person (acknowledge with: collector alerts ack ID).

    Times are the site's local time ([site] timezone) with the zone; --json gives UTC.  States, titles and
    messages are in the reader's language (collector user language, else [site] language); --json also
    gives each message's English text, message_id and params.
    """
    if ctx.invoked_subcommand is not None:
        return
    c = ctx.find_object(Ctx)
    assert c is not None
    conn = c.conn()
    try:
        lang = c.reader_language(conn)
        rows = [messages.localise(r, lang) for r in store.list_alerts(conn, include_resolved=show_all, session_id=session_id)]
    finally:
        conn.close()
    if as_json:
        emit_json(rows)
        return
    tz = site_zone(c.config)
    _ = translator(lang)
    table(({"id": a["id"], "state": _(STATE_TEXT[a["state"]]), "kind": a["kind"],
            "where": (_("{subject} session {session}").format(subject=a["subject_id"], session=a["session_id"])
                      if a["session_id"] else _("collector")),
            "raised": raised_text(a, tz, _), "cleared": local_time(a["cleared_utc"], tz),
            "acknowledged": f"{local_time(a['acknowledged_utc'], tz)} {a['acknowledged_by']}" if a["acknowledged_by"] else "",
            "message": a["message"]} for a in rows),
          ["id", "state", "kind", "where", "raised", "cleared", "acknowledged", "message"])


@alerts.command("ack")
@click.argument("alert_id", type=click.IntRange(min=1))
@click.option("--note", help="What was done about it (kept in the audit trail).")
@click.option("--json", "as_json", is_flag=True, help="Print the acknowledged alert as JSON.")
@pass_ctx
@requires(TECHNICIAN, INVESTIGATOR)
def alerts_ack(c: Ctx, alert_id: int, note: str | None, as_json: bool) -> None:
    """Acknowledge alert ALERT_ID as the logged-in operator (audited); it leaves the screen once its condition has cleared."""
    if note is not None and len(note) > 500:
        raise InvalidInput(f"--note has {len(note)} characters; at most 500 are kept - shorten it")
    try:
        out = c.client().post(f"/api/v1/alerts/{alert_id}/ack", {"note": note})
    except DaemonUnavailable:
        now = SystemClock().now()
        out = c.write(lambda conn: store.acknowledge(conn, alert_id, by=c.by, at=now, note=note))
    if as_json:
        emit_json(out)
        return
    tz = site_zone(c.config)
    click.echo(f"alert {out['id']} ({out['kind']}) acknowledged by {out['acknowledged_by']} at "
               f"{local_time(out['acknowledged_utc'], tz)}" + ("" if out.get("active", out.get("cleared_utc") is None)
                                                               else "; its condition had cleared"))


@click.command("note")
@click.argument("session_id", type=click.IntRange(min=1))
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="Print the stored note as JSON.")
@pass_ctx
@requires(TECHNICIAN, INVESTIGATOR)
def note(c: Ctx, session_id: int, text: str, as_json: bool) -> None:
    """Note what happened in the night of SESSION_ID ("patient got up", "probe re-taped"), stamped now.

    Notes are kept for good (a wrong one is corrected by another note), audited, and exported
    with the night (CSV, EDF+ annotations, report.pdf).  No names: pseudonyms only.
    """
    text = store.clean_note(text)
    try:
        out = c.client().post(f"/api/v1/sessions/{session_id}/notes", {"text": text})
    except DaemonUnavailable:
        now = SystemClock().now()
        out = c.write(lambda conn: store.add_note(conn, session_id, text, by=c.by, at=now))
    if as_json:
        emit_json(out)
        return
    click.echo(f"note {out['id']} on session {session_id} at {local_time(out['noted_utc'], site_zone(c.config))} "
               f"by {out['noted_by']}: {out['text']}")


COMMANDS = [alerts, note]

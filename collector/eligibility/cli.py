"""``collector criteria set|show`` and ``collector eligibility``: work on the database directly."""

from __future__ import annotations

from typing import Any

import click

from collector.clock import SystemClock
from collector.context import Ctx, no_login, pass_ctx, requires
from collector.eligibility.roles import check_fact_role
from collector.users.roles import ANY_ROLE, INVESTIGATOR, TECHNICIAN
from collector.output import emit_json, table

__all__ = ["COMMANDS", "criteria", "eligibility"]


@click.group()
def criteria() -> None:
    """Record and show screening facts (see docs: fact names like birth_date, height_cm, consent_signed_on)."""


@criteria.command("set", context_settings={"ignore_unknown_options": True})  # VALUE may start with "-"
@click.argument("subject_id")
@click.argument("fact")
@click.argument("value")
@click.option("--reason", help="Why an existing value is corrected (required for a correction).")
@click.option("--json", "as_json", is_flag=True, help="Print the recorded fact as JSON.")
@pass_ctx
@requires(INVESTIGATOR, TECHNICIAN)
def criteria_set(c: Ctx, subject_id: str, fact: str, value: str, reason: str | None, as_json: bool) -> None:
    """Record FACT = VALUE for SUBJECT_ID (a correction appends a new row and needs --reason).

    Investigators record every fact; technicians the measurements (height_cm, weight_kg).
    """
    from collector.eligibility.service import set_fact  # not at import time: the CLI starts without it

    assert c.principal is not None
    check_fact_role(fact, c.principal.role)
    now = SystemClock().now()
    out = c.write(lambda conn: set_fact(conn, subject_id, fact, value, by=c.by, at=now, reason=reason, config=c.config))
    if as_json:
        emit_json(out)
        return
    f = out["fact"]
    if not out["changed"]:
        click.echo(f"{fact} for {subject_id} unchanged (row {f['row']})")
    else:
        verb = "corrected" if f["supersedes"] is not None else "recorded"
        click.echo(f"{fact} {verb} for {subject_id}: {f['value']} (row {f['row']}, by {f['recorded_by']})")
    click.echo(f"eligibility: {out['decision']['decision']}")


@criteria.command("retract")
@click.argument("subject_id")
@click.argument("fact")
@click.option("--reason", required=True, help="Why the value was entered in error (kept in the history and the audit trail).")
@click.option("--json", "as_json", is_flag=True, help="Print the retraction and the decision as JSON.")
@pass_ctx
@requires(INVESTIGATOR, TECHNICIAN)
def criteria_retract(c: Ctx, subject_id: str, fact: str, reason: str, as_json: bool) -> None:
    """Mark FACT of SUBJECT_ID as entered in error: kept in the history (struck through), the criterion back to pending."""
    from collector.eligibility.service import retract  # not at import time: the CLI starts without it

    assert c.principal is not None
    check_fact_role(fact, c.principal.role)
    now = SystemClock().now()
    out = c.write(lambda conn: retract(conn, subject_id, fact, by=c.by, at=now, reason=reason, config=c.config))
    if as_json:
        emit_json(out)
        return
    click.echo(f"{fact} of {subject_id} retracted as entered in error (row {out['fact']['retracted_row']} kept, struck through in the history)")
    click.echo(f"eligibility: {out['decision']['decision']}")


def _struck(text: str) -> str:
    """Text struck through (combining long stroke overlay), as the history shows a value entered in error."""
    return "".join(ch + "\u0336" for ch in text)


@criteria.command("show")
@click.argument("subject_id")
@click.option("--json", "as_json", is_flag=True, help="Print current values and history as JSON.")
@pass_ctx
@no_login("reads only")
def criteria_show(c: Ctx, subject_id: str, as_json: bool) -> None:
    """Current facts of SUBJECT_ID and every value ever recorded (identifying values withheld)."""
    from collector.eligibility.service import criteria_report  # not at import time: the CLI starts without it

    rep = criteria_report(c.conn(), subject_id)
    if as_json:
        emit_json(rep)
        return
    click.echo(f"current facts of {subject_id}:")
    table(rep["current"], ["fact", "value", "recorded_by", "recorded_at", "source"])
    click.echo("history:")
    history = [{**r, "value": "(retracted)" if r["retraction"] else
                (_struck(str(r["value"])) + " [entered in error]" if r["entered_in_error"] else r["value"])} for r in rep["history"]]
    table(history, ["id", "fact", "value", "recorded_by", "recorded_at", "reason", "supersedes"])


@click.command("eligibility")
@click.argument("subject_id")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON (keys in the README).")
@pass_ctx
@requires(*ANY_ROLE)
def eligibility(c: Ctx, subject_id: str, as_json: bool) -> None:
    """Decide SUBJECT_ID's eligibility now: a state and reason per criterion.

    A decision that differs from the last one recorded is added to the audit trail.
    """
    from collector.eligibility.service import evaluate_subject, record_decision_change, thresholds_for_config  # not at import time: the CLI starts without it

    now = SystemClock().now()
    th = thresholds_for_config(c.config)

    def run(conn: Any) -> dict[str, Any]:
        result = evaluate_subject(conn, subject_id, now=now, thresholds=th)
        record_decision_change(conn, subject_id, result, at=now, actor=c.by, reason="re-evaluated on request")
        return result

    result = c.write(run)
    if as_json:
        emit_json(result)
        return
    click.echo(f"subject {subject_id}: {result['decision'].upper()} (evaluated {result['evaluated_at']})")
    table(result["criteria"], ["id", "state", "reason"])
    for p in result.get("in_progress", []):
        click.echo(f"in progress: {p['kind']} session {p['session_id']} ({p['status']})")


COMMANDS = [criteria, eligibility]

"""``collector criteria set|show`` and ``collector eligibility``: work on the database directly."""

from __future__ import annotations

from typing import Any

import click

from collector.clock import SystemClock
from collector.context import Ctx, no_login, pass_ctx, requires
from collector.eligibility.roles import check_fact_role
from collector.users.roles import ANY_ROLE, INVESTIGATOR, TECHNICIAN
from collector.output import emit_json, table
from collector.signatures.prompt import ask_signer

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


@click.group("review")
def review() -> None:
    """Criteria that need an investigator's review: list them with their evidence, resolve them (signed)."""


@review.command("list")
@click.argument("subject_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the items with their full evidence as JSON.")
@pass_ctx
@no_login("reads only")
def review_list(c: Ctx, subject_id: str | None, as_json: bool) -> None:
    """Every needs_review criterion (of SUBJECT_ID, or of every subject) with its evidence, and the resolved ones."""
    from collector.eligibility.service import review_items, thresholds_for_config

    items = review_items(c.conn(), subject_id, now=SystemClock().now(), thresholds=thresholds_for_config(c.config))
    if as_json:
        emit_json(items)
        return
    if not items:
        click.echo("nothing needs review" + (f" for {subject_id}" if subject_id else ""))
        return
    for it in items:
        r = it["review"] or {}
        head = f"{it['subject_id']} {it['criterion']}: {it['status'].upper()}"
        if it["status"] == "resolved":
            head += f" {r['decision']} by {r['resolved_by']} at {r['resolved_at']} ({r['reason']})"
        elif it["status"] == "reopened":
            head += f" (resolved {r['decision']} by {r['resolved_by']} at {r['resolved_at']}; {r['note']})"
        click.echo(head)
        click.echo(f"  evidence: {it['reason']}")
        for i in it["evidence"]["inputs"]:
            click.echo(f"  input {i.get('fact')}: {i.get('value')} ({i.get('source') or 'not recorded'}"
                       + (f", {i.get('recorded_by')} {i.get('recorded_at')}" if i.get("recorded_at") else "") + ")")
        for n in it.get("variants") or []:
            click.echo(f"  night {n['session_id']}: T90 {n['t90_pct']} % (primary, < 90 % of analysed time), "
                       f"<= 90 %: {n['t90_pct_inclusive']} %, % of recording: {n['t90_pct_of_recording']} %"
                       + (f", borderline: {', '.join(n['borderline_variants'] or [])}" if n.get("borderline") else ""))
        click.echo(f"  evidence SHA-256 {it['evidence_sha256']}")


@review.command("resolve")
@click.argument("subject_id")
@click.argument("criterion")
@click.option("--decision", required=True, type=click.Choice(["met", "not_met"]), help="What the criterion is, having looked at the evidence.")
@click.option("--reason", required=True, help="What you looked at and why (kept with the resolution and in the audit trail).")
@click.option("--password-stdin", is_flag=True, help="Read your password (asked again: the resolution is signed) from stdin.")
@click.option("--json", "as_json", is_flag=True, help="Print the resolution, its signature and the decision as JSON.")
@pass_ctx
@requires(INVESTIGATOR)
def review_resolve(c: Ctx, subject_id: str, criterion: str, decision: str, reason: str, password_stdin: bool, as_json: bool) -> None:
    """Resolve CRITERION of SUBJECT_ID (needs_review) as met or not_met, signed "reviewed" with your password.

    The resolution holds while the criterion's evidence stays the same; a changed input re-opens it.
    """
    from collector.eligibility.service import resolve_review

    user = ask_signer(c, password_stdin, f"review of {criterion} of {subject_id}")
    now = SystemClock().now()
    out = c.write(lambda conn: resolve_review(conn, subject_id, criterion, decision=decision, reason=reason, user=user, at=now,
                                              config=c.config))
    if as_json:
        emit_json(out)
        return
    click.echo(f"{criterion} of {subject_id} resolved {decision} (resolution {out['resolution']['id']})")
    click.echo(out["signature"]["manifestation"])
    click.echo(f"eligibility: {out['decision']['decision']}")


@click.command("sign")
@click.argument("subject_id")
@click.option("--meaning", required=True, type=click.Choice(["approved", "reviewed"]), help="What your signature on the decision means.")
@click.option("--password-stdin", is_flag=True, help="Read your password (asked again to sign) from stdin.")
@click.option("--json", "as_json", is_flag=True, help="Print the signature and the signed decision as JSON.")
@pass_ctx
@requires(INVESTIGATOR)
def sign(c: Ctx, subject_id: str, meaning: str, password_stdin: bool, as_json: bool) -> None:
    """Sign SUBJECT_ID's eligibility decision as it is now (eligible or ineligible; an incomplete one is refused)."""
    from collector.eligibility.service import sign_decision

    repo_check = c.conn()
    from collector.storage import repo

    repo.get_subject(repo_check, subject_id)
    repo_check.close()
    user = ask_signer(c, password_stdin, f"{meaning}: eligibility decision of {subject_id}")
    now = SystemClock().now()
    out = c.write(lambda conn: sign_decision(conn, subject_id, meaning=meaning, user=user, at=now, config=c.config))
    if as_json:
        emit_json(out)
        return
    click.echo(f"decision of {subject_id} ({out['decision']['decision']}) signed")
    click.echo(out["signature"]["manifestation"])


@click.command("signatures")
@click.argument("subject_id")
@click.option("--json", "as_json", is_flag=True, help="Print every signature with its validity as JSON.")
@pass_ctx
@no_login("reads only")
def signatures_cmd(c: Ctx, subject_id: str, as_json: bool) -> None:
    """SUBJECT_ID's electronic signatures, each VALID or NO LONGER VALID for the record as it is now."""
    from collector.eligibility.service import subject_signatures

    sigs = subject_signatures(c.conn(), subject_id, now=SystemClock().now(), config=c.config)
    if as_json:
        emit_json(sigs)
        return
    if not sigs:
        click.echo(f"no signatures for {subject_id}")
    for s in sigs:
        state = "VALID" if s["valid"] else f"NO LONGER VALID ({s['invalid_reason']})"
        click.echo(f"{s['record_type']} {s['record_ref']}: {state}")
        click.echo(f"  {s['manifestation']}")


COMMANDS = [criteria, eligibility, review, sign, signatures_cmd]

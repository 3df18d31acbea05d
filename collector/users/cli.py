"""``collector user add|password|disable|list``: operators who may log in to the technician's page."""

from __future__ import annotations

import sys

import click

from collector.clock import SystemClock
from collector.context import Ctx, pass_ctx
from collector.output import emit_json, table
from collector.users.passwords import validate_name, validate_password
from collector.users.store import add_user, list_users, set_disabled, set_password


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("password", hide_input=True, confirmation_prompt=True)


@click.group("user")
def user_group() -> None:
    """Operators who may log in to the technician's page."""


@user_group.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin (scripts) instead of prompting.")
@pass_ctx
def user_add(c: Ctx, name: str, password_stdin: bool) -> None:
    """Add operator NAME with a password (asked twice, never echoed)."""
    validate_name(name)
    password = validate_password(_read_password(password_stdin))
    row = c.write(lambda conn: add_user(conn, name, password, by=c.by, at=SystemClock().now()))
    click.echo(f"operator {row['name']} added; log in on the page served by: collector run")


@user_group.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
@pass_ctx
def user_password(c: Ctx, name: str, password_stdin: bool) -> None:
    """Set a new password for operator NAME."""
    password = validate_password(_read_password(password_stdin))
    c.write(lambda conn: set_password(conn, name, password, by=c.by, at=SystemClock().now()))
    click.echo(f"password of {name} changed (logged-in pages keep their session until it expires)")


@user_group.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="Enable the operator again.")
@pass_ctx
def user_disable(c: Ctx, name: str, enable: bool) -> None:
    """Stop operator NAME from logging in (kept for the audit trail, never deleted)."""
    row = c.write(lambda conn: set_disabled(conn, name, not enable, by=c.by, at=SystemClock().now()))
    click.echo(f"operator {row['name']} {'disabled' if row['disabled'] else 'enabled'}")


@user_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the operators as JSON.")
@pass_ctx
def user_list(c: Ctx, as_json: bool) -> None:
    """List operators (never their password hashes)."""
    rows = list_users(c.conn())
    emit_json(rows) if as_json else table(rows, ["name", "disabled", "created_utc", "created_by", "password_changed_utc"])


COMMANDS = [user_group]

"""``collector login|logout`` and ``collector user add|password|role|disable|list``: operators and their logins."""

from __future__ import annotations

import sys
import time

import click

from collector.clock import SystemClock
from collector.context import Ctx, no_login, pass_ctx, remove_token_file, requires, write_token_file
from collector.errors import NotAuthorised
from collector.output import emit_json, table
from collector.storage import audit
from collector.users.passwords import validate_name, validate_password
from collector.users.roles import ADMIN, ANY_ROLE, ROLES
from collector.i18n import LANGUAGES
from collector.users.store import (add_user, count_users, create_token, drop_token, find_token, list_users, set_disabled,
                                   set_full_name, set_language, set_password, set_role, validate_full_name, verify_login)


def read_password(from_stdin: bool, *, confirm: bool = True) -> str:
    """The password from the first line of stdin (scripts), else a prompt that never echoes."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("password", hide_input=True, confirmation_prompt=confirm))


@click.command("login")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin (scripts) instead of prompting.")
@click.option("--print-token", is_flag=True,
              help="Print the token instead of keeping it in the data directory (scripts: export COLLECTOR_TOKEN=$(collector login ...)).")
@pass_ctx
@no_login("it is the login", writes=True)
def login(c: Ctx, name: str, password_stdin: bool, print_token: bool) -> None:
    """Log in as operator NAME: later commands act as NAME until the login is idle too long or you log out."""
    from collector.context import ENV_TOKEN

    validate_name(name)
    password = read_password(password_stdin, confirm=False)
    conn = c.conn()
    now = SystemClock().now()
    if not verify_login(conn, name, password):
        c.write(lambda w: audit.append(w, at=now, actor=name, action="operator_login_failed", new={"via": "cli"}))
        if count_users(conn) == 0:
            raise NotAuthorised(f"no operators in {c.db_path} yet; create the first (an admin) with: collector user add {name}")
        raise NotAuthorised("wrong operator name or password (or the operator is disabled); try again")

    def record(w: object) -> str:
        token, _ = create_token(w, name, kind="cli", at=time.time())  # type: ignore[arg-type]
        audit.append(w, at=now, actor=name, action="operator_login", new={"via": "cli"})  # type: ignore[arg-type]
        return token

    token = c.write(record)
    if print_token:
        click.echo(token)
        return
    path = write_token_file(c.db_path, token)
    idle_s, _ = c.login_limits()
    click.echo(f"logged in as {name}; the login ends after {idle_s / 60:g} min without a command (token in {path}, "
               f"or export {ENV_TOKEN} for scripts)")


@click.command("logout")
@pass_ctx
@no_login("it ends the login", writes=True)
def logout(c: Ctx) -> None:
    """End this database's login (the token is deleted from the database and from disk)."""
    from collector.context import read_token_file

    token = read_token_file(c.db_path)
    if token and c.db_path.exists():
        conn = c.conn()
        row = find_token(conn, token, kind="cli")
        now = SystemClock().now()

        def end(w: object) -> None:
            drop_token(w, token)  # type: ignore[arg-type]
            if row is not None:
                audit.append(w, at=now, actor=row["operator"], action="operator_logout", new={"via": "cli"})  # type: ignore[arg-type]

        c.write(end)
    remove_token_file(c.db_path)
    click.echo("logged out")


@click.command("whoami")
@pass_ctx
@requires(*ANY_ROLE)
def whoami(c: Ctx) -> None:
    """Who is logged in, with which role (and keep the login alive)."""
    assert c.principal is not None
    click.echo(f"{c.principal.name} ({c.principal.role})")


@click.group("user")
def user_group() -> None:
    """Operators: who may log in, and with which role."""


@user_group.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default=None,
              help="technician, investigator, data_manager or admin (required, except for the first operator, who is admin).")
@click.option("--full-name", default=None, help="The name printed under the operator's electronic signatures (needed to sign).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin (scripts) instead of prompting.")
@pass_ctx
@requires(ADMIN, first_user=True)
def user_add(c: Ctx, name: str, role: str | None, full_name: str | None, password_stdin: bool) -> None:
    """Add operator NAME with a role and a password (asked twice, never echoed); the first operator is an admin."""
    validate_name(name)
    first = c.principal is None
    if first:
        role = role or ADMIN
        if role != ADMIN:
            raise click.UsageError("the first operator of a database is its admin: leave out --role, or give --role admin")
    elif role is None:
        raise click.UsageError(f"give the role: --role {'|'.join(ROLES)}")
    if full_name is not None:
        validate_full_name(full_name)
    password = validate_password(read_password(password_stdin))
    n = int(c.config["operator"]["scrypt_n"])

    def add(conn: object) -> dict[str, object]:
        if first and count_users(conn) != 0:  # type: ignore[arg-type]
            raise NotAuthorised("another operator was just added; log in as an admin to add more: collector login NAME")
        return add_user(conn, name, password, by=name if first else c.by, at=SystemClock().now(), role=role or ADMIN, scrypt_n=n, full_name=full_name)  # type: ignore[arg-type]

    row = c.write(add)
    click.echo(f"operator {row['name']} added as {row['role']}" + ("; log in with: collector login " + name if first else ""))


@user_group.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
@pass_ctx
@requires(ADMIN)
def user_password(c: Ctx, name: str, password_stdin: bool) -> None:
    """Set a new password for operator NAME."""
    password = validate_password(read_password(password_stdin))
    n = int(c.config["operator"]["scrypt_n"])
    c.write(lambda conn: set_password(conn, name, password, by=c.by, at=SystemClock().now(), scrypt_n=n))
    click.echo(f"password of {name} changed (logins already open keep going until they expire)")


@user_group.command("full-name")
@click.argument("name")
@click.argument("full_name")
@pass_ctx
@requires(ADMIN)
def user_full_name(c: Ctx, name: str, full_name: str) -> None:
    """Set the name printed under operator NAME's electronic signatures (earlier signatures keep theirs)."""
    row = c.write(lambda conn: set_full_name(conn, name, full_name, by=c.by, at=SystemClock().now()))
    click.echo(f"operator {row['name']} signs as {row['full_name']}")


@user_group.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(ROLES))
@pass_ctx
@requires(ADMIN)
def user_role(c: Ctx, name: str, role: str) -> None:
    """Give operator NAME another ROLE."""
    row = c.write(lambda conn: set_role(conn, name, role, by=c.by, at=SystemClock().now()))
    click.echo(f"operator {row['name']} is {row['role']}")


@user_group.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="Enable the operator again.")
@pass_ctx
@requires(ADMIN)
def user_disable(c: Ctx, name: str, enable: bool) -> None:
    """Stop operator NAME from logging in and end its logins (kept for the audit trail, never deleted)."""
    row = c.write(lambda conn: set_disabled(conn, name, not enable, by=c.by, at=SystemClock().now()))
    click.echo(f"operator {row['name']} {'disabled' if row['disabled'] else 'enabled'}")


@user_group.command("language")
@click.argument("language", type=click.Choice([*LANGUAGES, "site"]))
@click.option("--user", "name", metavar="NAME", help="Another operator's language (admins only); default: your own.")
@pass_ctx
@requires(*ANY_ROLE)
def user_language(c: Ctx, language: str, name: str | None) -> None:
    """Choose the language the page, alerts and report.pdf are shown in (site: the site's [site] language)."""
    who = name or c.by
    if who != c.by and (c.principal is None or c.principal.role != ADMIN):
        raise NotAuthorised(f"only an admin may set another operator's language; set your own with: collector user language {language}")
    chosen = None if language == "site" else language
    c.write(lambda conn: set_language(conn, who, chosen, by=c.by, at=SystemClock().now()))
    click.echo(f"{who} reads {LANGUAGES.get(chosen or c.config['site']['language'])} "
               f"({chosen or 'the site language, ' + c.config['site']['language']})")


@user_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the operators as JSON.")
@pass_ctx
@no_login("reads only")
def user_list(c: Ctx, as_json: bool) -> None:
    """List operators and their roles (never their password hashes)."""
    rows = list_users(c.conn())
    emit_json(rows) if as_json else table(rows, ["name", "role", "full_name", "disabled", "created_utc", "created_by", "password_changed_utc"])


COMMANDS = [login, logout, whoami, user_group]

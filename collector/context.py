"""What every ``collector`` command gets: the database, the configuration and the verified operator.

Kept apart from collector/cli.py so feature commands can take the context without
importing the command-line entry point (which imports every feature).

Who may run a command is declared once, on the command, with :func:`requires` (the roles
that may, checked against the operator's login token before the command runs) or
:func:`no_login` (commands that only read, or that act as the daemon).  A command declared
with ``no_login`` gets a read-only connection and has no operator to record, so a command
that changes something without declaring its roles fails on its first write
(tests/test_roles.py also walks the command tree and refuses undeclared commands).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast

import click

from collector.errors import NotAuthorised
from collector.storage.db import make_read_only, open_db, transaction
from collector.users.roles import ANY_ROLE, Principal, check_roles, describe

if TYPE_CHECKING:
    from collector.client import DaemonClient

ENV_TOKEN = "COLLECTOR_TOKEN"
ACCESS_ATTR = "__collector_access__"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Access:
    """What a command declares: the roles that may run it (None: no login) and why."""

    roles: frozenset[str] | None
    first_user: bool = False  # on a database without operators, anyone may run it once (the first user is admin)
    when: str | None = None  # log in up front only with this option (report --recompute); else when it first writes
    why: str = ""
    writes: bool = True


@dataclass
class Ctx:
    db_path: Path
    config: dict[str, Any]
    db_explicit: bool = False
    create: bool = False  # --create: a new database may replace one that is missing
    principal: Principal | None = None
    access: Access | None = None
    token: str | None = field(default=None, repr=False)
    deferred: NotAuthorised | None = None

    @property
    def by(self) -> str:
        """The verified operator the audit trail records; only commands that declared their roles have one."""
        if self.principal is None and self.deferred is not None:
            raise self.deferred  # a command that writes only sometimes (report without a stored one), not logged in
        if self.principal is None:
            raise NotAuthorised("this needs a logged-in operator; log in with: collector login NAME")
        return self.principal.name

    def conn(self) -> sqlite3.Connection:
        from collector.storage.presence import require_database

        require_database(self.db_path, create=self.create)
        conn = open_db(self.db_path).conn
        if self.principal is None and not (self.access is not None and self.access.writes):
            make_read_only(conn)  # a command without an operator cannot change anything
        return conn

    def reader_language(self, conn: sqlite3.Connection) -> str:
        """The language the person at this terminal reads: the logged-in operator's choice (``collector user
        language``), else the site's ``[site] language``.  Only reads: a command without a login may ask."""
        from collector.users import store

        name = self.principal.name if self.principal is not None else None
        if name is None:
            token = os.environ.get(ENV_TOKEN) or read_token_file(self.db_path)
            row = store.find_token(conn, token, kind="cli") if token else None
            name = None if row is None else str(row["operator"])
        return (store.get_language(conn, name) if name else None) or str(self.config["site"]["language"])

    def write(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(conn)`` in one write transaction on the database (commands that work without the daemon)."""
        with transaction(self.conn()) as conn:
            return fn(conn)

    def client(self) -> DaemonClient:
        from collector.client import DaemonClient  # httpx only for commands that talk to the daemon

        return DaemonClient(self.db_path, token=self.token)

    # -- logins ---------------------------------------------------------------------------------
    def login_limits(self) -> tuple[float, float]:
        web = self.config["web"]
        return float(web["session_idle_min"]) * 60, float(web["session_max_h"]) * 3600

    def authenticate(self, access: Access) -> Principal | None:
        """The logged-in operator if its role is one of ``access.roles``; NotAuthorised otherwise."""
        import time

        from collector.users import store

        assert access.roles is not None
        conn = open_db(self.db_path).conn if self.db_path.exists() or self.create else None
        if access.first_user and (conn is None or store.count_users(conn) == 0):
            return None  # the command creates the first operator, an admin
        if conn is None:
            from collector.storage.presence import require_database

            require_database(self.db_path, create=self.create)
            raise NotAuthorised(f"no operators in {self.db_path} yet; create the first (an admin) with: collector user add NAME")
        token = os.environ.get(ENV_TOKEN) or read_token_file(self.db_path)
        if not token:
            raise NotAuthorised("not logged in; log in with: collector login NAME")
        now = time.time()
        idle_s, max_s = self.login_limits()
        with transaction(conn):
            row = store.find_token(conn, token, kind="cli")
            if row is not None and (now - row["last_seen_s"] > idle_s or now - row["created_s"] > max_s):
                store.drop_token(conn, token)
                raise NotAuthorised(f"the login of {row['operator']} expired (idle limit {idle_s / 60:g} min); log in again with: collector login {row['operator']}")
            if row is None:
                raise NotAuthorised("not logged in, or the login ended; log in with: collector login NAME")
            if row["role"] not in access.roles:
                raise NotAuthorised(f"{row['operator']} is {describe(frozenset({row['role']}))}; this needs {describe(access.roles)}")
            store.touch_token(conn, token, at=now)
        conn.close()
        self.token = token
        return Principal(row["operator"], row["role"], "cli-token")


def _declare(fn: F, access: Access) -> F:
    setattr(fn, ACCESS_ATTR, access)
    return fn


def requires(*roles: str, first_user: bool = False, when: str | None = None) -> Callable[[F], F]:
    """Only an operator logged in (``collector login``) with one of ``roles`` may run the command.

    Put it between ``@<group>.command`` and the function; the command then finds the verified
    operator in ``c.by``.  ``first_user``: on a database without operators it runs without a
    login (``collector user add`` creating the first admin).  ``when``: the name of the option
    that makes the command change something (without it the command only reads).
    """
    access = Access(check_roles(roles), first_user=first_user, when=when)

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            c = click.get_current_context().find_object(Ctx)
            assert c is not None, "requires() needs the collector group's context"
            c.access = access
            if access.when is None or kwargs.get(access.when):
                c.principal = c.authenticate(access)
            else:
                try:  # log in now (not inside the command's write transaction); complain only if it writes
                    c.principal = c.authenticate(access)
                except NotAuthorised as exc:
                    c.deferred = exc
            return fn(*args, **kwargs)

        return cast(F, _declare(wrapper, access))

    return decorate


def no_login(why: str, *, writes: bool = False) -> Callable[[F], F]:
    """The command runs without a login: it only reads (``writes=False``), or it is the daemon/login itself."""
    access = Access(None, why=why, writes=writes)

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            c = click.get_current_context().find_object(Ctx)
            if c is not None:
                c.access = access
            return fn(*args, **kwargs)

        return cast(F, _declare(wrapper, access))

    return decorate


def access_of(command: click.Command) -> Access | None:
    """What a click command declared (None: nothing, which tests/test_roles.py refuses)."""
    return getattr(command.callback, ACCESS_ATTR, None)


# -- the CLI's login token file -----------------------------------------------------------------------
def token_file(db_path: Path) -> Path:
    """Where ``collector login`` keeps the token for this database: the user's data directory, 0600 in 0700."""
    from collector.storage.db import data_dir

    key = hashlib.sha256(str(db_path.resolve()).encode("utf-8")).hexdigest()[:24]
    return data_dir() / "logins" / f"{key}.token"


def write_token_file(db_path: Path, token: str) -> Path:
    path = token_file(db_path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)
    return path


def read_token_file(db_path: Path) -> str | None:
    try:
        return token_file(db_path).read_text(encoding="ascii").strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError):
        return None


def remove_token_file(db_path: Path) -> None:
    try:
        token_file(db_path).unlink()
    except FileNotFoundError:
        pass


pass_ctx = click.make_pass_decorator(Ctx)
__all__ = ["ANY_ROLE", "Access", "Ctx", "access_of", "no_login", "pass_ctx", "requires"]

"""The password asked again at the moment of signing, for every command that signs."""

from __future__ import annotations

from typing import Any

import click

from collector.clock import SystemClock
from collector.context import Ctx


def ask_signer(c: Ctx, password_stdin: bool, what: str) -> dict[str, Any]:
    """The logged-in operator, once more by password: a signature is a fresh act (21 CFR 11.200), not a login."""
    import sys

    from collector.errors import NotAuthorised
    from collector.signatures import service as signatures

    name = c.by
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = str(click.prompt(f"password of {name}, to sign ({what})", hide_input=True, err=True))
    now = SystemClock().now()
    conn = c.conn()
    try:
        return signatures.signer(conn, name, password, at=now, what=what)
    except NotAuthorised:
        c.write(lambda w: signatures.refusal(w, name, at=now, what=what))
        raise
    finally:
        conn.close()

"""What every ``collector`` command gets: the database, the configuration and the operator.

Kept apart from collector/cli.py so feature commands can take the context without
importing the command-line entry point (which imports every feature).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from collector.storage.db import open_db, transaction

if TYPE_CHECKING:
    from collector.client import DaemonClient


@dataclass
class Ctx:
    db_path: Path
    config: dict[str, Any]
    by: str
    db_explicit: bool = False
    create: bool = False  # --create: a new database may replace one that is missing

    def conn(self) -> sqlite3.Connection:
        from collector.storage.presence import require_database

        require_database(self.db_path, create=self.create)
        return open_db(self.db_path).conn

    def write(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(conn)`` in one write transaction on the database (commands that work without the daemon)."""
        with transaction(self.conn()) as conn:
            return fn(conn)

    def client(self) -> DaemonClient:
        from collector.client import DaemonClient  # httpx only for commands that talk to the daemon

        return DaemonClient(self.db_path)


pass_ctx = click.make_pass_decorator(Ctx)

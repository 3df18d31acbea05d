"""Runtime files next to the database: how the CLI finds and authenticates to its daemon.

A module of its own so the client (CLI side) and the API (daemon side) share the
paths without importing each other.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path

from collector import __version__


def token_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".token")


def runtime_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".daemon.json")


def load_or_create_token(db_path: Path) -> str:
    """A random token in a file only this user can read (0600); kept across restarts."""
    path = token_path(db_path)
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(token + "\n")
    return token


def write_runtime(db_path: Path, *, host: str, port: int, pid: int) -> None:
    path = runtime_path(db_path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"host": host, "port": port, "pid": pid, "version": __version__}), encoding="utf-8")
    tmp.replace(path)


def remove_runtime(db_path: Path) -> None:
    try:
        runtime_path(db_path).unlink()
    except FileNotFoundError:
        pass

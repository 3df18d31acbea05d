"""A database that should be there is never silently replaced by an empty one.

A database that the collector has used leaves companions next to it (``<db>.lock``,
``<db>.token``, ``<db>-wal``, a recovery journal ...).  When the database itself is
missing but its companions are present, it was deleted or moved: creating a new
empty file there would hide the loss, so it is refused unless asked for.
"""

from __future__ import annotations

from pathlib import Path

from collector.errors import StorageError


def companions(db_path: Path) -> list[Path]:
    """Files next to ``db_path`` that only a used database leaves behind."""
    folder = db_path.parent
    if not folder.is_dir():
        return []
    prefix_dot, prefix_dash = db_path.name + ".", db_path.name + "-"
    # The lock is taken before the database is first created, so it alone proves nothing.
    lock = db_path.name + ".lock"
    return sorted(p for p in folder.iterdir() if p.name.startswith((prefix_dot, prefix_dash)) and p.name != lock)


def require_database(db_path: Path, *, create: bool = False) -> None:
    """Refuse to create ``db_path`` when it is missing but was used before (its companions are there)."""
    if create or db_path.exists():
        return
    left = companions(db_path)
    if left:
        names = ", ".join(p.name for p in left[:4]) + (" ..." if len(left) > 4 else "")
        raise StorageError(
            f"database {db_path} is missing but was used before ({names} are still there): it was deleted or moved; "
            "restore it from its backup, or give --create to start a new, empty database there"
        )

"""Before SQLite opens a database: the file, its ``-wal`` and ``-shm`` must be ours to write.

Why: SQLite maps ``<db>-shm`` into memory.  A ``-shm`` (or ``-wal``) left behind read-only,
owned by another user, or on a file system remounted read-only does not fail with an
error: the daemon died by SIGBUS with no message.  Checked up front, it is one line that
names the file and what to do, and the storage exit status (3).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from collector.errors import StorageError

SIDECARS = ("-wal", "-shm")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): the access check below still runs
        return False


def problem(db_path: Path) -> str | None:
    """Why ``db_path`` cannot be written safely (the first reason), or None."""
    db_path = Path(db_path)
    folder = db_path.parent
    if not folder.is_dir():
        return None  # a new database in a new folder: made by connect()
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    missing = False
    for path in (db_path, *(db_path.with_name(db_path.name + s) for s in SIDECARS)):
        try:
            st = path.lstat()
        except FileNotFoundError:
            missing = True
            continue
        except OSError as exc:
            return f"{path} cannot be examined ({exc.strerror or exc})"
        if not stat.S_ISREG(st.st_mode):
            return f"{path} is not a regular file; move it away"
        if _read_only_fs(path):
            return f"{path} is on a read-only file system; remount it read-write or move the database to a writable disk"
        if euid not in (None, 0) and st.st_uid != euid:
            return f"{path} is owned by uid {st.st_uid}, not by this user (uid {euid}); give it back (chown) or run as its owner"
        if not os.access(path, os.W_OK):
            return f"{path} is read-only (not writable by this user); make it writable (chmod u+w, chattr -i)"
    if missing and db_path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        return (f"the folder {folder} is read-only, so SQLite cannot make {db_path.name}-wal / -shm; "
                "make the folder writable or move the database")
    return None


def check(db_path: Path) -> None:
    """Raise :class:`StorageError` (exit 3) when :func:`problem` finds one."""
    why = problem(db_path)
    if why is not None:
        raise StorageError(f"cannot use database {db_path}: {why}; nothing was changed")

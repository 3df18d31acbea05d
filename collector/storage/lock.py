"""One daemon per database: an OS lock taken before anything is resumed or written.

Why an OS lock and not the runtime file: the runtime file is written after the
daemon has resumed its sessions, so two daemons started at the same moment both
saw none and both recorded.  The kernel releases the lock when the process dies
(kill -9 included), so a crash never leaves a stale lock behind.  The lock is on
``<db>.lock``, not on the database, so it never interferes with SQLite's own locks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO

from collector.errors import Conflict, StorageError


def lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".lock")


class DatabaseLock:
    """Held for the daemon's lifetime; :meth:`acquire` raises :class:`Conflict` if another process holds it."""

    def __init__(self, db_path: Path) -> None:
        self.path = lock_path(Path(db_path))
        self._fh: IO[str] | None = None

    def acquire(self) -> "DatabaseLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise StorageError(f"cannot create the lock file {self.path}: {exc.strerror or exc}; check the folder is writable") from None
        try:
            _lock(fh)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise Conflict(f"another collector daemon (pid {holder}) is already recording into {self.path.with_suffix('')}; "
                           "use it (collector status) or stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor releases the lock
            self._fh = None


if sys.platform == "win32":  # pragma: no cover - exercised on Windows laptops
    import msvcrt

    def _lock(fh: IO[str]) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
else:
    import fcntl

    def _lock(fh: IO[str]) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

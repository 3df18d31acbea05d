"""Samples past the writer's memory cap wait in an append-only file next to the database.

When the disk or the database is slow or stalled, the writer's queue would otherwise grow
without bound (a stalled night of 24 beds is millions of rows, gigabytes of memory).  Past
``[storage] memory_samples`` samples held in memory, new rows are appended to
``<db>.spill.jsonl`` instead, in the recovery journal's format (one JSON line per sample in
``SAMPLE_COLUMNS`` order), and the writer writes them back, oldest first, once every sample
before them is committed; the file is removed when it has all been written back.

How far it was written back is kept in ``<db>.spill.done`` (a byte offset, replaced after each
committed chunk): a daemon that stopped or died with rows in the file resumes there at its next
start, and the one chunk that may have been committed just before a crash is checked against
the database so that no row is stored twice.

If even the file cannot be appended to (the disk is full), rows stay in memory after the file's,
in order, and are appended as soon as the disk takes them: a full disk keeps samples in memory
rather than dropping them (and the disk alert says so).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import IO, Any, Sequence

log = logging.getLogger(__name__)

SampleRow = tuple[Any, ...]


def row_lines(rows: Sequence[SampleRow]) -> str:
    """Sample rows as recovery-journal lines (shared with the deleted-database journal)."""
    return "".join(json.dumps({"spo2_samples": list(row)}) + "\n" for row in rows)


class Spill:
    """The spill file of one database: appended by any thread under :attr:`lock`, read back by the writer."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".spill.jsonl")
        self.done_path = db_path.with_name(db_path.name + ".spill.done")
        self.lock = threading.Lock()
        self.rows = 0            # lines in the file not yet written back
        self.tail: list[SampleRow] = []  # rows the file would not take (disk full): after the file's rows
        self.spilled = 0         # rows ever sent here (status, tests)
        self.offset = 0          # bytes of the file already written back
        self.size = 0            # bytes of complete, counted lines: the reader never reads past this
        self.resumed = False     # left by an earlier run: its first chunk may be in the database already
        self._append: IO[str] | None = None
        self._read: IO[bytes] | None = None
        self._failing = False
        if self.path.exists():
            self._resume()

    def _resume(self) -> None:
        try:
            self.offset = int(self.done_path.read_text().strip() or 0)
        except (OSError, ValueError):
            self.offset = 0
        data = self.path.read_bytes()
        self.size = data.rfind(b"\n") + 1  # a line cut by a crash was never a stored promise: dropped from the file
        if self.size < len(data):
            os.truncate(self.path, self.size)
        self.offset = min(self.offset, self.size)
        self.rows = data.count(b"\n", self.offset, self.size)
        self.resumed = self.rows > 0
        if self.rows:
            log.warning("%d samples left in %s by an earlier run are written to the database first", self.rows, self.path)
        else:
            self._remove()

    @property
    def active(self) -> bool:
        """Rows wait here: every new row must come after them (the caller holds :attr:`lock`)."""
        return self.rows > 0 or bool(self.tail)

    def append(self, rows: Sequence[SampleRow]) -> None:
        """Append rows after everything waiting (the caller holds :attr:`lock`); never raises for a full disk."""
        self.spilled += len(rows)
        pending = self.tail + list(rows) if self.tail else list(rows)
        text = row_lines(pending)
        try:
            if self._append is None:
                self._append = open(self.path, "a", encoding="utf-8")
                if self._append.tell() != self.size:  # a write that failed half-way: its rows are in the tail
                    self._append.truncate(self.size)
            self._append.write(text)
            self._append.flush()  # complete lines reach the OS now: they survive a killed process
        except OSError as exc:
            if not self._failing:
                log.critical("cannot append to the spill file %s (%s); keeping %d samples in memory until the disk takes them",
                             self.path, exc, len(pending))
            self._failing = True
            self.tail = pending
            self._close_append()
            return
        if self._failing:
            log.warning("the spill file %s takes samples again", self.path)
            self._failing = False
        self.size += len(text.encode("utf-8"))
        self.rows += len(pending)
        self.tail = []

    def read(self, max_rows: int) -> tuple[list[SampleRow], int, int, bool]:
        """The oldest waiting rows (at most ``max_rows``), the lines they took, the offset after them, and
        whether they are the in-memory tail.  Only the writer thread reads; it calls :meth:`done` once
        they are committed."""
        with self.lock:
            rows_avail, size, tail = self.rows, self.size, not self.rows and bool(self.tail)
            if tail:
                return list(self.tail[:max_rows]), 0, self.offset, True
        out: list[SampleRow] = []
        if rows_avail == 0:
            return out, 0, self.offset, False
        if self._read is None:
            self._read = open(self.path, "rb")
        self._read.seek(self.offset)
        offset, lines = self.offset, 0
        while lines < min(max_rows, rows_avail) and offset < size:
            line = self._read.readline()
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            lines += 1
            try:
                out.append(tuple(json.loads(line)["spo2_samples"]))
            except (ValueError, KeyError, TypeError):
                log.error("skipping an unreadable line in %s at byte %d", self.path, offset - len(line))
        return out, lines, offset, False

    def done(self, lines: int, offset: int, from_tail: bool) -> None:
        """What :meth:`read` returned is committed: never read again; the file goes once all is back."""
        with self.lock:
            if from_tail:
                del self.tail[:lines]
            else:
                self.offset = offset
                self.rows -= lines
            self.resumed = False
            if not self.active:
                self._remove()
                return
        if not from_tail:
            tmp = self.done_path.with_name(self.done_path.name + ".tmp")
            try:
                tmp.write_text(str(offset))
                os.replace(tmp, self.done_path)
            except OSError as exc:  # only a crash right now could then store this chunk twice; it is checked
                log.error("cannot record the spill file's progress in %s (%s)", self.done_path, exc)

    def _remove(self) -> None:
        """Everything is written back (the caller holds :attr:`lock`): the file starts again empty."""
        self._close_append()
        if self._read is not None:
            self._read.close()
            self._read = None
        for p in (self.path, self.done_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("cannot remove %s (%s); it holds nothing not stored", p, exc)
        self.offset = self.size = self.rows = 0
        log.info("every spilled sample is stored; %s removed", self.path)

    def _close_append(self) -> None:
        if self._append is not None:
            try:
                self._append.close()
            except OSError:
                pass
            self._append = None

    def close(self) -> None:
        with self.lock:
            self._close_append()
            if self._read is not None:
                self._read.close()
                self._read = None

"""The single database writer.

One thread owns the only writing connection.  Samples are queued from the
event loop and committed in batches (at most ``flush_interval_s`` after they
arrive, so a received sample is durable within about a second); control
operations (sessions, gaps, audit rows) run as functions on the same thread and
commit immediately, together with any pending samples, so ordering is kept.

Memory is bounded: past ``memory_samples`` samples held in memory (queued, or kept for a
retry), new samples go to the spill file next to the database (collector/storage/spill.py) and
are written back in order once everything before them is committed; nothing is dropped.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from collector.errors import StorageError
from collector.storage import seals
from collector.storage.db import connect, open_db
from collector.storage.spill import Spill, row_lines

log = logging.getLogger(__name__)
T = TypeVar("T")

SAMPLE_COLUMNS = (
    "session_id",
    "host_utc_ms",
    "device_time",
    "spo2_pct",
    "pulse_bpm",
    "pai_pct",
    "valid",
    "pulse_valid",
    "flags",
    "status_raw",
    "counter",
)
INSERT_SAMPLE = f"INSERT INTO spo2_samples ({', '.join(SAMPLE_COLUMNS)}) VALUES ({', '.join('?' * len(SAMPLE_COLUMNS))})"

SampleRow = tuple[Any, ...]


class _Call:
    __slots__ = ("fn", "future", "retry", "started")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], retry: bool = False) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()
        self.retry = retry  # kept and tried again on a transient error (disk full), like samples
        self.started = False


class _Flush:
    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: Future[None] = Future()


_STOP = object()
RETRY_S = 2.0  # after a transient database error, samples are retried this often


class Writer:
    """Owns the writing connection; thread-safe entry points for everything else."""

    def __init__(self, path: Path | str, *, flush_interval_s: float = 0.5, max_batch: int = 20_000, synchronous: str = "FULL",
                 backlog_samples: int = 200_000, memory_samples: int = 50_000) -> None:
        open_db(path).conn.close()  # create + migrate before the thread starts
        self.path = Path(path)
        # Samples handed over but not yet committed (queued, or kept for a retry).  Above
        # backlog_samples the writer is behind: ``backlog`` is set (status and an alert say so)
        # until it is back under half; no sample is ever dropped for it.
        self.backlog_samples = backlog_samples
        self.unwritten = 0
        self.max_unwritten = 0
        self.backlog = False
        self._count_lock = threading.Lock()
        # Samples in memory (the queue and the thread's pending list); past memory_samples new ones spill.
        self.memory_samples = memory_samples
        self.in_memory = 0
        self.max_in_memory = 0
        self.spill = Spill(self.path)
        if self.spill.rows:
            self._count(self.spill.rows)
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._conn = connect(self.path, check_same_thread=False, synchronous=synchronous)
        self._seal_legacy_rows()
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._guard_fd = os.open(self.path, os.O_RDONLY)  # its link count drops to 0 if the file is deleted
        self.lost: StorageError | None = None  # the database file was deleted or replaced under us
        self.journal: Path | None = None
        self.samples_journaled = 0
        self.samples_committed = 0
        self.commits = 0
        self.failed: BaseException | None = None
        self._deferred: list[_Call] = []  # retryable records that met a transient error, oldest first
        self._raw_rows = 0  # pending sample rows not handed over as seals.CanonicalRows (writer thread only)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="db-writer", daemon=True)
        self._thread.start()

    # -- entry points (any thread) -------------------------------------------------
    def _check_open(self) -> None:
        if self._closed or not self._thread.is_alive():
            raise StorageError(
                f"the database writer for {self.path} has stopped ({self.failed or 'closed'}); "
                "restart the collector (nothing committed is lost)"
            )

    def add_samples(self, rows: Sequence[SampleRow]) -> None:
        """Queue sample rows (tuples in ``SAMPLE_COLUMNS`` order); durable within flush_interval_s."""
        if rows:
            self._check_open()
            self._count(len(rows))
            spill = self.spill
            with spill.lock:
                if spill.active or self.in_memory + len(rows) > self.memory_samples:
                    if not spill.active:
                        log.warning("the database writer holds %d samples in memory (limit %d): new samples wait in %s "
                                    "until the database takes them", self.in_memory, self.memory_samples, spill.path)
                    spill.append(rows)  # after everything in memory and in the file: order is kept
                    return
                self.in_memory += len(rows)
                self.max_in_memory = max(self.max_in_memory, self.in_memory)
                self._queue.put(rows)

    @property
    def spilling(self) -> bool:
        """Samples wait in the spill file (memory is at its limit, the database is behind)."""
        return self.spill.active

    def _count(self, delta: int) -> None:
        with self._count_lock:
            self.unwritten += delta
            self.max_unwritten = max(self.max_unwritten, self.unwritten)
            if not self.backlog and self.unwritten > self.backlog_samples:
                self.backlog = True
                log.critical("the database writer is %d samples behind (limit %d): the disk is too slow or stalled; "
                             "nothing is dropped, check the disk and the log", self.unwritten, self.backlog_samples)
            elif self.backlog and self.unwritten <= self.backlog_samples // 2:
                self.backlog = False
                log.warning("the database writer caught up (%d samples waiting)", self.unwritten)

    def submit(self, fn: Callable[[sqlite3.Connection], T], *, retry: bool = False) -> "Future[T]":
        """Run ``fn(conn)`` in one transaction on the writer thread, after every queued sample.

        ``retry``: a record nobody waits for (a gap, an event): on a transient error (disk full,
        locked, I/O) it is kept, in order, and tried again with the samples instead of being lost.
        """
        call = _Call(fn, retry)
        try:
            self._check_open()
        except StorageError as exc:
            call.future.set_exception(exc)
            return call.future
        self._queue.put(call)
        return call.future

    def flush(self, timeout: float | None = 120.0) -> None:
        """Block until everything queued so far is committed."""
        self._check_open()
        marker = _Flush()
        self._queue.put(marker)
        marker.future.result(timeout)

    def close(self) -> None:
        if not self._closed and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._closed = True
        self.spill.close()
        self._conn.close()
        try:
            os.close(self._guard_fd)
        except OSError:
            pass

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and self.failed is None

    # -- the thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # never die silently: status shows it, callers fail fast
            self.failed = exc
            log.critical("database writer stopped: %r", exc, exc_info=True)

    def _loop(self) -> None:
        pending: list[SampleRow] = []
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                item = None
            if item is None:  # flush interval elapsed
                pending = self._commit_samples(pending)
                drained = self._drain_spill(pending, chunks=4)  # a few chunks, then a look at the queue
                self._retry_deferred(pending)
                deadline = self._next_deadline(pending, drained)
                continue
            if item is _STOP:
                pending = self._commit_samples(pending)
                self._drain_spill(pending)
                self._retry_deferred(pending)
                if pending or self._deferred or self.spill.active:
                    log.critical("stopping with %d samples and %d records not written (%s)%s", len(pending), len(self._deferred),
                                 self.failed, f"; {self.spill.rows} samples stay in {self.spill.path} for the next start"
                                 if self.spill.rows else "")
                return
            if isinstance(item, (list, tuple)):
                if deadline is None:
                    deadline = time.monotonic() + self.flush_interval_s
                if type(item) is not seals.CanonicalRows:
                    self._raw_rows += len(item)
                pending.extend(item)
                if len(pending) >= self.max_batch or self.backlog or time.monotonic() >= deadline:
                    pending = self._commit_samples(pending)
                    drained = self._drain_spill(pending, chunks=4)
                    self._retry_deferred(pending)
                    deadline = self._next_deadline(pending, drained)
                continue
            # A control call or a flush marker: commit samples first (spilled ones too) to keep ordering.
            pending = self._commit_samples(pending)
            drained = self._drain_spill(pending)
            self._retry_deferred(pending)
            waiting = self.spill.rows + len(self.spill.tail)
            if isinstance(item, _Flush):
                if pending or self._deferred or waiting:
                    item.future.set_exception(StorageError(
                        f"{len(pending) + waiting} samples and {len(self._deferred)} records are waiting for the database: "
                        f"{self.failed}"))
                else:
                    item.future.set_result(None)
            elif item.retry and (self._deferred or pending or waiting):
                self._deferred.append(item)  # behind the samples and records that wait: stored order is kept
            elif not self._run_call(item):
                log.error("cannot write a record (%s); keeping it and retrying with the samples", self.failed)
                self._deferred.append(item)
            deadline = self._next_deadline(pending, drained)

    def _next_deadline(self, pending: list[SampleRow], drained: bool) -> float | None:
        """When the loop must look again without a new item: now while the spill drains, later on a failure."""
        if drained and self.spill.active and not pending and self.in_memory == 0:
            return time.monotonic()  # more spilled rows to write back, the database takes them
        if pending or self._deferred or self.spill.active:
            return time.monotonic() + RETRY_S
        return None

    def _drain_spill(self, pending: list[SampleRow], chunks: int | None = None) -> bool:
        """Write spilled rows back, oldest first, once nothing older waits in memory.

        At most ``chunks`` chunks of ``max_batch`` rows (None: until the file is empty), so a long
        spill never keeps control calls waiting long.  False when the database refused a chunk.
        """
        done = 0
        while self.spill.active and not pending and self.in_memory == 0 and (chunks is None or done < chunks):
            rows, lines, offset, from_tail = self.spill.read(self.max_batch)
            if not lines and not rows:
                return True  # a line being appended right now: the next look takes it
            if self.spill.resumed and rows:
                rows = self._not_stored(rows)  # left by a crash: the chunk committed just before it may be stored
            left = self._commit_rows(list(rows), canonical=False) if rows else []  # read back from JSON: converted
            if left:
                return False
            self._count(-(lines if not from_tail else len(rows)))
            self.spill.done(lines if not from_tail else len(rows), offset, from_tail)
            done += 1
        return True

    def _not_stored(self, rows: Sequence[SampleRow]) -> list[SampleRow]:
        """Rows of a resumed spill file not in the database yet (same session and host time)."""
        out = []
        for row in rows:
            if self._conn.execute("SELECT 1 FROM spo2_samples WHERE session_id = ? AND host_utc_ms = ? LIMIT 1",
                                  (row[0], row[1])).fetchone() is None:
                out.append(row)
        if len(out) < len(rows):
            log.warning("%d rows of the spill file were stored before the last stop; not stored twice", len(rows) - len(out))
        return out

    def _seal_legacy_rows(self) -> None:
        """Samples stored before sealing existed (an older database) get one seal at start."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            sealed = seals.seal_new_rows(self._conn, at=time.time())
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        if sealed is not None:
            log.info("sealed the samples stored before this database had sample seals (seal %s)", sealed[0])

    # -- the file under us ------------------------------------------------------------
    def _file_gone(self) -> str | None:
        """Why the database file is no longer the one we write to (deleted, replaced), or None."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        except OSError:
            return None  # a transient error: SQLite will say if it matters
        if (st.st_dev, st.st_ino) != self._identity:
            return "replaced by another file"
        if os.fstat(self._guard_fd).st_nlink == 0:
            return "deleted"
        return None

    def _check_file(self) -> bool:
        """False once the file is gone: from then on samples go to the recovery journal, never into the void."""
        if self.lost is not None:
            return False
        why = self._file_gone()
        if why is None:
            return True
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.journal = self.path.with_name(f"{self.path.name}.recovery-{stamp}.jsonl")
        self.lost = StorageError(
            f"the database file {self.path} was {why} while recording; new samples are kept in {self.journal}; "
            "restore the database from its backup, then restart the collector"
        )
        self.failed = self.lost
        log.critical("%s", self.lost.message)
        return False

    def _journal(self, rows: Sequence[SampleRow]) -> None:
        """Append rows (``SAMPLE_COLUMNS`` order) to the recovery journal and sync it."""
        assert self.journal is not None
        with open(self.journal, "a", encoding="utf-8") as fh:
            fh.write(row_lines(rows))
            fh.flush()
            os.fsync(fh.fileno())
        self.samples_journaled += len(rows)

    def _commit_samples(self, rows: list[SampleRow]) -> list[SampleRow]:
        """Commit rows; returns the rows still to be written (kept for a retry on a transient error)."""
        if not rows:
            return rows
        left = self._commit_rows(rows, canonical=self._raw_rows == 0)
        self._count(len(left) - len(rows))  # written, journaled or refused: no longer waiting
        if not left:
            self._raw_rows = 0
        with self.spill.lock:
            self.in_memory -= len(rows) - len(left)
        return left

    def _commit_rows(self, rows: list[SampleRow], *, canonical: bool) -> list[SampleRow]:
        """``canonical``: every row is in stored form already (seals.CanonicalRows), so its seal skips the conversion."""
        if not self._check_file():
            try:
                self._journal(rows)
            except OSError as exc:
                log.critical("cannot write the recovery journal %s (%s); keeping %d samples in memory", self.journal, exc, len(rows))
                return rows
            return []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(INSERT_SAMPLE, rows)
            # The batch and its seal land together; rows the pipeline built in stored form skip the conversion.
            seals.seal_inserted(self._conn, rows, at=time.time(), canonical=canonical)
            self._conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._rollback()
            # One bad row must not cost the good ones: write them one by one, log the bad.
            log.error("sample batch of %d rows violates a constraint (%s); writing row by row", len(rows), exc)
            self._conn.execute("BEGIN IMMEDIATE")
            for row in rows:
                try:
                    self._conn.execute(INSERT_SAMPLE, row)
                    self.samples_committed += 1
                except sqlite3.Error as row_exc:
                    log.error("refused sample row %r: %s", row[:2], row_exc)
            seals.seal_new_rows(self._conn, at=time.time())
            self._conn.execute("COMMIT")
            self.commits += 1
            return []
        except (sqlite3.Error, OverflowError, ValueError, TypeError) as exc:
            self._rollback()
            self.failed = exc
            if isinstance(exc, sqlite3.OperationalError):
                # Disk full, locked for too long, I/O error: keep every row and try again.
                log.error("cannot commit %d samples (%s); keeping them and retrying", len(rows), exc)
                return rows
            log.error("sample batch of %d rows is malformed (%s); writing the good rows one by one", len(rows), exc)
            good = 0
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                for row in rows:
                    try:
                        self._conn.execute(INSERT_SAMPLE, row)
                        good += 1
                    except Exception as row_exc:
                        log.error("refused sample row %r: %s", row[:2], row_exc)
                seals.seal_new_rows(self._conn, at=time.time())
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc2:
                self._rollback()
                log.error("cannot commit the good rows of a malformed batch (%s); keeping them", exc2)
                return rows
            self.samples_committed += good
            return []
        self.samples_committed += len(rows)
        self.commits += 1
        self.failed = None
        return []

    def _retry_deferred(self, pending: list[SampleRow]) -> None:
        """Once samples commit again, the records kept back are written, oldest first."""
        if pending or not self._deferred:
            return
        n = len(self._deferred)
        while self._deferred:
            if not self._run_call(self._deferred[0]):
                return
            self._deferred.pop(0)
        if self.lost is None:  # a deleted database stays failed: its records went to callers as errors
            self.failed = None
        log.info("%d records kept back while the database could not be written are stored", n)

    def _run_call(self, call: _Call) -> bool:
        """Run a call; False when it was kept back for a retry."""
        if not call.started:
            if not call.future.set_running_or_notify_cancel():
                return True  # the caller gave up (cancelled) before it ran: do nothing
            call.started = True
        if not self._check_file():
            call.future.set_exception(self.lost or StorageError("the database file is gone"))
            return True
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            result = call.fn(self._conn)
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._rollback()
            if not call.retry:
                call.future.set_exception(exc)
                return True
            self.failed = exc
            return False
        except BaseException as exc:  # the caller gets the exception through the future
            self._rollback()
            call.future.set_exception(exc)
        else:
            call.future.set_result(result)
        return True

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

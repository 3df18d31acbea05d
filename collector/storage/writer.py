"""The single database writer.

One thread owns the only writing connection.  Samples are queued from the
event loop and committed in batches (at most ``flush_interval_s`` after they
arrive, so a received sample is durable within about a second); control
operations (sessions, gaps, audit rows) run as functions on the same thread and
commit immediately, together with any pending samples, so ordering is kept.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from collector.storage.db import connect, open_db

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
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()


class _Flush:
    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: Future[None] = Future()


_STOP = object()


class Writer:
    """Owns the writing connection; thread-safe entry points for everything else."""

    def __init__(self, path: Path | str, *, flush_interval_s: float = 0.5, max_batch: int = 20_000, synchronous: str = "FULL") -> None:
        open_db(path).conn.close()  # create + migrate before the thread starts
        self.path = Path(path)
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._conn = connect(self.path, check_same_thread=False, synchronous=synchronous)
        self.samples_committed = 0
        self.commits = 0
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="db-writer", daemon=True)
        self._thread.start()

    # -- entry points (any thread) -------------------------------------------------
    def add_samples(self, rows: Sequence[SampleRow]) -> None:
        """Queue sample rows (tuples in ``SAMPLE_COLUMNS`` order); durable within flush_interval_s."""
        if rows:
            self._queue.put(rows)

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> "Future[T]":
        """Run ``fn(conn)`` in one transaction on the writer thread, after every queued sample."""
        call = _Call(fn)
        self._queue.put(call)
        return call.future

    def flush(self, timeout: float | None = 120.0) -> None:
        """Block until everything queued so far is committed."""
        marker = _Flush()
        self._queue.put(marker)
        marker.future.result(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._conn.close()

    # -- the thread ------------------------------------------------------------------
    def _run(self) -> None:
        pending: list[SampleRow] = []
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                item = None
            if item is None:  # flush interval elapsed
                self._commit_samples(pending)
                pending, deadline = [], None
                continue
            if item is _STOP:
                self._commit_samples(pending)
                return
            if isinstance(item, (list, tuple)):
                if deadline is None:
                    deadline = time.monotonic() + self.flush_interval_s
                pending.extend(item)
                if len(pending) >= self.max_batch or time.monotonic() >= deadline:
                    self._commit_samples(pending)
                    pending, deadline = [], None
                continue
            # A control call or a flush marker: commit samples first to keep ordering.
            self._commit_samples(pending)
            pending, deadline = [], None
            if isinstance(item, _Flush):
                item.future.set_result(None)
            else:
                self._run_call(item)

    def _commit_samples(self, rows: list[SampleRow]) -> None:
        if not rows:
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(INSERT_SAMPLE, rows)
            self._conn.execute("COMMIT")
            self.samples_committed += len(rows)
            self.commits += 1
        except sqlite3.Error as exc:
            self._rollback()
            self.failed = exc
            # Keep the rows: a batch with one bad row must not lose the good ones.
            log.error("sample batch of %d rows failed (%s); retrying row by row", len(rows), exc)
            for row in rows:
                try:
                    self._conn.execute(INSERT_SAMPLE, row)
                    self.samples_committed += 1
                except sqlite3.Error as row_exc:
                    log.error("dropped sample row %r: %s", row[:2], row_exc)

    def _run_call(self, call: _Call) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            result = call.fn(self._conn)
            self._conn.execute("COMMIT")
        except BaseException as exc:  # the caller gets the exception through the future
            self._rollback()
            call.future.set_exception(exc)
        else:
            call.future.set_result(result)

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

"""Bytes of one device -> stored samples and live figures.

The same pipeline serves a live BLE session and a replayed capture, so a replay
reproduces exactly the rows the live session stored.  It is synchronous and
cheap per frame: the codec decodes (and, for BerryMed, reduces to one reading a
second) into events; a sample becomes a row tuple queued for the writer and
updates the O(1) live figures; lost packets become a gap; device replies go to
``on_device_event`` for the transport side to act on.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future
import logging
import time
from typing import Any, Callable, Iterable

from collector.oximetry.causes import BREAKING_CAUSES
from collector.storage import repo
from collector.storage.seals import CanonicalRows
from collector.storage.writer import SampleRow, Writer
from drivers.protocols.common import Flag, LostPackets, OximeterEvent, OximeterReading, Sample, feed_many
from drivers.protocols.registry import make_parser

log = logging.getLogger(__name__)

# Rows wait at most this long (real time) before they are queued for the writer,
# which commits at most flush_interval_s later: together well within a second.
HANDOVER_S = 0.1
TAIL_MEMO_LIMIT = 4096
_FROM_STORAGE = int(Flag.FROM_STORAGE)


def _real(x: float | None) -> float | None:
    """A REAL column's value as SQLite stores and returns it: a float, NULL for a missing or NaN value."""
    return None if x is None or x != x else float(x)


def row_tail(r: OximeterReading) -> tuple[Any, ...]:
    """The stored columns that depend on the reading alone (everything after session and time).

    In stored form (a float in every REAL column, NaN as NULL, plain ints): SQLite stores the same
    values either way, and rows built from these tails are :class:`~collector.storage.seals.CanonicalRows`,
    whose seal digest needs no per-row conversion."""
    return (None if r.device_time is None else str(r.device_time), _real(r.spo2_pct), _real(r.pulse_bpm), _real(r.pai_pct),
            int(r.valid), int(r.pulse_valid), int(r.flags),
            None if r.status_raw is None else int(r.status_raw), None if r.counter is None else int(r.counter))


def to_row(session_id: int, t: float, r: OximeterReading) -> SampleRow:
    return (session_id, round(t * 1000), *row_tail(r))


class ReadingPipeline:
    """Decode -> reduce -> store -> live, for one session and one device."""

    def __init__(
        self,
        session_id: int,
        protocol: str,
        writer: Writer,
        *,
        live: Any = None,
        on_event: Callable[[float, str, dict[str, Any]], None] | None = None,
        on_device_event: Callable[[OximeterEvent], None] | None = None,
        on_stored_record: Callable[[OximeterReading], None] | None = None,
        on_pending: Callable[[], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.protocol = protocol
        self.writer = writer
        self.parser = make_parser(protocol)
        self.live = live
        self.on_event = on_event
        self.on_device_event = on_device_event
        # Records the device sends back from its memory (RACP): they stand for their own device time,
        # not the receipt time, so they go to the back-fill, never straight to the samples.
        self.on_stored_record = on_stored_record
        # Who hands the rows over: by default the pipeline itself, at most HANDOVER_S after the last
        # hand-over, on the next frame.  With ``on_pending`` (the daemon's night service) it is called
        # after every frame that left rows waiting, and the caller takes them (``take_pending``) by its
        # deadline, one writer hand-over for every bed.
        self.on_pending = on_pending
        self.samples = 0
        self.lost_packets = 0
        self.last_sample_t: float | None = None
        self.last_reading: OximeterReading | None = None
        self._pending: CanonicalRows = CanonicalRows()
        self._handed_over = time.monotonic()
        # Stored columns per reading object: codecs hand out one frozen reading per distinct frame.
        # Keyed by id(); the entry holds the reading, so its id cannot be reused while the entry lives.
        self._tails: dict[int, tuple[OximeterReading, tuple[Any, ...]]] = {}

    # -- input -----------------------------------------------------------------------------
    def feed(self, t: float, characteristic: str, data: bytes) -> int:
        """Decode one notification; returns the number of frames decoded (the watchdog's signal)."""
        stats = self.parser.stats
        frames_before = stats.frames
        events = self.parser.feed(t, characteristic, data)
        for ev in events:
            if type(ev) is OximeterReading:  # received now: the per-second path
                if ev.kind != "continuous" and ev.flags & _FROM_STORAGE:
                    if self.on_stored_record is not None:
                        self.on_stored_record(ev)
                    else:
                        log.info("session %s: a record from device memory arrived unasked; not stored", self.session_id)
                    continue
                self._store(t, ev)
            elif type(ev) is Sample:  # a reading that stands for another time (a reduced second)
                self._store(ev.t, ev.reading)
            else:
                self._other(ev)
        if events:
            self._handover_due()
        return stats.frames - frames_before

    def _handover_due(self) -> None:
        """After new rows: tell the owner of the hand-over, or hand over when HANDOVER_S has passed."""
        if self.on_pending is not None:
            if self._pending:
                self.on_pending()
        elif time.monotonic() - self._handed_over >= HANDOVER_S:
            self.hand_over()

    def feed_many(self, characteristic: str, stamped: Iterable[tuple[float, bytes]]) -> int:
        """Decode many notifications of one characteristic (a replayed or buffered stretch) in one call.

        The same rows, gaps, events and live figures as :meth:`feed` on each in turn (a test holds
        them equal): the codec decodes the batch at once, a row is the session, the time and the
        reading's cached tail, and the live figures take the whole stretch in one loop.  Anything
        other than a reading received now (a lost-packet gap, a device reply, a record from device
        memory) goes through the per-frame code, with the live figures brought up to it first.
        """
        frames_before = self.parser.stats.frames
        pairs = feed_many(self.parser, characteristic, stamped)
        sid, tails, rows = self.session_id, self._tails, self._pending
        add_row = rows.append
        lt: list[float] = []
        ls: list[float | None] = []
        lv: list[int] = []
        n, last_t, last_r = 0, None, None
        for t, ev in pairs:
            r: OximeterReading
            if type(ev) is Sample:
                t, r = ev.t, ev.reading
            elif type(ev) is OximeterReading and not (ev.kind != "continuous" and ev.flags & _FROM_STORAGE):
                r = ev
            else:
                self._account(n, last_t, last_r, lt, ls, lv)
                n, last_t, last_r, lt, ls, lv = 0, None, None, [], [], []
                if type(ev) is OximeterReading:
                    self._stored_record(ev)
                else:
                    self._other(ev)
                rows = self._pending  # a gap or an event hands the pending rows over first
                add_row = rows.append
                continue
            hit = tails.get(id(r))
            if hit is not None and hit[0] is r:
                tail = hit[1]
            else:
                tail = self._tail(r)
            add_row((sid, round(t * 1000), *tail))
            lt.append(t)
            ls.append(r.spo2_pct)
            lv.append(tail[4])  # int(r.valid), already in the tail
            n += 1
            last_t, last_r = t, r
        self._account(n, last_t, last_r, lt, ls, lv)
        if pairs:
            self._handover_due()
        return self.parser.stats.frames - frames_before

    def _account(self, n: int, last_t: float | None, last_r: OximeterReading | None,
                 lt: list[float], ls: list[float | None], lv: list[int]) -> None:
        """Counters and live figures for a stretch of readings :meth:`feed_many` queued as rows."""
        if not n:
            return
        self.samples += n
        self.last_sample_t, self.last_reading = last_t, last_r
        if self.live is None:
            return
        try:
            events, rejected = self.live.add_many(lt, ls, lv)
        except Exception:  # the stored samples are what counts; live figures are provisional
            log.exception("session %s: live figures failed; samples are still stored", self.session_id)
            return
        for _, exc in rejected:
            log.error("session %s: live figures failed; samples are still stored: %s", self.session_id, exc)
        for _, event in events:
            self.emit(event)

    def _stored_record(self, ev: OximeterReading) -> None:
        if self.on_stored_record is not None:
            self.on_stored_record(ev)
        else:
            log.info("session %s: a record from device memory arrived unasked; not stored", self.session_id)

    def _other(self, ev: OximeterEvent) -> None:
        if isinstance(ev, LostPackets):
            self.lost_packets += ev.count
            if self.last_sample_t is not None:
                start_ms, end_ms = round(self.last_sample_t * 1000), round(ev.t * 1000)
                detail = f"{ev.count} packets"
                self._submit(lambda c: repo.add_gap(c, self.session_id, start_ms=start_ms, end_ms=end_ms, cause="lost_packets", detail=detail))
        if self.on_device_event is not None:
            self.on_device_event(ev)

    def hand_over(self, now: float | None = None) -> None:
        """Queue pending rows for the writer (batched: one queue item per ~0.1 s, not per frame)."""
        if self._pending:
            self.writer.add_samples(self.take_pending())
        self._handed_over = time.monotonic() if now is None else now

    def take_pending(self) -> CanonicalRows:
        """The rows waiting for the writer, now the caller's to queue (they leave the pipeline)."""
        rows, self._pending = self._pending, CanonicalRows()
        self._handed_over = time.monotonic()
        return rows

    def give_back(self, rows: CanonicalRows) -> None:
        """Rows taken but not queued (the writer refused them): they wait again, ahead of newer ones."""
        self._pending[:0] = rows

    def interrupt(self, t: float, cause: str) -> None:
        """The recording stops here (link lost, daemon stopping): end the hold of the last sample."""
        for ev in self.parser.end_of_input():
            if type(ev) is Sample:
                self._store(ev.t, ev.reading)
            elif type(ev) is OximeterReading:
                self._store(t, ev)
            else:
                self._other(ev)
        self.hand_over()
        if self.live is not None and cause in BREAKING_CAUSES:
            try:
                self.live.interrupt(t, cause)
            except Exception:
                log.exception("session %s: live figures failed at an interruption", self.session_id)

    def close(self, t: float) -> None:
        self.interrupt(t, "session_stopped")

    # -- output ----------------------------------------------------------------------------
    def _store(self, t: float, r: OximeterReading) -> None:
        """One reading: a pending row and the live figures (``feed`` hands over when one is due)."""
        hit = self._tails.get(id(r))
        if hit is not None and hit[0] is r:
            tail = hit[1]
        else:
            tail = self._tail(r)
        self._pending.append((self.session_id, round(t * 1000), *tail))
        self.samples += 1
        self.last_sample_t = t
        self.last_reading = r
        if self.live is not None:
            try:
                for event in self.live.add(t, r.spo2_pct, r.valid):
                    self.emit(event)
            except Exception:  # the stored samples are what counts; live figures are provisional
                log.exception("session %s: live figures failed; samples are still stored", self.session_id)

    def _tail(self, r: OximeterReading) -> tuple[Any, ...]:
        tail = row_tail(r)
        if len(self._tails) >= TAIL_MEMO_LIMIT:
            self._tails.clear()  # bounded: a codec that makes a new reading per frame costs a clear now and then
        self._tails[id(r)] = (r, tail)
        return tail

    def emit(self, event: Any) -> None:
        """Store an analysis event and tell the session (also for events back-filled records raise)."""
        detail = dataclasses.asdict(event)
        kind, t = detail.pop("kind"), detail.pop("t_s")
        self._submit(lambda c: repo.add_event(c, self.session_id, t_ms=int(round(t * 1000)), kind=kind, detail=detail))
        if self.on_event is not None:
            self.on_event(t, kind, detail)

    def _submit(self, fn: Callable[[Any], Any]) -> None:
        self.hand_over()  # keep stored order: samples first, then what they caused
        self.writer.submit(fn, retry=True).add_done_callback(self._log_failure)

    def _log_failure(self, fut: Future[Any]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.error("session %s: write failed: %s", self.session_id, exc)

"""Injected clocks: real time in production, virtual time in tests and the demo.

Everything that stamps a sample or waits uses a :class:`Clock`, never ``time`` or
``asyncio.sleep`` directly, so a whole night can run in seconds.

Host UTC labels every sample, but durations must not change when the wall clock
is stepped (NTP catching up after a resume, a technician fixing the time): the
system clock's ``now()`` is host UTC read once and then advanced by the
monotonic clock.  ``wall()`` is what the host says now; the difference between
the two is a clock step, which the daemon records (:class:`ClockStepWatch`) and
re-anchors only when no session is recording.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, AsyncIterator, Callable, Protocol

from drivers import clock as driver_clock


class Clock(driver_clock.Clock, Protocol):
    """The drivers' clock (``now()``, ``async sleep()``) plus what the collector needs."""

    def wall(self) -> float:
        """What the host's wall clock says now (it can step)."""
        ...

    def reanchor(self) -> None:
        """Make ``now()`` agree with ``wall()`` again (only when no recording spans the step)."""
        ...

    def frozen(self) -> contextlib.AbstractAsyncContextManager[None]:
        """A context in which virtual time does not advance (a no-op for real time)."""
        ...


class SystemClock:
    """Host UTC advanced by the monotonic clock, and real sleeps.

    ``wall_source``/``monotonic_source`` are injectable so a test can step the wall
    clock without touching the machine's.
    """

    def __init__(self, wall_source: Callable[[], float] = time.time,
                 monotonic_source: Callable[[], float] = time.monotonic) -> None:
        self._wall_source, self._mono_source = wall_source, monotonic_source
        self._anchor_wall = wall_source()
        self._anchor_mono = monotonic_source()

    def now(self) -> float:
        return self._anchor_wall + (self._mono_source() - self._anchor_mono)

    def wall(self) -> float:
        return self._wall_source()

    def reanchor(self) -> None:
        self._anchor_wall, self._anchor_mono = self._wall_source(), self._mono_source()

    async def sleep(self, seconds: float) -> None:
        import asyncio  # here, not at import time: CLI commands that never wait start faster

        await asyncio.sleep(max(0.0, seconds))

    def frozen(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Real time cannot be held; see :meth:`VirtualClock.frozen`."""
        return contextlib.nullcontext()


class VirtualClock:
    """Discrete-event clock: sleeping tasks are woken in deadline order.

    Time only moves when :meth:`run` advances it, to the earliest pending
    deadline.  With ``speed=math.inf`` it jumps immediately (tests); with a finite
    speed it waits ``delta / speed`` real seconds first (the demo's ``--speed``).
    """

    def __init__(self, start: float | None = None, speed: float = math.inf) -> None:
        import asyncio

        self._now = time.time() if start is None else float(start)
        self._wall_offset = 0.0
        self.speed = speed
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._freezes = 0
        self._thawed = asyncio.Event()
        self._thawed.set()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def step_wall(self, seconds: float) -> None:
        """Simulate a step of the host's wall clock (the timeline of ``now()`` goes on undisturbed)."""
        self._wall_offset += seconds

    def reanchor(self) -> None:
        """Virtual time never goes back: a backward step is kept as an offset of the wall reading."""
        if self._wall_offset > 0:
            self._now += self._wall_offset
            self._wall_offset = 0.0

    @contextlib.asynccontextmanager
    async def frozen(self) -> AsyncIterator[None]:
        """Hold virtual time still while the caller waits on something real.

        Waiting for the database writer or a radio scan takes real time; if the
        virtual clock ran on meanwhile, a simulated night would race ahead of
        the code that records it.  Never await virtual sleeps inside.
        """
        self._freezes += 1
        self._thawed.clear()
        try:
            yield
        finally:
            self._freezes -= 1
            if self._freezes == 0:
                self._thawed.set()

    def jump_to(self, t: float) -> None:
        """Move time forward (never back), e.g. past data stored by an earlier run."""
        self._now = max(self._now, t)

    async def sleep(self, seconds: float) -> None:
        import asyncio

        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self._now + max(0.0, seconds), next(self._seq), fut))
        self._wake.set()
        await fut

    async def run(self, until: float | None = None) -> None:
        """Advance time forever (or until ``until``); run as a background task."""
        import asyncio

        while until is None or self._now < until:
            # Let every ready task run to its next await before time moves.
            for _ in range(8):
                await asyncio.sleep(0)
            if self._freezes:
                await self._thawed.wait()
                continue
            while self._heap and self._heap[0][2].done():  # cancelled sleepers
                heapq.heappop(self._heap)
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = self._heap[0][0]
            if until is not None:
                deadline = min(deadline, until)
            if math.isfinite(self.speed) and deadline > self._now:
                await asyncio.sleep((deadline - self._now) / self.speed)
            self._now = max(self._now, deadline)
            while self._heap and self._heap[0][0] <= self._now:
                _, _, fut = heapq.heappop(self._heap)
                if not fut.done():
                    fut.set_result(None)


def utc_iso(t: float) -> str:
    """Epoch seconds -> UTC ISO-8601 with milliseconds and a Z.

    Rounded to the millisecond exactly as stored ``*_utc_ms`` columns are
    (``round(t * 1000)``), so a time written as text and read back lands on
    the same stored millisecond.
    """
    ms = round(t * 1000)
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc) + timedelta(milliseconds=ms % 1000)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_utc(s: str) -> float:
    """UTC ISO-8601 (Z or +00:00 or naive-as-UTC) -> epoch seconds."""
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


if TYPE_CHECKING:
    import asyncio

    # Never run: the type checker proves here that both clocks are what drivers/ expect.
    _system: driver_clock.Clock = SystemClock()
    _virtual: driver_clock.Clock = VirtualClock()
    _collector_system: Clock = SystemClock()
    _collector_virtual: Clock = VirtualClock()

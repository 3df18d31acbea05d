"""The daemon's side of the laptop: keep it awake while nights record, feed systemd's watchdog,
and record the clock's synchronisation with every session it opens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from collector.host import clock_sync, sd_notify
from collector.host.keep_awake import Blocker, KeepAwake

log = logging.getLogger(__name__)

#: How often the keep-awake lock and the clock state are re-checked without any event.
POLL_S = 30.0
NOT_READ = "not read yet"


class HostService:
    def __init__(self, daemon: Any, *, blocker: Blocker | None = None) -> None:
        self.daemon = daemon
        self.enabled = bool(daemon.config["host"]["keep_awake"])
        self.keep_awake = KeepAwake(blocker)
        self.clock = clock_sync.ClockSync(synchronised=None, source=NOT_READ)
        self._tasks: list[asyncio.Task[Any]] = []
        self._sync_lock = asyncio.Lock()
        self._wake = asyncio.Event()

    async def sync(self) -> None:
        """Hold the laptop awake exactly while some session records."""
        async with self._sync_lock:
            await self.keep_awake.want(self.enabled and self.daemon.recording())

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        """Any change (a device connected, a night ended) may start or end the need to stay awake."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # from a thread: the next poll sees the change
            return
        self._wake.set()
        if not self._tasks and not self.daemon.closing:  # a daemon used without resume (tests, the demo)
            self._tasks.append(loop.create_task(self.start(), name="host-start"))

    async def read_clock(self) -> clock_sync.ClockSync:
        self.clock = await asyncio.to_thread(clock_sync.read)
        return self.clock

    async def start(self) -> None:
        if any(t.get_name() == "host-keep-awake" for t in self._tasks):
            return
        self._tasks.append(asyncio.create_task(self._loop(), name="host-keep-awake"))
        await self.read_clock()
        if not self.clock.synchronised:
            log.warning("host clock: %s (%s); samples are labelled with it: run collector doctor",
                        "not synchronised" if self.clock.synchronised is False else "synchronisation unknown", self.clock.detail)
        interval = sd_notify.watchdog_interval_s()
        if interval is not None:
            self._tasks.append(asyncio.create_task(self._watchdog(interval), name="host-watchdog"))

    async def _loop(self) -> None:
        clock_every = 0
        while True:
            await self.sync()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            self._wake.clear()
            clock_every += 1
            if clock_every % 10 == 0:  # the clock's state changes slowly: every ~5 min is enough
                await self.read_clock()

    async def _watchdog(self, interval: float) -> None:
        """Pings while the event loop runs: a hung daemon is restarted by systemd (WatchdogSec)."""
        while True:
            sd_notify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.keep_awake.want(False)

    def status(self) -> dict[str, Any]:
        return {"keep_awake": self.keep_awake.status(), "clock_sync": self.clock.as_dict()}

    def session_facts(self) -> dict[str, Any]:
        """Stored in the settings of every session opened: the clock state the samples were labelled under."""
        if self.clock.source == NOT_READ:  # a session before the first background read: ask now (milliseconds)
            self.clock = clock_sync.read()
        return self.clock.as_dict()


def attach(daemon: Any) -> HostService:
    svc = HostService(daemon)
    daemon.services["host"] = svc
    daemon.listeners.append(svc.on_event)
    daemon.status_providers["host"] = svc.status
    daemon.session_facts["clock_sync"] = svc.session_facts

    async def on_start() -> None:
        await svc.start()

    daemon.startup_hooks.append(on_start)
    daemon.shutdown_hooks.append(svc.stop)
    return svc

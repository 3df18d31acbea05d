"""One data watchdog for every connected link of a daemon.

Why: a timer per bed wakes the event loop once per bed every few seconds, and each
asyncio wake-up costs far more CPU than the check it runs.  One task sleeps (on the
injected clock, so a virtual night keeps its timing) until the earliest silence
deadline of all links, checks them all (a few microseconds each) and sleeps again:
with 24 beds streaming at 1 Hz that is one wake-up every few seconds for the ward.
A frame only moves its link's deadline (no wake-up); the task never sleeps longer
than the shortest limit a link can have, so a link that connects meanwhile needs no
restart of it.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from drivers.clock import Clock

# Woken just past the deadline: the limit is "silent for more than", and a wake-up exactly at it
# would only find the link still within the limit and sleep again.
PAST_DEADLINE_S = 0.01
# No link's silence limit is shorter (drivers.ble.link): the task never sleeps longer, so a link that
# connects while it sleeps is always checked before its deadline.
MIN_LIMIT_S = 5.0


class Watched(Protocol):
    """What the watchdog reads of a link: its last frame time, its limit, and whom to tell."""

    last_frame_t: float | None
    silence_limit_s: float

    def silenced(self, t: float) -> None:
        """The link has had no frame for more than its limit at ``t``: end the connection."""
        ...


class SilenceWatch:
    """Links under watch while connected (``add`` / ``discard``); one sleeping task for all of them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._links: dict[int, Watched] = {}
        self._task: asyncio.Task[None] | None = None
        self.wakeups = 0

    def __len__(self) -> int:
        return len(self._links)

    def add(self, link: Watched) -> None:
        """Watch ``link`` from now on; its limit is never below ``MIN_LIMIT_S``, so the task, which never
        sleeps longer than that, wakes before the new link's deadline: no restart, no second task."""
        self._links[id(link)] = link
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ble-silence-watch")

    def discard(self, link: Watched) -> None:
        """Stop watching ``link`` (its connection ended); the task ends at its next wake-up when none is left."""
        self._links.pop(id(link), None)

    def close(self) -> None:
        """The daemon stops: no more checks."""
        self._links.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while self._links:
            now = self.clock.now()
            soonest: float | None = None
            for key, link in list(self._links.items()):
                last = link.last_frame_t if link.last_frame_t is not None else now
                if now - last > link.silence_limit_s:
                    del self._links[key]
                    link.silenced(now)
                    continue
                deadline = last + link.silence_limit_s
                if soonest is None or deadline < soonest:
                    soonest = deadline
            if soonest is None:
                break
            await self.clock.sleep(min(max(soonest - now, 0.0) + PAST_DEADLINE_S, MIN_LIMIT_S))
            self.wakeups += 1

"""One data watchdog for every connected link of a daemon.

Why: a timer per bed wakes the event loop once per bed every few seconds, and each
asyncio wake-up costs far more CPU than the check it runs.  One task sleeps (on the
injected clock, so a virtual night keeps its timing) until the earliest silence
deadline of all links, checks them all (a few microseconds each) and sleeps again:
with 24 beds streaming at 1 Hz that is one wake-up every few seconds for the ward.
A frame only moves its link's deadline (no wake-up); a link that connects with a
deadline earlier than the one slept for restarts the sleep.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from drivers.clock import Clock

# Woken just past the deadline: the limit is "silent for more than", and a wake-up exactly at it
# would only find the link still within the limit and sleep again.
PAST_DEADLINE_S = 0.01


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
        self._target: float | None = None  # the deadline the task sleeps until
        self.wakeups = 0

    def __len__(self) -> int:
        return len(self._links)

    def add(self, link: Watched) -> None:
        self._links[id(link)] = link
        deadline = self._deadline(link, self.clock.now())
        if self._task is not None and not self._task.done():
            if self._target is not None and deadline >= self._target:
                return  # the task wakes before this link's deadline anyway
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ble-silence-watch")

    def discard(self, link: Watched) -> None:
        self._links.pop(id(link), None)
        if not self._links and self._task is not None:
            self._task.cancel()
            self._task = None
            self._target = None

    @staticmethod
    def _deadline(link: Watched, now: float) -> float:
        last = link.last_frame_t if link.last_frame_t is not None else now
        return last + link.silence_limit_s

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
            self._target = soonest
            await self.clock.sleep(max(soonest - now, 0.0) + PAST_DEADLINE_S)
            self.wakeups += 1
        self._target = None

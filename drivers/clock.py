"""The time the drivers need, as a protocol of their own.

Drivers stamp bytes and wait out backoffs on an injected clock so a simulated night
runs in seconds; they declare here what they need from it rather than importing the
collector's clocks, so drivers/ stays usable (and testable) without the collector.
"""

from __future__ import annotations

import contextlib
from typing import Protocol


class TimeSource(Protocol):
    """Stamps only: what a sans-I/O codec needs (e.g. to date an ACK)."""

    def now(self) -> float:
        """Host time, UTC epoch seconds."""
        ...


class Clock(TimeSource, Protocol):
    """Stamps and waits: what a transport needs (reads are stamped, backoffs slept)."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time (virtual time in tests)."""
        ...

    def frozen(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold this clock's time while the caller waits on something real (a scan, a connect).

        A no-op for real time; a virtual clock must not run ahead of the radio.
        Never sleep on this clock inside.
        """
        ...

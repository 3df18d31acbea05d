"""What one Bluetooth adapter can take: a bed limit, and one connect at a time.

Adapters hold 5 to 7 links at most, and several connects started at once on one
adapter fail with ``le-connection-abort-by-local``: so the collector refuses a
bed past the limit before it creates a session, and every link connects under
its adapter's lock.  Pure bookkeeping, one instance per daemon (per event loop).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

DEFAULT_ADAPTER = "default"  # bleak's default adapter (hci0 on most laptops)


class AdapterFull(Exception):
    """Every slot of the adapter is taken; ``str()`` is the one line to show."""


@dataclass
class AdapterSlots:
    """Beds per adapter (``limit`` each) and one connect lock per adapter."""

    limit: int = 5
    _beds: dict[str, set[str]] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def reserve(self, bed: str, adapter: str = DEFAULT_ADAPTER) -> None:
        """Take a slot for ``bed`` (idempotent); raises :class:`AdapterFull` past the limit."""
        beds = self._beds.setdefault(adapter, set())
        if bed in beds:
            return
        if len(beds) >= self.limit:
            raise AdapterFull(
                f"the Bluetooth adapter already records {len(beds)} beds, the most it is set to hold "
                f"([ble] max_beds_per_adapter = {self.limit}); stop a night or add an adapter first"
            )
        beds.add(bed)

    def release(self, bed: str) -> None:
        for beds in self._beds.values():
            beds.discard(bed)

    def in_use(self, adapter: str = DEFAULT_ADAPTER) -> int:
        return len(self._beds.get(adapter, ()))

    def connecting(self, adapter: str = DEFAULT_ADAPTER) -> asyncio.Lock:
        """The lock a link holds while it connects (never while it streams)."""
        lock = self._locks.get(adapter)
        if lock is None:
            lock = self._locks[adapter] = asyncio.Lock()
        return lock

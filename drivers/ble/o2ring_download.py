"""Download the nights an O2Ring/Checkme O2 stored, over one connected client (transport only).

The exchange itself (which request follows which answer) is the sans-I/O
:class:`drivers.protocols.o2ring.NightDownload`; this only moves its bytes:
subscribe, write each request, hand every notification back.  Run it on a
connection of its own after the live night (the live link polls the same
characteristic), bounded by a timeout because a ring can stop answering.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Sequence

from bleak import BleakClient, BleakScanner
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import BaseBleakScanner
from bleak_retry_connector import establish_connection, get_device

from drivers.ble.adapters import AdapterSlots
from drivers.ble.link import DeviceNotFound
from drivers.clock import Clock

from drivers.protocols.o2ring import O2RING_NOTIFY_UUID, O2RING_WRITE_UUID, DownloadError, NightDownload


@dataclass(frozen=True)
class RingClockReading:
    """The ring's local clock and the host UTC at which its answer arrived (the measured offset)."""

    ring_local: datetime
    host_utc_s: float

    @property
    def offset_s(self) -> float:
        """Ring local minus host UTC, seconds (zone plus drift): ``utc = local - offset_s``."""
        return (self.ring_local - datetime(1970, 1, 1)).total_seconds() - self.host_utc_s


async def download_nights(client: BleakClient, *, wanted: Sequence[str] | None = None, timeout_s: float = 120.0,
                          now: Callable[[], float] | None = None,
                          on_clock: Callable[[RingClockReading], None] | None = None) -> dict[str, bytes]:
    """Every stored night (or the ``wanted`` names) as ``{file name: bytes}``; DownloadError or TimeoutError on failure.

    With ``now`` (the host UTC clock) and ``on_clock``, the ring's clock as read in
    its information answer is reported with the host time it arrived.
    """
    dl = NightDownload(wanted)
    outbox: asyncio.Queue[bytes] = asyncio.Queue()
    failed: list[BaseException] = []
    finished = asyncio.Event()

    def on_notify(_char: Any, data: bytearray) -> None:
        had_clock = dl.ring_clock is not None
        try:
            for req in dl.feed(bytes(data)):
                outbox.put_nowait(req)
        except DownloadError as exc:
            failed.append(exc)
        if not had_clock and dl.ring_clock is not None and now is not None and on_clock is not None:
            on_clock(RingClockReading(dl.ring_clock, now()))
        if dl.done or failed:
            finished.set()

    async def pump() -> None:
        while not finished.is_set():
            req = await outbox.get()
            await client.write_gatt_char(O2RING_WRITE_UUID, req, response=False)

    await client.start_notify(O2RING_NOTIFY_UUID, on_notify)
    outbox.put_nowait(dl.start())
    writer = asyncio.create_task(pump())
    waiter = asyncio.create_task(finished.wait())
    try:
        # A download is radio time: the timeout is real time, as for a connect.
        done, _ = await asyncio.wait({writer, waiter}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise asyncio.TimeoutError(f"the ring did not finish the download within {timeout_s:g} s")
        if writer in done and writer.exception() is not None:
            raise DownloadError(f"writing a request failed: {writer.exception()}")
    finally:
        for task in (writer, waiter):
            task.cancel()
        await asyncio.gather(writer, waiter, return_exceptions=True)
        try:
            await client.stop_notify(O2RING_NOTIFY_UUID)
        except Exception:  # the link may already be gone; the files are what matters
            pass
    if failed:
        raise failed[0]
    return dl.files


async def download_from(address: str, clock: Clock, *, slots: AdapterSlots, backend: type[BaseBleakClient] | None = None,
                        scanner_backend: type[BaseBleakScanner] | None = None, connect_timeout_s: float = 20.0,
                        scan_timeout_s: float = 15.0, timeout_s: float = 120.0,
                        ) -> tuple[dict[str, bytes], RingClockReading | None]:
    """Connect to the ring at ``address`` on a connection of its own, download its nights, disconnect.

    Connects as the live link does (a fresh device object, bleak-retry-connector,
    one connect at a time per adapter); everything here is radio time, so the
    clock is held.  Returns the files and the ring's clock reading.
    """
    readings: list[RingClockReading] = []
    async with clock.frozen():
        device = await _find(address, backend, scanner_backend, scan_timeout_s)
        async with slots.connecting():
            client = await establish_connection(BleakClient, device, address, max_attempts=2,
                                                timeout=max(10.0, connect_timeout_s), backend=backend)
        try:
            files = await download_nights(client, timeout_s=timeout_s, now=clock.now, on_clock=readings.append)
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), 5.0)
            except Exception:  # the files are in hand; a slow disconnect changes nothing
                pass
    return files, (readings[0] if readings else None)


async def _find(address: str, backend: type[BaseBleakClient] | None, scanner_backend: type[BaseBleakScanner] | None,
                scan_timeout_s: float) -> BLEDevice:
    if backend is not None:
        return BLEDevice(address, address, {})  # a plug-in backend resolves addresses itself
    current = await get_device(address)
    if current is not None:
        return current
    extra: BleakScanner.ExtraArgs = {}
    if scanner_backend is not None:
        extra["backend"] = scanner_backend
    found = await BleakScanner.find_device_by_address(address, timeout=scan_timeout_s, **extra)
    if found is None:
        raise DeviceNotFound(f"no advertisement from {address!r} within {scan_timeout_s:g} s")
    return found

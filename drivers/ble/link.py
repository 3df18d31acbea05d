"""Keeps one BLE oximeter connected for as long as a session needs it.

Transport only: it finds the device, connects, subscribes, hands every
notification's bytes to ``on_data`` and reports link state.  It never decodes.

Connecting follows what BlueZ needs: a fresh ``BLEDevice`` per attempt (the
stack's current object for the address, or a new scan when the stack forgot
it), stale connections a crash left behind closed once at start, and
``bleak-retry-connector``'s ``establish_connection`` (a new client per
connection, retries by error kind, pairing when the profile asks for it), one
connect at a time per adapter.  A data watchdog (one for all of a daemon's links)
forces a reconnect when the link goes silent while the stack still says
"connected", and every wait of our own uses the injected clock.  ``backend``/``scanner_backend`` are passed to
bleak unchanged (None: the platform's own stack); that is how the simulator
plugs in.  A polled device (the O2Ring answers only when asked) gets its
profile's request written every period while connected; a failed write stops the
polling and the watchdog reconnects.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from bleak import BleakClient, BleakScanner
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError
from bleak_retry_connector import close_stale_connections, establish_connection, get_device

from drivers.ble.adapters import AdapterSlots
from drivers.ble.power import adapter_powered, says_adapter_off
from drivers.ble.silence import MIN_LIMIT_S, SilenceWatch
from drivers.clock import Clock
from drivers.protocols.common import DeviceProfile

log = logging.getLogger(__name__)

DIS_STRINGS = {
    "model": "00002a24-0000-1000-8000-00805f9b34fb",
    "serial_number": "00002a25-0000-1000-8000-00805f9b34fb",
    "firmware": "00002a26-0000-1000-8000-00805f9b34fb",
}


class DeviceNotFound(BleakError):
    """No advertisement matched the target within the scan timeout."""


@dataclass(frozen=True)
class LinkTarget:
    """What identifies the wanted device: an address (MAC, macOS UUID, simulator id) or a name."""

    spec: str
    service_uuid: str | None = None

    def matches(self, device: BLEDevice, adv: AdvertisementData) -> bool:
        wanted = self.spec.strip().lower()
        if device.address.lower() == wanted:
            return True
        names = {n.lower() for n in (device.name, adv.local_name) if n}
        if wanted in names:
            return True
        if wanted.startswith("service:"):
            return wanted.removeprefix("service:") in [u.lower() for u in adv.service_uuids]
        return False


@dataclass
class LinkStats:
    connects: int = 0
    failed_attempts: int = 0
    disconnects: int = 0
    watchdog_resets: int = 0
    silent_connections: int = 0  # connections that ended before any notification decoded to a frame
    last_error: str | None = None
    info: dict[str, str] = field(default_factory=dict)


DataHandler = Callable[[float, str, bytes], int]  # (host time, characteristic, bytes) -> frames decoded


class GattSession:
    """The connected client as a session's own procedure sees it (e.g. a RACP download): bytes only.

    Subscribed data goes to the link's ``on_data`` like every notification; waits are radio
    time (the link holds the virtual clock while the procedure runs, before live data starts).
    """

    def __init__(self, link: "OximeterLink", client: BleakClient) -> None:
        self._link = link
        self._client = client

    def has(self, uuid: str) -> bool:
        return self._client.services.get_characteristic(uuid) is not None

    async def subscribe(self, uuid: str) -> None:
        await self._client.start_notify(uuid, functools.partial(self._link._notify, self._client))

    async def unsubscribe(self, uuid: str) -> None:
        await self._client.stop_notify(uuid)

    async def write(self, uuid: str, data: bytes) -> None:
        await self._client.write_gatt_char(uuid, data, response=True)

    async def wait(self, event: asyncio.Event, timeout_s: float) -> None:
        """Until ``event`` is set; raises :class:`asyncio.TimeoutError` after ``timeout_s`` of real time."""
        await asyncio.wait_for(event.wait(), timeout_s)


SetupProcedure = Callable[[GattSession], Awaitable[None]]


class OximeterLink:
    """One device, reconnected forever once it has connected (or until cancelled)."""

    def __init__(
        self,
        target: LinkTarget,
        profile: DeviceProfile,
        clock: Clock,
        *,
        on_data: DataHandler,
        on_connected: Callable[[float, dict[str, str]], None],
        on_lost: Callable[[float, str, float | None], None],
        backend: type[BaseBleakClient] | None = None,
        scanner_backend: type[BaseBleakScanner] | None = None,
        connect_timeout_s: float = 20.0,
        scan_timeout_s: float = 15.0,
        watchdog_periods: float = 5.0,
        backoff_s: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0),
        disconnect_timeout_s: float = 5.0,
        connect_attempts: int = 2,
        slots: AdapterSlots | None = None,
        on_setup: SetupProcedure | None = None,
        watchdog: SilenceWatch | None = None,
    ) -> None:
        self.target = target
        self.profile = profile
        self.clock = clock
        self.on_data = on_data
        self.on_connected = on_connected
        self.on_lost = on_lost
        self.backend = backend
        self.scanner_backend = scanner_backend
        self.connect_timeout_s = max(10.0, connect_timeout_s)  # BlueZ resolves services on first connect
        self.scan_timeout_s = scan_timeout_s
        self.silence_limit_s = max(watchdog_periods * profile.expected_period_s, MIN_LIMIT_S)
        self.backoff_s = backoff_s
        self.disconnect_timeout_s = disconnect_timeout_s
        self.connect_attempts = max(1, connect_attempts)
        self.slots = slots or AdapterSlots()
        self.on_setup = on_setup  # runs after the reads, before live notifications start
        # The daemon shares one watchdog between its links (one timer for the ward); alone, a link has its own.
        self.watchdog = watchdog if watchdog is not None else SilenceWatch(clock)
        self._silent = False  # the watchdog ended the current connection
        self.stats = LinkStats()
        self.state = "searching"
        self.address: str | None = None
        self.last_frame_t: float | None = None
        self.connection_frames = 0  # notifications decoded to frames on the current (or last) connection
        self.connected_once = asyncio.Event()
        self._client: BleakClient | None = None
        self._lost = asyncio.Event()
        self._lost_at = 0.0
        self._stale_closed = False
        self._rescan = False  # after the adapter was off: scan afresh, BlueZ's device objects are stale
        self.adapter_poll_s = 2.0

    # -- public ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, stream, and reconnect with backoff until cancelled.

        A connection that ended without one frame counts as a failed attempt: a device that
        accepts the connection but never sends (or a stack that says "connected" to nothing)
        would otherwise be reconnected at once, every few seconds, all night.  The back-off
        grows along ``backoff_s`` and stays at its last (largest) step.
        """
        failures = 0
        try:
            while True:
                try:
                    await self._session()
                    if self.connection_frames:
                        failures = 0
                    else:
                        failures += 1
                        self.stats.silent_connections += 1
                        log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                                "%s: connected but no data came; retrying with back-off", self.target.spec)
                except (BleakError, asyncio.TimeoutError, OSError, EOFError) as exc:
                    if says_adapter_off(exc):
                        await self._wait_for_adapter()
                        continue
                    failures += 1
                    self.stats.failed_attempts += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    # The first failure of a run is worth a warning; the retries that follow are not.
                    log.log(logging.WARNING if failures == 1 else logging.INFO,
                            "%s: connection attempt failed (%s); retrying", self.target.spec, self.stats.last_error)
                self.state = "reconnecting" if self.connected_once.is_set() else "searching"
                await self.clock.sleep(self.backoff_s[min(failures, len(self.backoff_s) - 1)] if failures else 0.0)
        finally:
            self.state = "closed"
            await self._close()

    # -- one connection ------------------------------------------------------------------------
    async def _session(self) -> None:
        device = await self._find()
        if not self._stale_closed:
            # A crash can leave the device connected in BlueZ, and most oximeters accept one central.
            await close_stale_connections(device)
            self._stale_closed = True
        self._lost = asyncio.Event()
        self._silent = False
        self.connection_frames = 0
        self.state = "connecting"
        # Parallel connects on one adapter abort each other; a connect takes radio (real) time.
        async with self.slots.connecting(), self.clock.frozen():
            client = await establish_connection(
                BleakClient, device, self.target.spec, disconnected_callback=self._on_disconnect,
                max_attempts=self.connect_attempts, pair=self.profile.pair,
                timeout=self.connect_timeout_s, backend=self.backend,
            )
            self._client = client
            try:
                self.address = client.address
                info = await self._read_info(client)
                for uuid in self.profile.read_uuids:
                    try:
                        self.on_data(self.clock.now(), uuid, bytes(await client.read_gatt_char(uuid)))
                    except BleakError as exc:
                        log.info("%s: optional read %s failed: %s", self.target.spec, uuid, exc)
                if self.on_setup is not None:
                    await self.on_setup(GattSession(self, client))
                for uuid in self.profile.notify_uuids:
                    await client.start_notify(uuid, functools.partial(self._notify, client))
                for uuid, payload in self.profile.start_writes:
                    await client.write_gatt_char(uuid, payload, response=True)
            except BaseException:
                # Never leave a half-set-up connection behind: most oximeters accept one central.
                await self._close()
                raise
        connected_at = self.clock.now()
        self.last_frame_t = connected_at
        self.state = "connected"
        self.stats.connects += 1
        self.stats.info = info
        self.connected_once.set()
        self.on_connected(connected_at, info)
        poller = asyncio.create_task(self._poll(client)) if self.profile.poll is not None else None
        try:
            cause = await self._watch()
        finally:
            if poller is not None:
                poller.cancel()
                await asyncio.gather(poller, return_exceptions=True)
        self.state = "lost"
        if cause == "device_disconnected" and self.backend is None and await self._adapter_powered() is False:
            cause = "adapter_off"  # the laptop slept or Bluetooth was switched off: not the device's doing
        self.on_lost(self._lost_at if cause in ("device_disconnected", "adapter_off") else self.clock.now(), cause,
                     self.last_frame_t)
        await self._close()
        if cause == "adapter_off":
            await self._wait_for_adapter()

    async def _adapter_powered(self) -> bool | None:
        if self.backend is not None:
            return None  # a plug-in backend (the simulator) has no BlueZ adapter to ask
        async with self.clock.frozen():  # asking the stack is real time
            return await adapter_powered()

    async def _wait_for_adapter(self) -> None:
        """Until BlueZ says the adapter is powered again (virtual-clock polls); the next find scans afresh."""
        self._rescan = True
        while await self._adapter_powered() is False:
            self.state = "adapter_off"
            await self.clock.sleep(self.adapter_poll_s)
        log.info("%s: the Bluetooth adapter is powered; scanning again", self.target.spec)

    async def _find(self) -> BLEDevice:
        """A fresh device object for this attempt (a stale one makes BlueZ answer "not found")."""
        if self.address is not None and not self._rescan:
            if self.backend is not None:
                return BLEDevice(self.address, self.target.spec, {})  # a plug-in backend resolves addresses itself
            # The stack's current object for the address; None when it dropped it, then scan again.
            current = await get_device(self.address)
            if current is not None:
                return current
        # Only what is set: bleak's own default stands for an unset backend.
        extra: BleakScanner.ExtraArgs = {}
        if self.scanner_backend is not None:
            extra["backend"] = self.scanner_backend
        if self.target.service_uuid:
            extra["service_uuids"] = [self.target.service_uuid]
        target = self.target if self.address is None else LinkTarget(self.address)
        async with self.clock.frozen():  # a scan takes radio (real) time
            found = await BleakScanner.find_device_by_filter(target.matches, timeout=self.scan_timeout_s, **extra)
        if found is None:
            raise DeviceNotFound(f"no advertisement from {self.target.spec!r} within {self.scan_timeout_s:g} s")
        self._rescan = False
        return found

    async def _poll(self, client: BleakClient) -> None:
        """A polled device (O2Ring) answers only when asked: write its request every period.

        A failed write ends the polling; the watchdog then sees the silence and reconnects.
        """
        assert self.profile.poll is not None
        uuid, request, period_s = self.profile.poll
        while client is self._client:
            try:
                async with self.clock.frozen():  # a write is radio (real) time, like a connect
                    await client.write_gatt_char(uuid, request, response=False)
            except (BleakError, OSError) as exc:
                log.info("%s: poll write failed: %s", self.target.spec, exc)
                return
            await self.clock.sleep(period_s)

    async def _read_info(self, client: BleakClient) -> dict[str, str]:
        info = {"address": client.address, "name": client.name}
        for key, uuid in DIS_STRINGS.items():
            try:
                raw = await client.read_gatt_char(uuid)
            except (BleakError, KeyError, ValueError):
                continue
            info[key] = bytes(raw).decode("utf-8", "replace").strip("\x00 ").strip()
        return info

    def _notify(self, client: BleakClient, characteristic: Any, data: bytearray) -> None:
        if client is not self._client:
            return  # a late notification from a client we already replaced
        now = self.clock.now()
        uuid = characteristic.uuid if hasattr(characteristic, "uuid") else str(characteristic)  # no str() per frame
        if self.on_data(now, uuid, bytes(data)) > 0:
            self.last_frame_t = now
            self.connection_frames += 1

    def _on_disconnect(self, client: BleakClient) -> None:
        if client is not self._client:
            return  # a late callback from a client we already replaced
        self._lost_at = self.clock.now()
        self.stats.disconnects += 1
        self._lost.set()

    def silenced(self, t: float) -> None:
        """The watchdog's call: no frame for more than ``silence_limit_s`` (a disconnect seen first wins)."""
        if not self._lost.is_set():
            self._silent = True
            self._lost.set()

    async def _watch(self) -> str:
        """Return why the connection ended: the stack said so, or the data stopped.

        The link waits on one event, set by the stack's disconnect callback or by the watchdog
        (:class:`~drivers.ble.silence.SilenceWatch`, shared by the daemon's links), which wakes
        at the earliest silence deadline of all links: frames only move the deadline.
        """
        self.watchdog.add(self)
        try:
            await self._lost.wait()
        finally:
            self.watchdog.discard(self)
        if self._silent:
            self.stats.watchdog_resets += 1
            return "watchdog_silence"
        return "device_disconnected"

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.disconnect(), self.disconnect_timeout_s)
        except (BleakError, asyncio.TimeoutError, OSError) as exc:
            log.info("%s: disconnect did not complete cleanly: %s", self.target.spec, exc)

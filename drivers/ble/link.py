"""Keeps one BLE oximeter connected for as long as a session needs it.

Transport only: it finds the device, connects (a new ``BleakClient`` per
attempt), subscribes, hands every notification's bytes to ``on_data`` and
reports link state.  It never decodes.  A data watchdog forces a reconnect
when the link goes silent while the stack still says "connected", and every
wait uses the injected clock.  ``backend``/``scanner_backend`` are passed to
bleak unchanged: that is how the simulator plugs in.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from bleak import BleakClient, BleakScanner
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

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
    last_error: str | None = None
    info: dict[str, str] = field(default_factory=dict)


DataHandler = Callable[[float, str, bytes], int]  # (host time, characteristic, bytes) -> frames decoded


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
        self.silence_limit_s = max(watchdog_periods * profile.expected_period_s, 5.0)
        self.backoff_s = backoff_s
        self.disconnect_timeout_s = disconnect_timeout_s
        self.stats = LinkStats()
        self.state = "searching"
        self.address: str | None = None
        self.last_frame_t: float | None = None
        self.connected_once = asyncio.Event()
        self._client: BleakClient | None = None
        self._lost = asyncio.Event()
        self._lost_at = 0.0

    # -- public ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, stream, and reconnect with backoff until cancelled."""
        failures = 0
        try:
            while True:
                try:
                    await self._session()
                    failures = 0
                except (BleakError, asyncio.TimeoutError, OSError, EOFError) as exc:
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
        self._lost = asyncio.Event()
        client = BleakClient(
            device, disconnected_callback=self._on_disconnect, timeout=self.connect_timeout_s, backend=self.backend
        )
        self._client = client
        self.state = "connecting"
        try:
            await client.connect()
            self.address = client.address
            info = await self._read_info(client)
            for uuid in self.profile.read_uuids:
                try:
                    self.on_data(self.clock.now(), uuid, bytes(await client.read_gatt_char(uuid)))
                except BleakError as exc:
                    log.info("%s: optional read %s failed: %s", self.target.spec, uuid, exc)
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
        cause = await self._watch()
        self.state = "lost"
        self.on_lost(self._lost_at if cause == "device_disconnected" else self.clock.now(), cause, self.last_frame_t)
        await self._close()

    async def _find(self) -> BLEDevice | str:
        # Once connected we know the address (on macOS the per-host UUID): reconnect
        # to it directly, and let the backend's connect timeout bound the wait.
        if self.address is not None:
            return self.address
        # Only what is set: bleak's own default stands for an unset backend.
        extra: BleakScanner.ExtraArgs = {}
        if self.scanner_backend is not None:
            extra["backend"] = self.scanner_backend
        if self.target.service_uuid:
            extra["service_uuids"] = [self.target.service_uuid]
        found = await BleakScanner.find_device_by_filter(self.target.matches, timeout=self.scan_timeout_s, **extra)
        if found is None:
            raise DeviceNotFound(f"no advertisement from {self.target.spec!r} within {self.scan_timeout_s:g} s")
        return found

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
        uuid = getattr(characteristic, "uuid", str(characteristic))
        if self.on_data(now, uuid, bytes(data)) > 0:
            self.last_frame_t = now

    def _on_disconnect(self, client: BleakClient) -> None:
        if client is not self._client:
            return  # a late callback from a client we already replaced
        self._lost_at = self.clock.now()
        self.stats.disconnects += 1
        self._lost.set()

    async def _watch(self) -> str:
        """Return why the connection ended: the stack said so, or the data stopped."""
        check_every = min(1.0, self.silence_limit_s / 2)
        while True:
            if self._lost.is_set():
                return "device_disconnected"
            if self.last_frame_t is not None and self.clock.now() - self.last_frame_t > self.silence_limit_s:
                self.stats.watchdog_resets += 1
                return "watchdog_silence"
            await self.clock.sleep(check_every)

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.disconnect(), self.disconnect_timeout_s)
        except (BleakError, asyncio.TimeoutError, OSError) as exc:
            log.info("%s: disconnect did not complete cleanly: %s", self.target.spec, exc)

"""A bleak backend that serves simulated oximeters.

The collector's BLE driver is handed ``air.client_backend`` / ``air.scanner_backend``
instead of the platform backend; everything above bleak (discovery, connect,
GATT reads, notifications, disconnect callbacks) runs the production code path.
Devices play their scenario on the injected clock, so a night runs in seconds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError

from collector.clock import Clock
from simulators.oximeter import SimulatedOximeter

log = logging.getLogger(__name__)


class SimulatedAir:
    """The radio neighbourhood: the simulated devices a scan or a connect can reach."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.devices: dict[str, SimulatedOximeter] = {}
        air = self

        class _Client(SimulatedClientBackend):
            _air = air

        class _Scanner(SimulatedScannerBackend):
            _air = air

        self.client_backend: type[BaseBleakClient] = _Client
        self.scanner_backend: type[BaseBleakScanner] = _Scanner

    def add(self, device: SimulatedOximeter) -> SimulatedOximeter:
        self.devices[device.address.upper()] = device
        return device

    def find(self, address: str) -> SimulatedOximeter | None:
        return self.devices.get(address.upper())

    def reachable(self) -> list[SimulatedOximeter]:
        return [d for d in self.devices.values() if d.reachable]


class SimulatedScannerBackend(BaseBleakScanner):
    _air: SimulatedAir

    def __init__(self, detection_callback: Any = None, service_uuids: list[str] | None = None, scanning_mode: str = "active", **kwargs: Any) -> None:
        super().__init__(detection_callback, service_uuids)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Devices advertise repeatedly; scanning is radio time, so this loop uses real time.
        self._task = asyncio.create_task(self._advertise())

    async def _advertise(self) -> None:
        while True:
            await asyncio.sleep(0)  # let the caller register its detection callback first
            self._emit_once()
            await asyncio.sleep(0.02)

    def _emit_once(self) -> None:
        for dev in self._air.reachable():
            adv = AdvertisementData(
                local_name=dev.name,
                manufacturer_data={},
                service_data={},
                service_uuids=[dev.profile.service_uuid],
                tx_power=None,
                rssi=-60,
                platform_data=(),
            )
            if not self.is_allowed_uuid(adv.service_uuids):
                continue
            device = self.create_or_update_device(dev.address, dev.address, dev.name, {"simulated": True}, adv)
            self.call_detection_callbacks(device, adv)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class SimulatedClientBackend(BaseBleakClient):
    _air: SimulatedAir

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kwargs.get("disconnected_callback"),
            timeout=kwargs.get("timeout", 10.0),
        )
        self._device: SimulatedOximeter | None = None
        self._connected = False
        self._chars: dict[str, BleakGATTCharacteristic] = {}

    @property
    def name(self) -> str:
        return self._device.name if self._device else self.address

    @property
    def mtu_size(self) -> int:
        return 185

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def connect(self, pair: bool = False, **kwargs: Any) -> None:
        device = self._air.find(self.address)
        if device is None:
            raise BleakDeviceNotFoundError(self.address, f"Device with address {self.address} was not found.")
        if not device.reachable:
            # A connect is radio time, which the collector holds its virtual clock for: fail at once.
            raise BleakError(f"{self.address}: connection timed out (device out of range)")
        self._device = device
        self.services = self._build_services(device)
        self._connected = True
        device.attach(self)

    def _build_services(self, device: SimulatedOximeter) -> BleakGATTServiceCollection:
        collection = BleakGATTServiceCollection()
        handle = 1
        for service_uuid, chars in device.gatt().items():
            service = BleakGATTService(None, handle, service_uuid)
            collection.add_service(service)
            handle += 1
            for char_uuid, props in chars.items():
                char = BleakGATTCharacteristic(None, handle, char_uuid, list(props), lambda: 182, service)
                collection.add_characteristic(char)
                self._chars[char_uuid] = char
                handle += 2
        return collection

    def lost(self) -> None:
        """Called by the device when the link drops on its side."""
        if not self._connected:
            return
        self._connected = False
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        if self._device is not None:
            self._device.detach(self)
        self._connected = False

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def unpair(self) -> None:
        return None

    def _require(self) -> SimulatedOximeter:
        if not self._connected or self._device is None:
            raise BleakError("Not connected")
        return self._device

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, **kwargs: Any) -> bytearray:
        return bytearray(self._require().read(characteristic.uuid))

    async def read_gatt_descriptor(self, descriptor: Any, **kwargs: Any) -> bytearray:
        raise BleakError("descriptors are not simulated")

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: Any, response: bool) -> None:
        self._require().write(characteristic.uuid, bytes(data))

    async def write_gatt_descriptor(self, descriptor: Any, data: Any) -> None:
        raise BleakError("descriptors are not simulated")

    async def start_notify(self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any) -> None:
        self._require().subscribe(self, characteristic.uuid, callback)

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        if self._device is not None:
            self._device.unsubscribe(self, characteristic.uuid)


NotifySink = Callable[[bytearray], None]

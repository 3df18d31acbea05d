"""Discovery: what oximeters are in range, and which protocol each speaks."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner

from drivers.ble.link import LinkTarget
from drivers.protocols.registry import guess_protocol


@dataclass(frozen=True)
class FoundDevice:
    address: str
    name: str | None
    rssi: int | None
    service_uuids: tuple[str, ...]
    protocol: str | None  # None: advertises no service we know

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _found(device: BLEDevice, adv: AdvertisementData) -> FoundDevice:
    return FoundDevice(device.address, device.name or adv.local_name, adv.rssi, tuple(adv.service_uuids), guess_protocol(adv.service_uuids))


async def scan(timeout_s: float = 5.0, *, backend: type[BaseBleakScanner] | None = None, oximeters_only: bool = True) -> list[FoundDevice]:
    extra: BleakScanner.ExtraArgs = {} if backend is None else {"backend": backend}  # unset: bleak's default
    found = await BleakScanner.discover(timeout=timeout_s, return_adv=True, **extra)
    out = [_found(device, adv) for device, adv in found.values()]
    return sorted((d for d in out if d.protocol or not oximeters_only), key=lambda d: -(d.rssi or -999))


async def find(target: LinkTarget, timeout_s: float, *, backend: type[BaseBleakScanner] | None = None) -> FoundDevice | None:
    """The first advertisement matching ``target`` within ``timeout_s`` (real seconds: radio time)."""
    async with BleakScanner(backend=backend) as scanner:
        try:
            async with asyncio.timeout(timeout_s):
                async for device, adv in scanner.advertisement_data():
                    if target.matches(device, adv):
                        return _found(device, adv)
        except TimeoutError:
            return None
    return None

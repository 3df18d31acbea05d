"""Is the Bluetooth adapter powered?  Asked of BlueZ through bleak's own D-Bus view.

Why: after a laptop resumes from sleep (or someone switches Bluetooth off) BlueZ
reports the adapter ``Powered = false`` and answers every call ``NotReady``; links
drop as if the devices had left.  Knowing the adapter is off lets the link name the
outage for what it is (``adapter_off``), wait for the adapter instead of burning
retries, and scan afresh once it is back.  Only BlueZ tells this; elsewhere (and
with a plug-in backend) the answer is None, "unknown".
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from bleak.exc import BleakBluetoothNotAvailableError, BleakBluetoothNotAvailableReason, BleakDBusError, BleakError

log = logging.getLogger(__name__)

ADAPTER_IFACE = "org.bluez.Adapter1"
NOT_READY = "org.bluez.Error.NotReady"


async def adapter_powered() -> bool | None:
    """True if a BlueZ adapter is powered, False if every adapter is off, None if unknown (not BlueZ)."""
    if sys.platform != "linux":
        return None
    try:
        from bleak.backends.bluezdbus.manager import get_global_bluez_manager

        manager: Any = await get_global_bluez_manager()
    except (BleakError, OSError, ImportError) as exc:
        log.debug("adapter state unknown: %s", exc)
        return None
    # bleak keeps BlueZ's properties up to date from PropertiesChanged (no public accessor)
    props: dict[str, dict[str, dict[str, Any]]] = getattr(manager, "_properties", {})
    adapters = [p for p, ifaces in props.items() if ADAPTER_IFACE in ifaces]
    if not adapters:
        return None
    return any(bool(props[a][ADAPTER_IFACE].get("Powered", False)) for a in adapters)


def says_adapter_off(exc: BaseException) -> bool:
    """Does this error mean the adapter is off (rather than the device gone)?"""
    if isinstance(exc, BleakBluetoothNotAvailableError):
        return exc.reason is BleakBluetoothNotAvailableReason.POWERED_OFF
    return isinstance(exc, BleakDBusError) and exc.dbus_error == NOT_READY

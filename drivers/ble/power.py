"""Is the Bluetooth adapter powered?  Asked of BlueZ over D-Bus (bleak's own transport).

Why: after a laptop resumes from sleep (or someone switches Bluetooth off) BlueZ
reports the adapter ``Powered = false`` and answers every call ``NotReady``; links
drop as if the devices had left.  Knowing the adapter is off lets the link name the
outage for what it is (``adapter_off``), wait for the adapter instead of burning
retries, and scan afresh once it is back.  Only BlueZ tells this; elsewhere (and
with a plug-in backend) the answer is None, "unknown".
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from bleak.exc import BleakBluetoothNotAvailableError, BleakBluetoothNotAvailableReason, BleakDBusError

log = logging.getLogger(__name__)

ADAPTER_IFACE = "org.bluez.Adapter1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
NOT_READY = "org.bluez.Error.NotReady"


async def adapter_powered(timeout_s: float = 5.0) -> bool | None:
    """True if a BlueZ adapter is powered, False if every adapter is off, None if unknown (not BlueZ).

    Asks ``bluetoothd`` afresh (ObjectManager) on a connection of its own: bleak's cached view lags
    behind by however long the PropertiesChanged signal takes, and the caller holds a virtual clock
    still while it asks, so the answer is the stack's state at that moment.
    """
    if sys.platform != "linux":
        return None
    try:
        from dbus_fast import BusType, Message, MessageType
        from dbus_fast.aio import MessageBus
    except ImportError:
        return None
    try:
        bus = await asyncio.wait_for(MessageBus(bus_type=BusType.SYSTEM).connect(), timeout_s)
    except (OSError, asyncio.TimeoutError, ValueError, EOFError) as exc:
        log.debug("adapter state unknown (no system bus): %s", exc)
        return None
    except Exception as exc:  # dbus-fast raises its own error types for auth and addresses
        log.debug("adapter state unknown: %s", exc)
        return None
    try:
        reply = await asyncio.wait_for(bus.call(Message(destination="org.bluez", path="/", interface=OBJECT_MANAGER,
                                                        member="GetManagedObjects")), timeout_s)
    except (OSError, asyncio.TimeoutError, EOFError) as exc:
        log.debug("adapter state unknown: %s", exc)
        return None
    finally:
        bus.disconnect()
    if reply is None or reply.message_type != MessageType.METHOD_RETURN:
        return None  # bluetoothd not running: unknown, not "off"
    objects: dict[str, dict[str, dict[str, Any]]] = reply.body[0]
    adapters = [ifaces[ADAPTER_IFACE] for ifaces in objects.values() if ADAPTER_IFACE in ifaces]
    if not adapters:
        return None
    return any(bool(getattr(a.get("Powered"), "value", False)) for a in adapters)


def says_adapter_off(exc: BaseException) -> bool:
    """Does this error mean the adapter is off (rather than the device gone)?"""
    if isinstance(exc, BleakBluetoothNotAvailableError):
        return exc.reason is BleakBluetoothNotAvailableReason.POWERED_OFF
    return isinstance(exc, BleakDBusError) and exc.dbus_error == NOT_READY

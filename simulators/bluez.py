"""A BlueZ-shaped D-Bus service (``org.bluez``) that serves simulated oximeters.

bleak's own BlueZ backend talks to it over a private ``dbus-daemon`` exactly as it
talks to ``bluetoothd``: ObjectManager, ``org.bluez.Adapter1`` (discovery, power),
``org.bluez.Device1`` (Connect, Disconnect, Pair, Connected/ServicesResolved),
GATT service and characteristic objects (ReadValue, WriteValue, StartNotify,
``Value`` in PropertiesChanged) and InterfacesAdded/Removed, with BlueZ's own
error names.  So the collector's production code runs with no ``backend=``.

Faults a test can inject per device (``faults``, consumed one per Connect):
``"abort"`` (``le-connection-abort-by-local``: connected, then dropped at once, as
BlueZ does), ``"in_progress"`` (``Operation already in progress``), ``"forget"``
(the stack drops the device object: a stale cache).  ``power(False)`` is an
adapter switched off or a laptop asleep (every link drops, calls answer
``NotReady``); ``max_links`` is the adapter's connection-slot limit.

Time: the devices play on the virtual clock, D-Bus is real I/O.  After every
notification or link change :meth:`settle` pings each bleak connection under a
frozen clock, so what the device sent is received (and stamped) before virtual
time moves on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from collector.clock import Clock
from simulators.oximeter import SimulatedOximeter

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
ROOT = "/org/bluez"
OM = "org.freedesktop.DBus.ObjectManager"
PROPS = "org.freedesktop.DBus.Properties"
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
SERVICE = "org.bluez.GattService1"
CHAR = "org.bluez.GattCharacteristic1"

Props = dict[str, Variant]


def device_path(adapter_path: str, address: str) -> str:
    return f"{adapter_path}/dev_{address.upper().replace(':', '_')}"


class _Link:
    """One connection of the fake stack to a simulated device (what the device calls back)."""

    def __init__(self, stack: FakeBluez, path: str) -> None:
        self.stack, self.path = stack, path

    def lost(self) -> None:
        self.stack._link_lost(self.path)


class FakeBluez:
    """``bluetoothd`` as bleak sees it, for the simulated devices added with :meth:`add`."""

    def __init__(self, clock: Clock, *, adapter: str = "hci0", address: str = "00:1A:7D:DA:71:01", max_links: int = 7) -> None:
        self.clock = clock
        self.adapter_path = f"{ROOT}/{adapter}"
        self.address = address
        self.max_links = max_links
        self.bus: MessageBus | None = None
        self.objects: dict[str, dict[str, Props]] = {}
        self.devices: dict[str, SimulatedOximeter] = {}  # device path -> simulator
        self.links: dict[str, _Link] = {}  # device path -> live connection
        self.faults: dict[str, list[str | None]] = {}  # address -> faults for the next connects
        self.calls: list[tuple[str, str]] = []  # (member, path) of every method call, for tests
        self._watchers: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- set-up ----------------------------------------------------------------------------
    async def start(self) -> None:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        self.bus = bus
        bus.add_message_handler(self._handle)
        self.objects[self.adapter_path] = {ADAPTER: {
            "Address": Variant("s", self.address), "AddressType": Variant("s", "public"), "Name": Variant("s", "sim"),
            "Alias": Variant("s", "sim"), "Powered": Variant("b", True), "Discovering": Variant("b", False),
            "Roles": Variant("as", ["central", "peripheral"]), "UUIDs": Variant("as", []),
        }}
        await bus.request_name(BLUEZ)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.bus is not None:
            self.bus.disconnect()

    def add(self, device: SimulatedOximeter, *, cached: bool = False) -> SimulatedOximeter:
        """A device in range; ``cached``: BlueZ already knows it (paired earlier, or seen before)."""
        path = device_path(self.adapter_path, device.address)
        self.devices[path] = device
        device.settle = self.settle
        if cached:
            self._export_device(path)
        return device

    # -- what tests call -------------------------------------------------------------------
    def power(self, on: bool) -> None:
        """Adapter on or off (off: a laptop asleep); every link drops when it goes off."""
        self._set(self.adapter_path, ADAPTER, Powered=Variant("b", on))
        if not on:
            for path in list(self.links):
                self._link_lost(path)

    async def settle(self) -> None:
        """Wait (clock held) until every bleak connection has processed what was sent so far."""
        if self.bus is None or not self._watchers:
            return
        async with self.clock.frozen():
            await asyncio.gather(*(self._ping(name) for name in list(self._watchers)))

    async def _ping(self, name: str) -> None:
        assert self.bus is not None
        reply = await self.bus.call(Message(destination=name, path="/", interface="org.freedesktop.DBus.Peer", member="Ping"))
        if reply is None or reply.message_type == MessageType.ERROR:
            self._watchers.discard(name)  # that connection is gone

    # -- objects and signals ---------------------------------------------------------------
    def _export_device(self, path: str) -> None:
        if path in self.objects:
            return
        dev = self.devices[path]
        self.objects[path] = {DEVICE: {
            "Address": Variant("s", dev.address.upper()), "AddressType": Variant("s", "public"),
            "Name": Variant("s", dev.name), "Alias": Variant("s", dev.name), "Adapter": Variant("o", self.adapter_path),
            "Connected": Variant("b", False), "ServicesResolved": Variant("b", False), "Paired": Variant("b", False),
            "Bonded": Variant("b", False), "Trusted": Variant("b", False), "Blocked": Variant("b", False),
            "LegacyPairing": Variant("b", False), "RSSI": Variant("n", -60),
            "UUIDs": Variant("as", [dev.profile.service_uuid]), "ManufacturerData": Variant("a{qv}", {}),
            "ServiceData": Variant("a{sv}", {}),
        }}
        self._signal("/", OM, "InterfacesAdded", "oa{sa{sv}}", [path, self.objects[path]])

    def _remove(self, path: str) -> None:
        """Drop an object and everything under it (InterfacesRemoved, children first)."""
        for p in sorted((p for p in self.objects if p == path or p.startswith(path + "/")), key=len, reverse=True):
            ifaces = list(self.objects.pop(p))
            self._signal("/", OM, "InterfacesRemoved", "oas", [p, ifaces])

    def _export_gatt(self, path: str) -> None:
        dev = self.devices[path]
        handle = 0x10
        for service_uuid, chars in dev.gatt().items():
            spath = f"{path}/service{handle:04x}"
            self.objects[spath] = {SERVICE: {"UUID": Variant("s", service_uuid), "Primary": Variant("b", True),
                                             "Device": Variant("o", path), "Handle": Variant("q", handle)}}
            self._signal("/", OM, "InterfacesAdded", "oa{sa{sv}}", [spath, self.objects[spath]])
            handle += 1
            for char_uuid, flags in chars.items():
                cpath = f"{spath}/char{handle:04x}"
                self.objects[cpath] = {CHAR: {
                    "UUID": Variant("s", char_uuid), "Service": Variant("o", spath), "Value": Variant("ay", b""),
                    "Notifying": Variant("b", False), "Flags": Variant("as", list(flags)), "Handle": Variant("q", handle),
                    "MTU": Variant("q", 185),
                }}
                self._signal("/", OM, "InterfacesAdded", "oa{sa{sv}}", [cpath, self.objects[cpath]])
                handle += 2

    def _set(self, path: str, iface: str, **changed: Variant) -> None:
        if path not in self.objects:
            return
        self.objects[path][iface].update(changed)
        self._signal(path, PROPS, "PropertiesChanged", "sa{sv}as", [iface, changed, []])

    def _signal(self, path: str, iface: str, member: str, signature: str, body: list[Any]) -> None:
        if self.bus is not None:
            self.bus.send(Message.new_signal(path, iface, member, signature, body))

    def _prop(self, path: str, iface: str, name: str) -> Any:
        return self.objects[path][iface][name].value

    # -- links -----------------------------------------------------------------------------
    def _link_lost(self, path: str) -> None:
        link = self.links.pop(path, None)
        if link is None:
            return
        self.devices[path].detach(link)  # type: ignore[arg-type]
        for p in [p for p in self.objects if p.startswith(path + "/")]:
            if CHAR in self.objects[p]:
                self.objects[p][CHAR]["Notifying"] = Variant("b", False)
        self._set(path, DEVICE, ServicesResolved=Variant("b", False))
        self._set(path, DEVICE, Connected=Variant("b", False))
        self._remove_gatt(path)

    def _remove_gatt(self, path: str) -> None:
        for p in sorted((p for p in self.objects if p.startswith(path + "/")), key=len, reverse=True):
            ifaces = list(self.objects.pop(p))
            self._signal("/", OM, "InterfacesRemoved", "oas", [p, ifaces])

    def _value(self, char_path: str, data: bytearray) -> None:
        if char_path in self.objects and self._prop(char_path, CHAR, "Notifying"):
            self._set(char_path, CHAR, Value=Variant("ay", bytes(data)))

    def _char(self, char_path: str) -> tuple[str, str, SimulatedOximeter]:
        dev_path = char_path.rsplit("/", 2)[0]
        return dev_path, self._prop(char_path, CHAR, "UUID"), self.devices[dev_path]

    # -- method calls ----------------------------------------------------------------------
    def _handle(self, msg: Message) -> Message | bool | None:
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        if msg.interface == OM and msg.member == "GetManagedObjects":
            self._watchers.add(msg.sender or "")
            return Message.new_method_return(msg, "a{oa{sa{sv}}}", [self.objects])
        if msg.interface == PROPS:
            return self._properties(msg)
        handler = _HANDLERS.get((msg.interface or "", msg.member or ""))
        if handler is None:
            return None
        self.calls.append((msg.member or "", msg.path or ""))
        if msg.path not in self.objects:
            return _error(msg, "org.freedesktop.DBus.Error.UnknownObject", f"Method \"{msg.member}\" doesn't exist")
        if msg.interface != ADAPTER and not self._prop(self.adapter_path, ADAPTER, "Powered"):
            return _error(msg, "org.bluez.Error.NotReady", "Resource Not Ready")
        result = handler(self, msg)
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(self._reply_later(msg, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        return result

    async def _reply_later(self, msg: Message, pending: Any) -> None:
        reply = await pending
        if self.bus is not None:
            self.bus.send(reply)

    def _properties(self, msg: Message) -> Message:
        path = msg.path or ""
        if path not in self.objects:
            return _error(msg, "org.freedesktop.DBus.Error.UnknownObject", "no such object")
        if msg.member == "GetAll":
            return Message.new_method_return(msg, "a{sv}", [self.objects[path].get(msg.body[0], {})])
        if msg.member == "Get":
            iface, name = msg.body
            return Message.new_method_return(msg, "v", [self.objects[path][iface][name]])
        if msg.member == "Set":
            iface, name, value = msg.body
            if iface == ADAPTER and name == "Powered":
                self.power(bool(value.value))
            else:
                self._set(path, iface, **{name: value})
            return Message.new_method_return(msg)
        return _error(msg, "org.freedesktop.DBus.Error.UnknownMethod", msg.member or "")

    # adapter
    def _start_discovery(self, msg: Message) -> Message:
        if not self._prop(self.adapter_path, ADAPTER, "Powered"):
            return _error(msg, "org.bluez.Error.NotReady", "Resource Not Ready")
        self._set(self.adapter_path, ADAPTER, Discovering=Variant("b", True))
        task = asyncio.ensure_future(self._advertise())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Message.new_method_return(msg)

    async def _advertise(self) -> None:
        """Devices in range advertise while discovery runs (radio time: real seconds)."""
        while self.objects.get(self.adapter_path, {}).get(ADAPTER, {}).get("Discovering", Variant("b", False)).value:
            for path, dev in self.devices.items():
                if dev.reachable and path not in self.links:
                    if path in self.objects:
                        self._set(path, DEVICE, RSSI=Variant("n", -60 - len(self.calls) % 3))
                    else:
                        self._export_device(path)
            await asyncio.sleep(0.02)

    def _stop_discovery(self, msg: Message) -> Message:
        self._set(self.adapter_path, ADAPTER, Discovering=Variant("b", False))
        return Message.new_method_return(msg)

    def _ok(self, msg: Message) -> Message:
        return Message.new_method_return(msg)

    def _remove_device(self, msg: Message) -> Message:
        path = msg.body[0]
        self._link_lost(path)
        self._remove(path)
        return Message.new_method_return(msg)

    # device
    async def _connect(self, msg: Message) -> Message:
        path = msg.path or ""
        dev = self.devices[path]
        fault = self.faults.get(dev.address.upper(), [])
        kind = fault.pop(0) if fault else None
        if path in self.links:
            return Message.new_method_return(msg)
        if kind == "in_progress":
            return _error(msg, "org.bluez.Error.InProgress", "Operation already in progress")
        if kind == "forget":
            self._remove(path)  # the caller held a stale object: UnknownObject, as after BlueZ dropped it
            return _error(msg, "org.freedesktop.DBus.Error.UnknownObject", "Method \"Connect\" doesn't exist")
        if not dev.reachable:
            return _error(msg, "org.bluez.Error.Failed", "Connection timed out")
        if len(self.links) >= self.max_links:
            return _error(msg, "org.bluez.Error.Failed", "le-connection-abort-by-local")  # no free connection slot
        if kind == "abort":
            self._set(path, DEVICE, Connected=Variant("b", True))
            self._set(path, DEVICE, Connected=Variant("b", False))
            return _error(msg, "org.bluez.Error.Failed", "le-connection-abort-by-local")
        link = _Link(self, path)
        self.links[path] = link
        dev.attach(link)  # type: ignore[arg-type]
        self._export_gatt(path)
        self._set(path, DEVICE, Connected=Variant("b", True))
        self._set(path, DEVICE, ServicesResolved=Variant("b", True))
        return Message.new_method_return(msg)

    def _disconnect(self, msg: Message) -> Message:
        self._link_lost(msg.path or "")
        return Message.new_method_return(msg)

    def _pair(self, msg: Message) -> Message:
        path = msg.path or ""
        if self._prop(path, DEVICE, "Paired"):
            return _error(msg, "org.bluez.Error.AlreadyExists", "Already Exists")
        self._set(path, DEVICE, Paired=Variant("b", True), Bonded=Variant("b", True))
        return Message.new_method_return(msg)

    # GATT
    def _read(self, msg: Message) -> Message:
        _, uuid, dev = self._char(msg.path or "")
        try:
            return Message.new_method_return(msg, "ay", [dev.read(uuid)])
        except KeyError:
            return _error(msg, "org.bluez.Error.NotSupported", "Not Supported")

    def _write(self, msg: Message) -> Message:
        _, uuid, dev = self._char(msg.path or "")
        dev.write(uuid, bytes(msg.body[0]))
        return Message.new_method_return(msg)

    def _start_notify(self, msg: Message) -> Message:
        char_path = msg.path or ""
        dev_path, uuid, dev = self._char(char_path)
        link = self.links.get(dev_path)
        if link is None:
            return _error(msg, "org.bluez.Error.Failed", "Not connected")
        if self._prop(char_path, CHAR, "Notifying"):
            return _error(msg, "org.bluez.Error.InProgress", "Operation already in progress")
        if dev.profile.pair and not self._prop(dev_path, DEVICE, "Paired"):
            return _error(msg, "org.bluez.Error.NotPermitted", "Insufficient authentication")
        self._set(char_path, CHAR, Notifying=Variant("b", True))
        sink: Callable[[bytearray], None] = lambda data: self._value(char_path, data)  # noqa: E731
        dev.subscribe(link, uuid, sink)  # type: ignore[arg-type]
        return Message.new_method_return(msg)

    def _stop_notify(self, msg: Message) -> Message:
        char_path = msg.path or ""
        dev_path, uuid, dev = self._char(char_path)
        self._set(char_path, CHAR, Notifying=Variant("b", False))
        link = self.links.get(dev_path)
        if link is not None:
            dev.unsubscribe(link, uuid)  # type: ignore[arg-type]
        return Message.new_method_return(msg)


def _error(msg: Message, name: str, text: str) -> Message:
    return Message.new_error(msg, name, text)


_HANDLERS: dict[tuple[str, str], Callable[[FakeBluez, Message], Any]] = {
    (ADAPTER, "StartDiscovery"): FakeBluez._start_discovery,
    (ADAPTER, "StopDiscovery"): FakeBluez._stop_discovery,
    (ADAPTER, "SetDiscoveryFilter"): FakeBluez._ok,
    (ADAPTER, "RemoveDevice"): FakeBluez._remove_device,
    (DEVICE, "Connect"): FakeBluez._connect,
    (DEVICE, "Disconnect"): FakeBluez._disconnect,
    (DEVICE, "Pair"): FakeBluez._pair,
    (DEVICE, "CancelPairing"): FakeBluez._ok,
    (CHAR, "ReadValue"): FakeBluez._read,
    (CHAR, "WriteValue"): FakeBluez._write,
    (CHAR, "StartNotify"): FakeBluez._start_notify,
    (CHAR, "StopNotify"): FakeBluez._stop_notify,
}

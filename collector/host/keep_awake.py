"""Keep the laptop awake while a night records; let it sleep again when the last one stops.

A laptop that suspends at 3 a.m. loses the rest of the night.  On Linux the collector holds a
systemd-logind inhibitor lock (``Inhibit("sleep:idle", ..., "block")`` on the system bus: the lock
lasts as long as we keep its file descriptor open), on Windows it sets the thread's execution
state (``SetThreadExecutionState``).  Where neither exists the collector says so once and records.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

WHO = "ALS screening collector"
WHY = "recording a screening night"
WHAT = "sleep:idle"


class Blocker(Protocol):
    """One platform's way of holding the machine awake."""

    name: str

    async def hold(self) -> None: ...

    def release(self) -> None: ...


@dataclass
class LogindBlocker:
    """A logind inhibitor lock, held by keeping the returned descriptor open."""

    name: str = "logind"
    fd: int | None = None
    bus: Any = None

    async def hold(self) -> None:
        from dbus_fast import BusType, Message, MessageType
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
        try:
            reply = await bus.call(Message(
                destination="org.freedesktop.login1", path="/org/freedesktop/login1",
                interface="org.freedesktop.login1.Manager", member="Inhibit", signature="ssss",
                body=[WHAT, WHO, WHY, "block"]))
        except BaseException:
            bus.disconnect()
            raise
        if reply is None or reply.message_type == MessageType.ERROR:
            bus.disconnect()
            raise OSError(f"logind refused the inhibitor lock: {reply.error_name if reply else 'no reply'} "
                          f"{reply.body[0] if reply and reply.body else ''}".strip())
        index = reply.body[0]
        self.fd = reply.unix_fds[index]
        self.bus = bus

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.bus is not None:
            self.bus.disconnect()
            self.bus = None


@dataclass
class WindowsBlocker:
    """``SetThreadExecutionState(ES_CONTINUOUS | ES_SYSTEM_REQUIRED)`` on the event loop's thread."""

    name: str = "windows"

    async def hold(self) -> None:
        import ctypes

        if not ctypes.windll.kernel32.SetThreadExecutionState(0x80000000 | 0x00000001):  # type: ignore[attr-defined]
            raise OSError("SetThreadExecutionState failed")

    def release(self) -> None:
        import ctypes

        ctypes.windll.kernel32.SetThreadExecutionState(0x80000000)  # type: ignore[attr-defined]


def platform_blocker() -> Blocker:
    return WindowsBlocker() if sys.platform == "win32" else LogindBlocker()


class KeepAwake:
    """Holds the platform's lock while :meth:`want` says so; never raises into the recording."""

    def __init__(self, blocker: Blocker | None = None) -> None:
        self.blocker = blocker or platform_blocker()
        self.held = False
        self.problem: str | None = None

    async def want(self, awake: bool) -> None:
        if awake and not self.held:
            try:
                await self.blocker.hold()
            except Exception as exc:  # no logind, no system bus, a policy refusal: record anyway, say it once
                text = f"cannot keep the laptop awake ({self.blocker.name}: {exc}); set its power settings to never sleep during a night"
                if text != self.problem:
                    log.warning("%s", text)
                self.problem = text
                return
            self.held, self.problem = True, None
            log.info("keeping the laptop awake while a night records (%s)", self.blocker.name)
        elif not awake and self.held:
            self.blocker.release()
            self.held = False
            log.info("no night records any more: the laptop may sleep again")

    def status(self) -> dict[str, Any]:
        return {"held": self.held, "via": self.blocker.name, "problem": self.problem}

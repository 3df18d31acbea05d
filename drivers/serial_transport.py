"""Serial transport on pyserial for devices that talk over a line (spirometers).

One URL form covers everything: ``/dev/ttyUSB0``, ``COM3``, a pseudo-terminal
path, or ``socket://host:port`` (pyserial's ``serial_for_url``).  Reading is a
plain blocking ``read`` with a short timeout in a worker thread, which works the
same on Linux and Windows; bytes are handed to the asyncio loop with
``call_soon_threadsafe`` so the loop never blocks.  Opening and writing run in
the default executor for the same reason.

When the port disappears (cable pulled, USB adapter reset, TCP peer gone) the
transport reports ``lost``, closes the port and reopens it with exponential
backoff slept on the injected clock, reporting ``connected`` once it is back.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
import stat
import sys
import threading
from dataclasses import dataclass, fields
from typing import Any, Callable, Collection, Literal, Mapping, Protocol, Union, cast
from urllib.parse import urlsplit

import serial

from drivers.clock import Clock

PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD, "M": serial.PARITY_MARK, "S": serial.PARITY_SPACE}


@dataclass(frozen=True)
class PortSettings:
    """Line settings of one device model (socket:// ignores them)."""

    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    timeout: float = 0.1  # read timeout: bounds how long stop() and loss detection take
    rtscts: bool = False
    xonxoff: bool = False
    dsrdtr: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PortSettings":
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown serial port setting(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        return cls(**d)


class SerialPortError(Exception):
    """A port that cannot be opened or used; the message says what to check."""

    def __init__(self, url: str, cause: BaseException | str) -> None:
        self.url = url
        self.cause = cause
        super().__init__(f"cannot open serial port {url}: {_short(cause)}; {_hint(url)}")


class NotConnected(SerialPortError):
    def __init__(self, url: str) -> None:
        Exception.__init__(self, f"serial port {url} is not connected; the transport is reconnecting, check the cable")
        self.url, self.cause = url, "not connected"


class PortRefused(SerialPortError):
    """The port string is outside the allow-list: nothing was opened (retrying cannot help)."""

    def __init__(self, url: str, cause: PortNotAllowed) -> None:
        Exception.__init__(self, str(cause))
        self.url, self.cause = url, cause


def _short(cause: BaseException | str) -> str:
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return text[:160]


def _hint(url: str) -> str:
    if url.startswith("socket://"):
        return "check that the device/bridge is listening on that host and port"
    if sys.platform.startswith("win"):
        return "check the COM port number in Device Manager, that the cable/adapter is plugged in and no other program has the port open"
    return "check the path (ls /dev/ttyUSB* /dev/ttyACM*), that the cable/adapter is plugged in, no other program holds it, and that you are in the dialout group"


class PortNotAllowed(ValueError):
    """A port string outside the allow-list.

    Why an allow-list: pyserial's ``serial_for_url`` also understands handlers such as
    ``spy://`` (which writes a log to any file, the database included), ``loop://``,
    ``rfc2217://`` and ``socket://`` to any host.  A spirometer is a device file, a COM port,
    or a serial-over-IP adapter the site has named; nothing else is opened.
    """


_COM_PORT = re.compile(r"(?:\\\\\.\\)?COM[1-9][0-9]{0,2}", re.IGNORECASE)
_ALLOWED_HELP = ("use a device path under /dev/ (e.g. /dev/ttyUSB0 or /dev/serial/by-id/...), a COM port (COM3), "
                 "or socket://HOST:PORT with HOST listed in [spirometry] socket_hosts")


def check_port_url(url: str, socket_hosts: Collection[str] = ()) -> str:
    """The port string if it is allowed, else :class:`PortNotAllowed` saying what is.

    Allowed: an absolute path that leads under ``/dev/`` (after resolving symlinks and ``..``),
    a Windows COM port, or ``socket://host:port`` to a host in ``socket_hosts`` with no path,
    query or user part.  The caller passes the site's hosts; the default is none.
    """
    if not isinstance(url, str) or not url or url != url.strip() or any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise PortNotAllowed(f"port {url!r} is not a port; {_ALLOWED_HELP}")
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme.lower() != "socket":
            raise PortNotAllowed(f"port {url}: the {parts.scheme}:// handler is not allowed; {_ALLOWED_HELP}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if (parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None
                or parts.password is not None or port is None or not 1 <= port <= 65535 or not parts.hostname):
            raise PortNotAllowed(f"port {url}: a socket port is socket://HOST:PORT (port 1-65535, nothing after it)")
        allowed = {h.strip("[]").lower() for h in socket_hosts}
        if parts.hostname.lower() not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            raise PortNotAllowed(f"port {url}: host {parts.hostname} is not in [spirometry] socket_hosts (allowed: {listed}); "
                                 "add the serial-over-IP adapter's address there")
        return url
    if _COM_PORT.fullmatch(url):
        return url
    if url.startswith("/"):
        # A stable symlink elsewhere (a udev rule, a simulator's link) is fine if it leads into /dev/.
        real = os.path.realpath(url) if os.name == "posix" else posixpath.normpath(url)
        if real.startswith("/dev/"):
            return url
    raise PortNotAllowed(f"port {url} is not a serial device; {_ALLOWED_HELP}")


def _require_character_device(url: str) -> None:
    """A device path must name a character device (a tty), not a regular file that a write would change."""
    if "://" in url or os.name != "posix":
        return
    try:
        mode = os.stat(url).st_mode
    except OSError:
        return  # pyserial names the missing port in its own error
    if not stat.S_ISCHR(mode):
        raise SerialPortError(url, "not a serial device (not a character device)")


class Port(Protocol):
    """What the transport uses of an open port (and what a test's fake opener returns).

    Every concrete pyserial port (posix, win32, socket://, ...) has these; the type stubs
    say ``serial_for_url`` returns ``SerialBase``, which does not declare ``in_waiting``.
    """

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1, /) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...

    def close(self) -> None: ...


def open_port(url: str, settings: PortSettings) -> Port:
    """Open a port (blocking; call it from an executor)."""
    if settings.parity not in PARITIES:
        raise SerialPortError(url, f"parity {settings.parity!r} is not one of N, E, O, M, S")
    _require_character_device(url)
    try:
        port = serial.serial_for_url(
            url,
            baudrate=settings.baudrate,
            bytesize=settings.bytesize,
            parity=PARITIES[settings.parity],
            stopbits=settings.stopbits,
            timeout=settings.timeout,
            write_timeout=5.0,
            rtscts=settings.rtscts,
            xonxoff=settings.xonxoff,
            dsrdtr=settings.dsrdtr,
        )
    except (serial.SerialException, OSError, ValueError) as exc:
        raise SerialPortError(url, exc) from exc
    return cast(Port, port)  # a concrete port class: see Port


@dataclass(frozen=True, slots=True)
class LinkEvent:
    kind: Literal["connected", "lost"]
    url: str
    t: float  # clock time
    detail: str = ""


# Time first, as the BLE link calls back (t, characteristic, data) and the queue holds (t, data).
DataSink = Union[Callable[[float, bytes], None], "asyncio.Queue[tuple[float, bytes]]"]


class SerialTransport:
    """Keeps one port open, delivers ``(t, data)`` to ``on_data`` on the event loop.

    ``on_event`` receives :class:`LinkEvent` (connected / lost), one per change.
    ``clock`` stamps reads and sleeps the backoff (see :class:`drivers.clock.Clock`).
    """

    def __init__(
        self,
        url: str,
        settings: PortSettings,
        on_data: DataSink,
        clock: Clock,
        on_event: Callable[[LinkEvent], None] | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        opener: Callable[[str, PortSettings], Port] = open_port,
        socket_hosts: Collection[str] = (),
    ) -> None:
        self.url, self.settings, self.clock = url, settings, clock
        self.socket_hosts = tuple(socket_hosts)
        self._on_data = on_data
        self._on_event = on_event
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self._opener = opener
        self._port: Port | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._thread_stop: threading.Event | None = None
        self._write_lock = asyncio.Lock()
        self.last_error: str | None = None
        self.open_attempts = 0
        self.bytes_in = 0
        self.connected_event = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._port is not None

    async def start(self, require_first_open: bool = False) -> None:
        """Start the reconnecting reader.  With ``require_first_open`` a port that
        cannot be opened now raises :class:`SerialPortError` (for the CLI)."""
        port = None
        if require_first_open:
            port = await self._open()
        self._stopping = False
        self._task = asyncio.create_task(self._run(port), name=f"serial:{self.url}")

    async def stop(self) -> None:
        self._stopping = True
        if self._thread_stop is not None:
            self._thread_stop.set()
        port = self._port
        if port is not None and hasattr(port, "cancel_read"):
            try:
                port.cancel_read()
            except Exception:
                pass
        if self._task is not None:
            if self._port is None:  # sleeping in backoff or opening: nothing to drain
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def write(self, data: bytes) -> None:
        """Send bytes (e.g. an ACK) without blocking the loop."""
        port = self._port
        if port is None:
            raise NotConnected(self.url)
        async with self._write_lock:
            try:
                await asyncio.get_running_loop().run_in_executor(None, port.write, data)
            except (serial.SerialException, OSError) as exc:
                raise NotConnected(self.url) from exc

    # internals -------------------------------------------------------------------------
    async def _open(self) -> Port:
        self.open_attempts += 1
        try:
            check_port_url(self.url, self.socket_hosts)  # the last gate before pyserial sees the string
        except PortNotAllowed as exc:
            raise PortRefused(self.url, exc) from None
        return await asyncio.get_running_loop().run_in_executor(None, self._opener, self.url, self.settings)

    def _emit(self, kind: Literal["connected", "lost"], detail: str = "") -> None:
        if kind == "connected":
            self.connected_event.set()
        else:
            self.connected_event.clear()
        if self._on_event is not None:
            self._on_event(LinkEvent(kind, self.url, self.clock.now(), detail))

    def _deliver(self, data: bytes) -> None:
        self.bytes_in += len(data)
        t = self.clock.now()
        if isinstance(self._on_data, asyncio.Queue):
            self._on_data.put_nowait((t, data))
        else:
            self._on_data(t, data)

    async def _run(self, port: Port | None) -> None:
        backoff = self.backoff_initial_s
        was_connected = False
        while not self._stopping:
            if port is None:
                try:
                    port = await self._open()
                except SerialPortError as exc:
                    self.last_error = str(exc)
                    await self.clock.sleep(backoff)
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
            backoff = self.backoff_initial_s
            self._port = port
            was_connected = True
            self._emit("connected")
            reason = await self._read_until_lost(port)
            self._port = None
            try:
                await asyncio.get_running_loop().run_in_executor(None, port.close)
            except Exception:
                pass
            port = None
            if not self._stopping:
                self.last_error = reason
                self._emit("lost", reason)
        if was_connected and self._port is not None:
            self._port = None

    async def _read_until_lost(self, port: Port) -> str:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        stop = threading.Event()
        self._thread_stop = stop
        if self._stopping:
            stop.set()

        def finish(reason: str) -> None:
            if not done.done():
                done.set_result(reason)

        def reader() -> None:
            reason = "stopped"
            try:
                while not stop.is_set():
                    data = port.read(1)
                    if not data:
                        continue
                    waiting = port.in_waiting
                    if waiting:
                        data += port.read(waiting)
                    loop.call_soon_threadsafe(self._deliver, data)
            except Exception as exc:  # SerialException, OSError: the port went away
                reason = _short(exc)
            try:
                loop.call_soon_threadsafe(finish, reason)
            except RuntimeError:  # loop already closed
                pass

        threading.Thread(target=reader, name=f"serial-reader:{self.url}", daemon=True).start()
        return await done

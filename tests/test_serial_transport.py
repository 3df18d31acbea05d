"""Serial transport: real pyserial ports (socket:// and a pty), loss and reconnection."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from collector.clock import SystemClock, VirtualClock
from drivers.serial_transport import LinkEvent, NotConnected, PortSettings, SerialPortError, SerialTransport, open_port

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0  # generous upper bound for any single event; tests never sleep


async def wait_for(pred, what: str, timeout: float = WAIT) -> None:
    """Wait until pred() holds, polling on loop iterations (no fixed sleeps)."""
    async def poll() -> None:
        while not pred():
            await asyncio.sleep(0.005)
    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class EchoServer:
    """TCP peer: records what it receives, can send and drop the connection."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writer = w
        while data := await r.read(4096):
            self.received += data

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def test_unopenable_port_error_is_one_clear_line() -> None:
    with pytest.raises(SerialPortError) as ei:
        open_port("/dev/does-not-exist-spiro", PortSettings())
    msg = str(ei.value)
    assert "/dev/does-not-exist-spiro" in msg and "check" in msg and "\n" not in msg
    with pytest.raises(SerialPortError) as ei:
        open_port("socket://127.0.0.1:1", PortSettings())
    assert "listening" in str(ei.value)
    with pytest.raises(SerialPortError):
        open_port("/dev/null", PortSettings(parity="X"))
    with pytest.raises(ValueError, match="unknown serial port setting"):
        PortSettings.from_dict({"baud": 9600})
    assert PortSettings.from_dict({"baudrate": 19200, "parity": "E"}).baudrate == 19200


def test_start_with_required_open_raises() -> None:
    async def main() -> None:
        t = SerialTransport("socket://127.0.0.1:1", PortSettings(), lambda t, d: None, SystemClock(), socket_hosts=["127.0.0.1"])
        with pytest.raises(SerialPortError):
            await t.start(require_first_open=True)
        with pytest.raises(NotConnected):
            await t.write(b"x")
    asyncio.run(main())


def test_socket_read_write_and_timestamps() -> None:
    async def main() -> None:
        srv = EchoServer()
        await srv.start()
        q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        events: list[LinkEvent] = []
        clock = VirtualClock(start=1000.0)
        t = SerialTransport(f"socket://127.0.0.1:{srv.port}", PortSettings(timeout=0.05), q, clock, events.append, socket_hosts=["127.0.0.1"])
        await t.start(require_first_open=True)
        await asyncio.wait_for(t.connected_event.wait(), WAIT)
        await wait_for(lambda: srv.writer is not None, "server accept")
        srv.writer.write(b"hello ")
        srv.writer.write(b"world")
        got = b""
        while got != b"hello world":
            ts, data = await asyncio.wait_for(q.get(), WAIT)
            assert ts == 1000.0  # stamped with the injected clock
            got += data
        await t.write(b"ACK")
        await wait_for(lambda: bytes(srv.received) == b"ACK", "write reaching the peer")
        await t.stop()
        await srv.stop()
        assert [e.kind for e in events] == ["connected"]
    asyncio.run(main())


def test_port_disappears_then_comes_back_with_backoff() -> None:
    async def main() -> None:
        srv = EchoServer()
        await srv.start()
        port = srv.port
        clock = VirtualClock(start=0.0)
        runner = asyncio.create_task(clock.run())
        received: list[bytes] = []
        events: list[LinkEvent] = []
        t = SerialTransport(f"socket://127.0.0.1:{port}", PortSettings(timeout=0.05), lambda ts, d: received.append(d),
                            clock, events.append, backoff_initial_s=1.0, backoff_max_s=8.0, socket_hosts=["127.0.0.1"])
        await t.start()
        await wait_for(lambda: srv.writer is not None, "first connection")
        srv.writer.write(b"one")
        await wait_for(lambda: b"".join(received) == b"one", "data before the loss")
        await srv.stop()  # cable pulled: connection and listener gone
        await wait_for(lambda: [e.kind for e in events] == ["connected", "lost"], "lost event")
        assert not t.connected
        # attempts: first open, immediate reopen, then after 1, 2 and 4 s of backoff (the 5th starts at t >= 7)
        await wait_for(lambda: t.open_attempts >= 5, "several reopen attempts")
        assert clock.now() >= 1 + 2 + 4  # exponential backoff slept on the injected clock
        srv2 = EchoServer()
        await srv2.start(port)
        await wait_for(lambda: [e.kind for e in events] == ["connected", "lost", "connected"], "reconnected")
        await wait_for(lambda: srv2.writer is not None, "server accept after reconnect")
        srv2.writer.write(b"two")
        await wait_for(lambda: b"".join(received) == b"onetwo", "data after reconnect")
        assert events[1].detail  # the reason is reported
        await t.stop()
        await srv2.stop()
        runner.cancel()
    asyncio.run(main())


@pytest.mark.skipif(sys.platform.startswith("win"), reason="pseudo-terminals are POSIX only")
def test_pty_path_and_hangup() -> None:
    import tty

    async def main() -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        path = os.ttyname(slave)
        received = bytearray()
        events: list[LinkEvent] = []
        t = SerialTransport(path, PortSettings(baudrate=115200, timeout=0.05), lambda ts, d: received.extend(d),
                            SystemClock(), events.append, backoff_initial_s=0.05)
        await t.start(require_first_open=True)
        os.write(master, b"\x0bdata\x1c\r")  # CR must survive (raw line)
        await wait_for(lambda: bytes(received) == b"\x0bdata\x1c\r", "pty data")
        await t.write(b"ack\r")
        loop = asyncio.get_running_loop()
        got = await asyncio.wait_for(loop.run_in_executor(None, os.read, master, 100), WAIT)
        assert got == b"ack\r"
        os.close(master)
        os.close(slave)
        await wait_for(lambda: any(e.kind == "lost" for e in events), "hangup detected")
        await t.stop()
    asyncio.run(main())


def test_stop_while_waiting_to_reconnect_returns() -> None:
    async def main() -> None:
        clock = VirtualClock(start=0.0)  # not running: the backoff sleep would never end by itself
        t = SerialTransport("socket://127.0.0.1:1", PortSettings(), lambda ts, d: None, clock, socket_hosts=["127.0.0.1"])
        await t.start()
        await wait_for(lambda: t.open_attempts >= 1 and t.last_error is not None, "first failed open")
        assert "127.0.0.1:1" in t.last_error
        await asyncio.wait_for(t.stop(), WAIT)
    asyncio.run(main())

"""Spirometer port strings come from an allow-list: device paths, COM ports, socket:// to the site's hosts.

pyserial's ``serial_for_url`` understands handlers that write files (``spy://...?file=``) or reach any
host; a port string from the API or the CLI must never get that far.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
from pathlib import Path

import httpx
import pytest

from collector.errors import DeviceError, InvalidInput
from drivers.serial_transport import PortNotAllowed, check_port_url
from tests.test_spirometry_session import SUBJECT, harness
from conftest import operator_token

pytestmark = pytest.mark.timeout(60)
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.mark.parametrize("url", [
    "/dev/ttyUSB0", "/dev/ttyACM1", "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0", "/dev/pts/7",
    "COM3", "com12", "\\\\.\\COM10", "socket://127.0.0.1:5000", "socket://[::1]:5000", "socket://LOCALHOST:1",
])
def test_allowed_ports(url: str) -> None:
    assert check_port_url(url, LOOPBACK) == url


@pytest.mark.parametrize("url, why", [
    ("spy:///dev/null?file=/data/collector.sqlite", "spy:// handler is not allowed"),
    ("loop://", "loop:// handler is not allowed"),
    ("rfc2217://127.0.0.1:2217", "rfc2217:// handler is not allowed"),
    ("alt:///dev/ttyUSB0?class=PosixPollSerial", "alt:// handler is not allowed"),
    ("hwgrep://.*", "hwgrep:// handler is not allowed"),
    ("socket://10.20.30.40:4001", "host 10.20.30.40 is not in [spirometry] socket_hosts"),
    ("socket://127.0.0.1:5000?logging=debug", "nothing after it"),
    ("socket://127.0.0.1:5000/x", "nothing after it"),
    ("socket://user@127.0.0.1:5000", "nothing after it"),
    ("socket://127.0.0.1:0", "port 1-65535"),
    ("socket://127.0.0.1:70000", "port 1-65535"),
    ("socket://127.0.0.1", "port 1-65535"),
    ("/dev/../var/lib/collector.sqlite", "is not a serial device"),
    ("/home/tech/collector.sqlite", "is not a serial device"),
    ("collector.sqlite", "is not a serial device"),
    ("COM0", "is not a serial device"),
    ("/dev/ttyUSB0\n", "is not a port"),
    (" /dev/ttyUSB0", "is not a port"),
    ("", "is not a port"),
])
def test_refused_ports_say_what_is_allowed(url: str, why: str) -> None:
    with pytest.raises(PortNotAllowed) as ei:
        check_port_url(url, LOOPBACK)
    assert why in str(ei.value) and "\n" not in str(ei.value)


def test_no_socket_host_is_allowed_unless_configured() -> None:
    with pytest.raises(PortNotAllowed, match=r"allowed: none"):
        check_port_url("socket://127.0.0.1:5000")


def test_the_spy_url_through_the_api_is_refused_and_the_database_survives(tmp_path: Path) -> None:
    """The attack from the hardening run: the spirometer port names the live database through ``spy://``."""
    from collector.api import create_app

    async def main() -> tuple[Path, int, int]:
        async with harness(tmp_path) as h:
            size_before = h.db.stat().st_size
            app = create_app(h.daemon, "tok")
            auth = {"Authorization": f"Bearer {operator_token(h.db, 'nurse', 'technician')}"}
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                for url in (f"spy:///dev/null?file={h.db}", f"spy://{h.db}", "loop://"):
                    r = await client.post("/api/v1/spirometry/sessions", headers=auth, json={
                        "subject_id": SUBJECT, "kind": "spirometry", "spirometer": url, "protocol": "hl7", "by": "nurse"})
                    assert r.status_code == 422, r.text
                    assert "handler is not allowed" in r.json()["error"]
            return h.db, size_before, len(h.svc.recorders)

    db, size_before, recorders = asyncio.run(main())
    assert recorders == 0 and db.stat().st_size >= size_before > 0
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM subjects WHERE id = ?", (SUBJECT,)).fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0


def test_socket_to_an_unlisted_host_never_connects_and_a_listed_one_does(tmp_path: Path) -> None:
    """A listener on 127.0.0.2 (loopback, but not in the default list) sees no connection until the site lists it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.2", 0))
    server.listen(1)
    server.setblocking(False)
    url = f"socket://127.0.0.2:{server.getsockname()[1]}"

    async def main() -> None:
        async with harness(tmp_path) as h:
            with pytest.raises(InvalidInput, match=r"host 127\.0\.0\.2 is not in \[spirometry\] socket_hosts"):
                await h.svc.start(SUBJECT, url, model="sim-hl7")
            with pytest.raises(BlockingIOError):
                server.accept()  # nobody connected
            h.daemon.config["spirometry"]["socket_hosts"] = ["127.0.0.2"]
            info = await h.svc.start(SUBJECT, url, model="sim-hl7")
            assert info["state"] == "open"
            await h.daemon.stop_session(info["id"])

    try:
        asyncio.run(main())
    finally:
        server.close()


@pytest.mark.skipif(os.name != "posix", reason="character devices are POSIX")
def test_a_regular_file_under_dev_is_not_opened(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    target = shm / f"collector-test-{os.getpid()}"
    target.write_bytes(b"precious")

    async def main() -> None:
        async with harness(tmp_path) as h:
            with pytest.raises(DeviceError, match="not a character device"):
                await h.svc.start(SUBJECT, str(target), model="sim-hl7")

    try:
        asyncio.run(main())
        assert target.read_bytes() == b"precious"
    finally:
        target.unlink()


def test_a_bad_socket_hosts_setting_is_one_clear_line(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            h.daemon.config["spirometry"]["socket_hosts"] = "127.0.0.1"
            with pytest.raises(InvalidInput, match=r"socket_hosts must be a list"):
                await h.svc.start(SUBJECT, "socket://127.0.0.1:1", model="sim-hl7")

    asyncio.run(main())


@pytest.mark.skipif(os.name != "posix", reason="symlinks to ttys are POSIX")
def test_a_stable_symlink_into_dev_is_allowed_and_one_out_of_it_is_not(tmp_path: Path) -> None:
    into = tmp_path / "ttySPIRO"
    into.symlink_to("/dev/null")
    assert check_port_url(str(into)) == str(into)
    out = tmp_path / "sneaky"
    out.symlink_to(tmp_path / "collector.sqlite")
    with pytest.raises(PortNotAllowed, match="is not a serial device"):
        check_port_url(str(out))

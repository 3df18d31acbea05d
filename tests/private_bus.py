"""A private ``dbus-daemon`` standing in for the system bus, for the tests that need one
(bleak's BlueZ backend, logind's inhibitor locks, the site check's adapter query)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


def start_private_bus(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the bus; returns the process and its address (printed once it listens: no waiting by time)."""
    exe = shutil.which("dbus-daemon")
    if exe is None:
        pytest.skip("dbus-daemon not installed (Debian package 'dbus', which .ci/run installs)")
    config = folder / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=folder / "bus.sock"), encoding="utf-8")
    proc = subprocess.Popen([exe, "--config-file", str(config), "--nofork", "--print-address"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    address = proc.stdout.readline().decode().strip()
    if not address:
        proc.kill()
        pytest.fail(f"dbus-daemon did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
    return proc, address


def stop_private_bus(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def system_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private dbus-daemon as the system bus (``DBUS_SYSTEM_BUS_ADDRESS``) for one test; import it to use it."""
    proc, address = start_private_bus(tmp_path)
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
    yield address
    stop_private_bus(proc)

"""``collector doctor`` (is this laptop ready for a night?) and ``collector service unit``."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import click

from collector.context import Ctx, no_login, pass_ctx
from collector.output import emit_json

#: Exit status when a check failed (a finding that must be fixed before a night).
DOCTOR_FAILED = 12

_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@pass_ctx
@no_login("reads only")
def doctor(c: Ctx, as_json: bool) -> None:
    """Check this laptop before a night: Bluetooth, permissions, ports, disk, clock, database, daemon.

    Each finding says what to do. Exit status 12 when a check failed; warnings alone exit 0.
    """
    from collector.host.doctor import Setup, run_checks

    findings = run_checks(Setup(db_path=c.db_path, config=c.config))
    failed = any(f.status == "fail" for f in findings)
    if as_json:
        emit_json({"ok": not failed, "findings": [f.as_dict() for f in findings]})
    else:
        for f in findings:
            click.echo(f"{_MARK[f.status]}  {f.check:<12} {f.summary}")
            if f.action and f.status != "ok":
                click.echo(f"      {'':<12} -> {f.action}")
        worst = "problems to fix before a night" if failed else (
            "ready, with warnings" if any(f.status == "warn" for f in findings) else "ready")
        click.echo(f"{worst}")
    if failed:
        sys.exit(DOCTOR_FAILED)


UNIT = """\
# The collector as a systemd service.  Install (as the user who records nights):
#   mkdir -p ~/.config/systemd/user
#   collector --db {db} service unit > ~/.config/systemd/user/collector.service
#   systemctl --user daemon-reload && systemctl --user enable --now collector
#   sudo loginctl enable-linger $USER      # keeps it running without a desktop login
[Unit]
Description=ALS screening collector (database {db})
After=bluetooth.target network.target

[Service]
Type=notify
ExecStart={exe} --db {db} run
Restart=on-failure
RestartSec=2
# The daemon pings the watchdog from its event loop; a hung daemon is restarted.
WatchdogSec=30
TimeoutStopSec=30
KillSignal=SIGTERM
NotifyAccess=main

[Install]
WantedBy=default.target
"""


@click.group("service")
def service() -> None:
    """Run the collector as an operating-system service."""


@service.command("unit")
@pass_ctx
@no_login("prints a file")
def service_unit(c: Ctx) -> None:
    """Print a systemd unit (Type=notify, watchdog, restart on failure) for this database."""
    exe = shutil.which("collector") or f"{sys.executable} -m collector"
    click.echo(UNIT.format(exe=exe if " " in exe else shlex.quote(exe), db=shlex.quote(str(Path(c.db_path).resolve()))), nl=False)


COMMANDS = [doctor, service]

"""A ward of simulated oximeters behind the real daemon, for the page's tests and for demos.

``launch()`` starts ``collector run --simulate ... --speed N`` in a subprocess (the
same command a site runs, with simulated devices instead of the Bluetooth adapter),
creates an operator, and returns where the page is.  Run it by hand with::

    python -m collector.web.demo --speed 60     # then open the printed address, log in as demo / demo-password
    python -m collector.web.demo --speed 20 --beds 8   # a full ward
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from collector.runtime import runtime_path, token_path

# Two beds: one that drops its link every 20 min (virtual), one with a finger-out spell.
WARD = {
    "SIM-WARD-01": """
[device]
protocol = "plx"
address = "SIM-WARD-01"
name = "SimOx Ward 1"
interval_s = 1.0
[night]
duration_s = 21600
baseline_spo2 = 94
baseline_pulse = 64
noise_spo2 = 0.8
seed = 5
[[desaturations]]
count = 60
depth = 9
duration_s = 60
""" + "".join(f"[[disconnects]]\nat_s = {t}\nduration_s = 300\n" for t in range(1800, 21600, 900)),
    "SIM-WARD-02": """
[device]
protocol = "plx"
address = "SIM-WARD-02"
name = "SimOx Ward 2"
interval_s = 1.0
[night]
duration_s = 21600
baseline_spo2 = 96
baseline_pulse = 71
noise_spo2 = 0.6
seed = 11
[[desaturations]]
count = 20
depth = 6
duration_s = 45
[[finger_out]]
at_s = 900
duration_s = 900
""",
}

def ward_scenarios(beds: int = 2) -> dict[str, str]:
    """The two beds above, then more quiet ones (SIM-WARD-03 ...) for a full ward of up to 8 beds."""
    out = dict(list(WARD.items())[:beds])
    for n in range(len(WARD) + 1, beds + 1):
        out[f"SIM-WARD-{n:02d}"] = f"""
[device]
protocol = "plx"
address = "SIM-WARD-{n:02d}"
name = "SimOx Ward {n}"
interval_s = 1.0
[night]
duration_s = 21600
baseline_spo2 = {93 + n % 4}
baseline_pulse = {60 + 2 * n}
noise_spo2 = 0.7
seed = {100 + n}
[[desaturations]]
count = 30
depth = 7
duration_s = 50
"""
    return out


CONFIG = """
[operator]
name = "technician"
[storage]
flush_interval_s = 0.2
[ble]
scan_timeout_s = 3.0
connect_timeout_s = 10.0
backoff_s = [1.0, 2.0, 2.0]
[web]
alert_disconnected_s = 30
alert_no_sample_s = 60
alert_finger_out_s = 15
"""


@dataclass
class RunningDaemon:
    proc: subprocess.Popen[str]
    db_path: Path
    base_url: str
    token: str  # a CLI login token of the first operator (else the daemon's local token, which only reads)
    log_path: Path
    cmd: tuple[str, ...] = ()

    def kill(self) -> None:
        """SIGKILL: the daemon vanishes as in a crash (tests of what the page shows then)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self, timeout_s: float = 30.0) -> None:
        """Start the same daemon again (same database, port and scenarios) after it stopped."""
        log = open(self.log_path, "a", encoding="utf-8")
        self.proc = subprocess.Popen(list(self.cmd), stdout=log, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _wait_ready(self.proc, self.db_path, self.log_path, timeout_s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def collector_cmd() -> list[str]:
    return [sys.executable, "-c", "from collector.cli import main; main(prog_name='collector')"]


def _collector(db_path: Path, config: Path | None, *args: str, password: str, token: str | None = None) -> str:
    cmd = collector_cmd() + ["--db", str(db_path)] + (["--config", str(config)] if config else []) + list(args)
    env = {**os.environ, **({"COLLECTOR_TOKEN": token} if token else {})}
    out = subprocess.run(cmd, input=password + "\n", capture_output=True, text=True, timeout=60, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"collector {' '.join(args[:2])} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def add_operators(db_path: Path, operators: dict[str, str], config: Path | None = None) -> str | None:
    """The ward's admin (the first operator) adds OPERATORS as technicians; returns a CLI token of the first one."""
    if not operators:
        return None
    admin_password = secrets.token_urlsafe(16)
    _collector(db_path, config, "user", "add", "ward.admin", "--password-stdin", password=admin_password)
    admin = _collector(db_path, config, "login", "ward.admin", "--password-stdin", "--print-token", password=admin_password)
    for name, password in operators.items():
        _collector(db_path, config, "user", "add", name, "--role", "technician", "--password-stdin", password=password, token=admin)
    first, password = next(iter(operators.items()))
    return _collector(db_path, config, "login", first, "--password-stdin", "--print-token", password=password)


def _wait_ready(proc: subprocess.Popen[str], db_path: Path, log_path: Path, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode}: {log_path.read_text(encoding='utf-8')[-2000:]}")
        if runtime_path(db_path).exists() and token_path(db_path).exists():
            try:
                info: dict[str, object] = json.loads(runtime_path(db_path).read_text(encoding="utf-8"))
                if info.get("pid") == proc.pid:
                    return info
            except ValueError:
                pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the daemon did not start within {timeout_s:g} s; log: {log_path}")
        time.sleep(0.05)


def launch(workdir: Path, *, speed: float = 60.0, operators: dict[str, str] | None = None, timeout_s: float = 30.0,
           extra_config: str = "", port: int = 0, beds: int = 2) -> RunningDaemon:
    """``beds`` simulated oximeters (2 by default, up to 8: the adapter limit is raised to match)."""
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / "ward.sqlite"
    config = workdir / "config.toml"
    ble_limit = f"max_beds_per_adapter = {max(5, beds)}\n"
    config.write_text(CONFIG.replace("[ble]\n", "[ble]\n" + ble_limit) + extra_config, encoding="utf-8")
    scenarios = []
    for address, text in ward_scenarios(beds).items():
        path = workdir / f"{address}.toml"
        path.write_text(text, encoding="utf-8")
        scenarios += ["--simulate", str(path)]
    operator_token = add_operators(db_path, operators or {}, config)
    log_path = workdir / "daemon.log"
    log = open(log_path, "w", encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = collector_cmd() + ["--db", str(db_path), "--config", str(config), "run", "--port", str(port), "--speed", str(speed), *scenarios]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    info = _wait_ready(proc, db_path, log_path, timeout_s)
    token = operator_token or token_path(db_path).read_text(encoding="ascii").strip()
    return RunningDaemon(proc, db_path, f"http://{info['host']}:{info['port']}", token, log_path, tuple(cmd))


def main() -> None:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="Serve the technician's page over a ward of simulated oximeters.")
    parser.add_argument("--speed", type=float, default=60.0, help="virtual-time factor (default 60: one minute per second)")
    parser.add_argument("--dir", type=Path, default=None, help="working directory (default: a new temporary one)")
    parser.add_argument("--beds", type=int, default=2, choices=range(1, 9), metavar="1-8", help="simulated oximeters (default 2)")
    args = parser.parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="collector-ward-"))
    daemon = launch(workdir, speed=args.speed, operators={"demo": "demo-password"}, beds=args.beds)
    print(f"page: {daemon.base_url}/  (operator demo, password demo-password); simulated oximeters: {', '.join(ward_scenarios(args.beds))}")
    print(f"database {daemon.db_path}; Ctrl-C stops")
    try:
        daemon.proc.wait()
    except KeyboardInterrupt:
        daemon.stop()


if __name__ == "__main__":
    main()

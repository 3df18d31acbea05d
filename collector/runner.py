"""``collector run``: the daemon process (recorders + control API + signals)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Sequence

import uvicorn

from collector.api import create_app
from collector.clock import Clock, SystemClock, VirtualClock
from collector.errors import InvalidInput, StorageError
from collector.storage import writable
from collector.storage.lock import DatabaseLock
from collector.features import build_daemon
from collector.host import sd_notify
from collector.runtime import load_or_create_token, remove_runtime, write_runtime

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon shuts down in order first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_api_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StorageError(
            f"cannot serve the control API on {host}:{port} ({exc.strerror or exc}); "
            "is another collector running? choose another port with --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def latest_stored_time(db_path: Path) -> float | None:
    from collector.oximetry.store import latest_sample_ms
    from collector.storage.db import open_db

    try:
        conn = open_db(db_path).conn  # migrated first: an older database gets its per-session sample stats here
        try:
            last = latest_sample_ms(conn)
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return None if last is None else last / 1000


def make_clock(db_path: Path, speed: float) -> Clock:
    if speed == 1:
        return SystemClock()
    clock = VirtualClock(speed=speed)
    last = latest_stored_time(db_path)
    if last is not None:
        clock.jump_to(last + 1.0)  # never stamp a resumed session earlier than what is stored
    return clock


async def serve(
    db_path: Path,
    config: dict[str, Any],
    *,
    host: str | None = None,
    port: int | None = None,
    scenarios: Sequence[Path] = (),
    speed: float = 1.0,
    capture: Path | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    host = host or config["api"]["host"]
    port = config["api"]["port"] if port is None else port
    if host not in ("127.0.0.1", "localhost", "::1") and host != config["api"]["host"]:
        raise InvalidInput(f"the API binds to loopback only; to use {host} set [api] host in the config file explicitly")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("control API bound to %s (from the config): it is reachable from other machines", host)
    if speed <= 0 or math.isnan(speed):
        raise InvalidInput("--speed must be a positive number (1 = real time)")
    if speed != 1 and not scenarios:
        raise InvalidInput("--speed only applies to simulated devices; add --simulate SCENARIO")

    writable.check(db_path)  # an unwritable -shm/-wal: one line and exit 3 here, not SIGBUS mid-night
    db_lock = DatabaseLock(db_path).acquire()  # before anything is resumed: a second daemon stops here
    try:
        return await _serve_locked(db_path, config, host=host, port=port, scenarios=list(scenarios), speed=speed,
                                   capture=capture, ready=ready)
    finally:
        db_lock.release()


async def _serve_locked(db_path: Path, config: dict[str, Any], *, host: str, port: int, scenarios: list[Path],
                        speed: float, capture: Path | None, ready: asyncio.Event | None) -> int:
    sock = bind_api_socket(host, port)  # before anything starts: a busy port is a clean one-line error
    clock = make_clock(db_path, speed)
    backend = scanner = None
    devices = []
    if scenarios:
        from simulators.ble_backend import SimulatedAir
        from simulators.oximeter import SimulatedOximeter
        from simulators.scenario import load_scenario

        air = SimulatedAir(clock)
        for path in scenarios:
            devices.append(air.add(SimulatedOximeter(load_scenario(path), clock, keep_delivered=False)))
        backend, scanner = air.client_backend, air.scanner_backend

    daemon = build_daemon(db_path, clock=clock, config=config, ble_backend=backend, scanner_backend=scanner, capture_path=capture,
                    origin="simulated" if scenarios else "live")
    token = load_or_create_token(db_path)
    app = create_app(daemon, token)
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False,
                                    timeout_graceful_shutdown=5))
    background: list[asyncio.Task[Any]] = []
    if isinstance(clock, VirtualClock):
        background.append(asyncio.create_task(clock.run(), name="virtual-clock"))
    background += [asyncio.create_task(d.run(), name=f"sim-{d.address}") for d in devices]

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # Windows: KeyboardInterrupt instead
            loop.add_signal_handler(sig, stop.set)

    resumed = await daemon.resume_open_sessions()
    server_task = asyncio.create_task(server.serve(sockets=[sock]), name="api")
    while not server.started:
        if server_task.done():
            await daemon.shutdown()
            raise StorageError(f"cannot serve the control API on {host}:{port} ({server_task.exception()}); choose another with --port")
        await asyncio.sleep(0.01)
    bound_port = sock.getsockname()[1]
    write_runtime(db_path, host=host, port=bound_port, pid=os.getpid())
    log.info("collector daemon on http://%s:%s (db %s), resumed sessions: %s", host, bound_port, db_path, resumed or "none")
    print(f"collector daemon ready on http://{host}:{bound_port} (database {db_path}); resumed sessions: {resumed or 'none'}", flush=True)
    sd_notify.notify(f"READY=1\nSTATUS=recording; resumed sessions: {resumed or 'none'}")
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        sd_notify.notify("STOPPING=1")
        log.info("stopping: API first (requests in flight get up to 5 s), then the sessions")
        server.should_exit = True
        try:
            await asyncio.wait_for(server_task, 15)
        except (asyncio.TimeoutError, Exception):
            log.warning("the control API did not stop cleanly; continuing the shutdown")
        await daemon.shutdown()
        for task in background:
            task.cancel()
        remove_runtime(db_path)
    print("collector daemon stopped; open sessions were saved as interrupted and resume on the next start", flush=True)
    return 0

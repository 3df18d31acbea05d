"""Feature packages plug into the daemon, the API and the CLI here: the one place that knows them all.

A feature contributes any of:
- ``attach(daemon)``: add services, listeners, status providers, startup and shutdown hooks,
  using only the daemon's public surface (``write``, ``flush``, ``open_reader``, ``notify``,
  ``services``, ``listeners``, ``status_providers``, ``startup_hooks``, ``shutdown_hooks``);
- ``make_router(daemon, auth) -> fastapi.APIRouter``: API routes (``auth`` is the token dependency);
- click commands added to the ``collector`` group.

The daemon does not know its features: :func:`build_daemon` creates it and attaches them, so
feature modules may use the daemon without an import cycle.  Feature tables are registered
separately (collector/schemas.py), so opening a database never imports a feature's services.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from collector.eligibility import cli as eligibility_cli
from collector.eligibility import service as eligibility_service
from collector.export import service as export_service
from collector.host import cli as host_cli
from collector.host import service as host_service
from collector.i18n import routes as i18n_routes
from collector.oximetry import cli as oximetry_cli
from collector.oximetry import service as oximetry_service
from collector.spirometry import cli as spirometry_cli
from collector.spirometry import service as spirometry_service
from collector.upload import cli as upload_cli
from collector.users import cli as users_cli
from collector.warehouse import cli as warehouse_cli
from collector.ward import cli as ward_cli
from collector.ward import service as ward_service
from collector.web import service as web_service

if TYPE_CHECKING:
    from collector.daemon import Daemon


@dataclass(frozen=True)
class Feature:
    """What one feature adds; every part is optional."""

    name: str
    attach: Callable[[Any], Any] | None = None
    make_router: Callable[[Any, Any], Any] | None = None
    commands: tuple[click.Command, ...] = ()


# Attach, route and command order is this order.
FEATURES: tuple[Feature, ...] = (
    Feature("oximetry", oximetry_service.attach, commands=tuple(oximetry_cli.COMMANDS)),
    Feature("spirometry", spirometry_service.attach, spirometry_service.make_router, tuple(spirometry_cli.COMMANDS)),
    Feature("eligibility", eligibility_service.attach, eligibility_service.make_router, tuple(eligibility_cli.COMMANDS)),
    Feature("export", make_router=export_service.make_router, commands=tuple(export_service.COMMANDS)),
    Feature("upload", commands=tuple(upload_cli.COMMANDS)),
    Feature("warehouse", commands=tuple(warehouse_cli.COMMANDS)),
    Feature("ward", ward_service.attach, ward_service.make_router, tuple(ward_cli.COMMANDS)),
    Feature("web", web_service.attach, web_service.make_router),
    Feature("operators", commands=tuple(users_cli.COMMANDS)),
    Feature("host", host_service.attach, commands=tuple(host_cli.COMMANDS)),
    Feature("languages", make_router=i18n_routes.make_router),
)


def attach_all(daemon: Any) -> None:
    for feature in FEATURES:
        if feature.attach is not None:
            feature.attach(daemon)


def routers(daemon: Any, auth: Any) -> list[Any]:
    return [feature.make_router(daemon, auth) for feature in FEATURES if feature.make_router is not None]


def commands() -> list[click.Command]:
    return [command for feature in FEATURES for command in feature.commands]


def build_daemon(db_path: Path | str, **options: Any) -> Daemon:
    """A :class:`~collector.daemon.Daemon` (same keyword options) with every feature attached."""
    from collector.daemon import Daemon  # not at import time: the CLI starts without loading the BLE stack

    daemon = Daemon(db_path, **options)
    attach_all(daemon)
    return daemon

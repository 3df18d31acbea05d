"""Feature packages plug into the daemon, the API and the CLI here: the one place that knows them all.

A feature contributes any of:
- ``attach(daemon)``: add services, listeners, status providers, startup and shutdown hooks,
  using only the daemon's public surface (``write``, ``flush``, ``open_reader``, ``notify``,
  ``services``, ``listeners``, ``status_providers``, ``startup_hooks``, ``shutdown_hooks``,
  ``session_facts``);
- ``make_router(daemon, auth) -> fastapi.APIRouter``: API routes (``auth`` is the token dependency);
- click commands added to the ``collector`` group.

The daemon does not know its features: :func:`build_daemon` creates it and attaches them, so
feature modules may use the daemon without an import cycle.  Feature tables are registered
separately (collector/schemas.py), so opening a database never imports a feature's services.
Services and routes are imported when a daemon or the API is built (the small functions
below), not with this module: a CLI command loads only the command modules, never the BLE
stack, the web framework or the analysis code it does not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from collector.eligibility import cli as eligibility_cli
from collector.export import service as export_cli
from collector.host import cli as host_cli
from collector.oximetry import cli as oximetry_cli
from collector.spirometry import cli as spirometry_cli
from collector.upload import cli as upload_cli
from collector.users import cli as users_cli
from collector.warehouse import cli as warehouse_cli
from collector.ward import cli as ward_cli

if TYPE_CHECKING:
    from collector.daemon import Daemon


@dataclass(frozen=True)
class Feature:
    """What one feature adds; every part is optional."""

    name: str
    attach: Callable[[Any], Any] | None = None
    make_router: Callable[[Any, Any], Any] | None = None
    commands: tuple[click.Command, ...] = ()


# Each imports its service module when called (a daemon or the API is being built).
def _oximetry_attach(daemon: Any) -> Any:
    from collector.oximetry import service

    return service.attach(daemon)


def _spirometry_attach(daemon: Any) -> Any:
    from collector.spirometry import service

    return service.attach(daemon)


def _spirometry_router(daemon: Any, auth: Any) -> Any:
    from collector.spirometry import service

    return service.make_router(daemon, auth)


def _eligibility_attach(daemon: Any) -> Any:
    from collector.eligibility import service

    return service.attach(daemon)


def _eligibility_router(daemon: Any, auth: Any) -> Any:
    from collector.eligibility import service

    return service.make_router(daemon, auth)


def _export_router(daemon: Any, auth: Any) -> Any:
    from collector.export import routes

    return routes.make_router(daemon, auth)


def _ward_attach(daemon: Any) -> Any:
    from collector.ward import service

    return service.attach(daemon)


def _ward_router(daemon: Any, auth: Any) -> Any:
    from collector.ward import service

    return service.make_router(daemon, auth)


def _host_attach(daemon: Any) -> Any:
    from collector.host import service

    return service.attach(daemon)


def _languages_router(daemon: Any, auth: Any) -> Any:
    from collector.i18n import routes

    return routes.make_router(daemon, auth)


def _web_attach(daemon: Any) -> Any:
    from collector.web import service

    return service.attach(daemon)


def _web_router(daemon: Any, auth: Any) -> Any:
    from collector.web import service

    return service.make_router(daemon, auth)


# Attach, route and command order is this order.
FEATURES: tuple[Feature, ...] = (
    Feature("oximetry", _oximetry_attach, commands=tuple(oximetry_cli.COMMANDS)),
    Feature("spirometry", _spirometry_attach, _spirometry_router, tuple(spirometry_cli.COMMANDS)),
    Feature("eligibility", _eligibility_attach, _eligibility_router, tuple(eligibility_cli.COMMANDS)),
    Feature("export", make_router=_export_router, commands=tuple(export_cli.COMMANDS)),
    Feature("upload", commands=tuple(upload_cli.COMMANDS)),
    Feature("warehouse", commands=tuple(warehouse_cli.COMMANDS)),
    Feature("ward", _ward_attach, _ward_router, tuple(ward_cli.COMMANDS)),
    Feature("web", _web_attach, _web_router),
    Feature("operators", commands=tuple(users_cli.COMMANDS)),
    Feature("host", _host_attach, commands=tuple(host_cli.COMMANDS)),
    Feature("languages", make_router=_languages_router),
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

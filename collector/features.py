"""Feature packages plug into the daemon, the API and the CLI here.

Each module listed may define any of:
- ``attach(daemon)``: add services, listeners, shutdown hooks, status providers;
- ``make_router(daemon, auth) -> fastapi.APIRouter``: API routes (``auth`` is the token dependency);
- ``COMMANDS``: click commands added to the ``collector`` group.
Keeping the wiring in one list lets features land independently of each other.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Iterator

FEATURE_MODULES = (
    "collector.oximetry.service",
    "collector.oximetry.cli",
    "collector.spirometry.service",
    "collector.eligibility.service",
    "collector.export.service",
    "collector.web.service",
)


def modules() -> Iterator[ModuleType]:
    for name in FEATURE_MODULES:
        yield importlib.import_module(name)


def attach_all(daemon: Any) -> None:
    for mod in modules():
        if hasattr(mod, "attach"):
            mod.attach(daemon)


def routers(daemon: Any, auth: Any) -> list[Any]:
    return [mod.make_router(daemon, auth) for mod in modules() if hasattr(mod, "make_router")]


def commands() -> list[Any]:
    return [cmd for mod in modules() for cmd in getattr(mod, "COMMANDS", [])]

"""Configuration: packaged defaults, overridden by a site file.

Kept as plain nested dicts (TOML tables) so that every value used for a
decision can be recorded verbatim next to the result.
"""

from __future__ import annotations

import copy
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from collector.errors import InvalidInput


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def defaults() -> dict[str, Any]:
    text = resources.files("config").joinpath("defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def load_config(path: Path | str | None = None) -> dict[str, Any]:
    cfg = defaults()
    if path is None:
        return cfg
    path = Path(path)
    try:
        override = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInput(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"config {path} is not valid TOML: {exc}") from exc
    return _merge(cfg, override)

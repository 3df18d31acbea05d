"""Configuration: packaged defaults, overridden by a site file, validated at load.

Kept as plain nested dicts (TOML tables) so that every value used for a
decision can be recorded verbatim next to the result.  The site file is
``--config PATH`` (or ``$COLLECTOR_CONFIG``), else ``config.toml`` in the data
directory when it exists.  Every table, key, type and range is checked by
:mod:`collector.config_schema`; a bad file is refused with one line.
"""

from __future__ import annotations

import copy
import tomllib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from collector.errors import InvalidInput
from collector.storage.db import data_dir

DEFAULTS_NAME = "config/defaults.toml"
SITE_FILE_NAME = "config.toml"


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@lru_cache(maxsize=1)
def _packaged() -> dict[str, Any]:
    from collector.config_schema import validate  # pydantic: loaded by the commands that read the config

    text = resources.files("config").joinpath("defaults.toml").read_text(encoding="utf-8")
    return validate(tomllib.loads(text), source=DEFAULTS_NAME)


def defaults() -> dict[str, Any]:
    """The packaged defaults, validated (a fresh copy: callers may change it)."""
    return copy.deepcopy(_packaged())


def completed(config: dict[str, Any], *, source: str) -> dict[str, Any]:
    """A config given in code (tests, the demo): missing keys take the defaults, the whole is validated."""
    from collector.config_schema import validate

    return validate(_merge(_packaged(), config), source=source, override=config)


def default_config_path() -> Path:
    """The site file read when no ``--config`` is given (it need not exist)."""
    return data_dir() / SITE_FILE_NAME


def load_config(path: Path | str | None = None) -> dict[str, Any]:
    """Defaults merged with the site file (``path``, else the data directory's config.toml if present).

    The result of the last validation is reused while none of its inputs changed
    (:mod:`collector.config_cache`): a client command then never loads pydantic.
    """
    from collector import config_cache

    site = Path(path) if path is not None else default_config_path()
    site_bytes: bytes | None = None  # None: no site file in the data directory, the packaged defaults
    if path is not None or site.is_file():
        try:
            site_bytes = site.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read config {site}: {exc.strerror or exc}") from exc
    packaged = resources.files("config").joinpath("defaults.toml").read_bytes()
    digest = config_cache.key([(DEFAULTS_NAME, packaged), (str(site.absolute()), site_bytes)])
    cached = config_cache.read(digest)
    if cached is not None:
        return cached
    cfg = _validated(site, site_bytes)
    config_cache.write(digest, cfg)
    return cfg


def _validated(site: Path, site_bytes: bytes | None) -> dict[str, Any]:
    cfg = defaults()
    if site_bytes is None:
        return cfg
    try:
        text = site_bytes.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as a text-mode read
        override = tomllib.loads(text)
    except UnicodeDecodeError:
        raise InvalidInput(f"config {site} is not UTF-8 text; save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"config {site} is not valid TOML: {exc}") from None
    from collector.config_schema import validate

    return validate(_merge(cfg, override), source=site, override=override)

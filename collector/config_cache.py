"""The validated configurations of the last commands, kept in the data directory.

Why: every command reads the config, and validating it imports pydantic and builds the
schema, which was most of what ``collector status`` cost before it sent its request.
The files change rarely, so each validation's result is kept under a key made of
everything it depends on (one small file per key, the newest few kept): the packaged defaults and the site file (their full bytes,
and the site file's path), the schema module and the project modules it takes names
from, and the installed pydantic (size and modification time of each).  Any change gives
a new key and a full validation; a bad file is never stored, so it is refused with its
one line every time.  The cache is only ever a shortcut: a missing, unreadable,
corrupt or unwritable cache file means validating as before, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from collector.storage.db import data_dir

CACHE_DIR = "config-cache"
FORMAT = "collector-config-cache/1"
KEEP = 16  # entries kept (a few sites' or tests' files used in turn)

#: The files whose code decides what validation returns: the schema and every project module it
#: imports names from (tests/test_config_cache.py checks this list against the schema's imports),
#: and pydantic itself.
SCHEMA_SOURCES: tuple[tuple[str, str], ...] = (
    ("collector", "config_schema.py"),
    ("collector", "errors.py"),
    ("collector", "eligibility/facts.py"),
    ("collector", "spirometry/codes.py"),
    ("collector", "spirometry/equations.py"),
    ("drivers", "spirometry/gdt.py"),
    ("drivers", "spirometry/results.py"),
    ("pydantic", "version.py"),
    ("pydantic_core", "__init__.py"),
)


def cache_dir() -> Path:
    return data_dir() / CACHE_DIR


def _package_dir(name: str) -> Path | None:
    spec = find_spec(name)  # a top-level package: found without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def key(sources: list[tuple[str, bytes | None]]) -> str:
    """A digest of every input of the validation; ``sources`` = (name, file bytes or None if absent)."""
    h = hashlib.sha256(FORMAT.encode())
    for name, data in sources:
        h.update(b"\0file\0" + name.encode("utf-8", "surrogateescape") + b"\0")
        h.update(b"absent" if data is None else hashlib.sha256(data).digest())
    roots: dict[str, Path | None] = {}
    for package, rel in SCHEMA_SOURCES:
        if package not in roots:
            roots[package] = _package_dir(package)
        root = roots[package]
        try:
            st = (root / rel).stat() if root is not None else None
        except OSError:
            st = None
        stamp = "missing" if st is None else f"{st.st_size}:{st.st_mtime_ns}"
        h.update(f"\0code\0{package}/{rel}\0{stamp}".encode())
    return h.hexdigest()


def read(digest: str) -> dict[str, Any] | None:
    """The config stored under ``digest``, or None (no cache, another key, or a file that cannot be used)."""
    try:
        entry = json.loads((cache_dir() / f"{digest}.json").read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != digest or not isinstance(entry.get("config"), dict):
        return None
    config: dict[str, Any] = entry["config"]
    return config


def _plain(value: Any) -> bool:
    """True if JSON gives ``value`` back with the same types (dicts with str keys, lists, str, int, float, bool, None)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    return value is None or isinstance(value, (str, int, bool))


def write(digest: str, config: dict[str, Any]) -> None:
    """Keep ``config`` under ``digest`` (each entry appears whole, at once); any failure is ignored."""
    if not _plain(config):
        return  # JSON would not give the same values back: validate every time instead
    folder = cache_dir()
    tmp = folder / f".{digest}.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"key": digest, "config": config}, f, ensure_ascii=False, allow_nan=False)
        os.replace(tmp, folder / f"{digest}.json")
        _prune(folder)
    except (OSError, ValueError):
        try:
            tmp.unlink()
        except OSError:
            pass


def _prune(folder: Path) -> None:
    """Drop all but the ``KEEP`` newest entries (another process may be pruning too)."""
    entries = []
    for p in folder.glob("*.json"):
        try:
            entries.append((p.stat().st_mtime_ns, p))
        except OSError:
            continue
    for _, p in sorted(entries, reverse=True)[KEEP:]:
        try:
            p.unlink()
        except OSError:
            pass

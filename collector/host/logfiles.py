"""The daemon's log in rotating files next to the database, so a night's story survives the terminal."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_path(db_path: Path) -> Path:
    return Path(db_path).resolve().parent / "logs" / "collector.log"


def add_log_file(db_path: Path, config: dict[str, Any], *, level: int = logging.INFO) -> Path | None:
    """Log to ``<database folder>/logs/collector.log`` (UTC times), rotated by size; its path, or None if it cannot be written."""
    import time

    path = log_path(db_path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=config["host"]["log_max_mb"] * 1024 * 1024,
                                                       backupCount=config["host"]["log_files"], encoding="utf-8")
    except OSError as exc:  # a read-only folder: the database check that follows says what to do
        logging.getLogger(__name__).warning("cannot write the log file %s (%s); logging to the terminal only",
                                            path, exc.strerror or exc)
        return None
    formatter = logging.Formatter(FORMAT, "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.setLevel(level)
    root = logging.getLogger()
    if root.level > level:  # the file gets INFO; the terminal keeps what -v asked for
        for existing in root.handlers:
            if existing.level == logging.NOTSET:
                existing.setLevel(root.level)
        root.setLevel(level)
    root.addHandler(handler)
    return path

"""The warehouse's catalogue (``DIR/study.duckdb``) and its Parquet files: every SQL statement of the warehouse.

Layout under ``DIR/parquet/<table>/site_uuid=<uuid>/subject=<id>/`` (Hive partitions):

- ``samples``, ``nights``, ``spirometry``: one file per session (``<session_uuid>.parquet``),
  replaced when a newer export of that session is loaded, so a re-exported subject never
  has two copies of a night;
- ``criteria``, ``decisions``: one file per subject (``current.parquet``), from the subject's
  newest export;
- ``bundles``: one file per loaded bundle (``<bundle_id>.parquet``), superseded ones too.

The catalogue records which object (key + ETag) was loaded or rejected and which bundle each
session and subject comes from; its views read the Parquet files directly (``read_parquet``
globs), so queries scale with the files, not with the catalogue.  A file is written next to
its place and renamed over it; the catalogue row is committed after, so a crash in between
only means the object is loaded again (giving the same files) by the next sync.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb

from collector.errors import Conflict, StorageError
from collector.export import merge

DuckError = duckdb.Error

SESSION_TABLES = ("samples", "nights", "spirometry")
SUBJECT_TABLES = ("criteria", "decisions")
VIEWS = ("samples", "nights", "spirometry", "criteria", "decisions", "bundles")
PARTITIONS = ("site_uuid", "subject")
BUNDLE_EXTRA = [("object_key", "TEXT"), ("etag", "TEXT"), ("size_bytes", "BIGINT"), ("loaded_utc", "TEXT")]

CATALOGUE_SQL = """
CREATE TABLE IF NOT EXISTS objects (
    object_key TEXT NOT NULL, etag TEXT NOT NULL, size_bytes BIGINT, status TEXT NOT NULL,  -- loaded | duplicate
    bundle_id TEXT, site_uuid TEXT, subject TEXT, loaded_utc TEXT NOT NULL, note TEXT,
    PRIMARY KEY (object_key, etag));
CREATE TABLE IF NOT EXISTS rejected (
    object_key TEXT NOT NULL, etag TEXT NOT NULL, size_bytes BIGINT, problem TEXT NOT NULL, problems_json TEXT,
    seen_utc TEXT NOT NULL, PRIMARY KEY (object_key, etag));
CREATE TABLE IF NOT EXISTS current_sessions (
    site_uuid TEXT NOT NULL, session_uuid TEXT NOT NULL, subject TEXT, bundle_id TEXT NOT NULL, export_utc TEXT NOT NULL,
    PRIMARY KEY (site_uuid, session_uuid));
CREATE TABLE IF NOT EXISTS current_subjects (
    site_uuid TEXT NOT NULL, subject TEXT NOT NULL, bundle_id TEXT NOT NULL, export_utc TEXT NOT NULL,
    PRIMARY KEY (site_uuid, subject));
"""


def _lit(text: str) -> str:
    """A SQL string literal (COPY and read_parquet take no parameters for paths)."""
    return "'" + text.replace("'", "''") + "'"


def view_columns(table: str) -> list[tuple[str, str]]:
    return merge.columns(table) + (BUNDLE_EXTRA if table == "bundles" else [])


class Catalogue:
    """``DIR/study.duckdb`` held open for one sync (DuckDB lets one process write it at a time)."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = Path(out_dir).resolve()
        self.parquet = self.dir / "parquet"
        path = self.dir / "study.duckdb"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.con = duckdb.connect(str(path))
        except OSError as exc:
            raise StorageError(f"cannot create the warehouse folder {self.dir} ({exc.strerror or exc}); check its permissions") from None
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise Conflict(f"{path} is in use by another sync or program; wait for it to finish, then run again") from None
            raise StorageError(f"cannot open {path} ({str(exc).splitlines()[0]}); check the file and its folder") from None
        except duckdb.Error as exc:
            raise StorageError(f"cannot open {path} ({str(exc).splitlines()[0]}); is it a DuckDB catalogue made by "
                               "collector warehouse sync?") from None
        self.con.execute(CATALOGUE_SQL)

    def close(self) -> None:
        self.con.close()

    # -- what is known ---------------------------------------------------------------------------
    def seen(self) -> dict[tuple[str, str], str]:
        """(key, etag) of every object loaded, found a duplicate or rejected -> its status."""
        out = {(k, e): s for k, e, s in self.con.execute("SELECT object_key, etag, status FROM objects").fetchall()}
        out.update({(k, e): "rejected" for k, e in self.con.execute("SELECT object_key, etag FROM rejected").fetchall()})
        return out

    def loaded_keys(self) -> dict[str, str]:
        return dict(self.con.execute("SELECT object_key, etag FROM objects").fetchall())

    def bundle_key(self, bundle_id: str) -> str | None:
        row = self.con.execute("SELECT object_key FROM objects WHERE bundle_id = ? AND status = 'loaded'", [bundle_id]).fetchone()
        return None if row is None else str(row[0])

    def counts(self) -> dict[str, int]:
        out = {}
        for t in ("objects", "rejected", "current_sessions", "current_subjects"):
            row = self.con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()
            out[t] = int(row[0]) if row else 0
        return out

    def rejected(self) -> list[dict[str, Any]]:
        cur = self.con.execute("SELECT object_key, etag, problem, seen_utc FROM rejected ORDER BY seen_utc, object_key")
        return [dict(zip(("object_key", "etag", "problem", "seen_utc"), r)) for r in cur.fetchall()]

    # -- changes ---------------------------------------------------------------------------------
    def reject(self, key: str, etag: str, size: int, problem: str, problems_json: str, at: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?, ?, ?)", [key, etag, size, problem, problems_json, at])

    def duplicate(self, key: str, etag: str, size: int, bundle_id: str, of_key: str, at: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, 'duplicate', ?, NULL, NULL, ?, ?)",
                         [key, etag, size, bundle_id, at, f"the same bundle as {of_key}"])

    def load(self, staged: Any, *, key: str, etag: str, size: int, bundle_id: str, at: str) -> dict[str, int]:
        """Write the staged bundle's newer sessions and subject rows as Parquet and record it; rows written per table."""
        from collector.export.merge import _newer

        written = {t: 0 for t in VIEWS}
        (site_uuid, subject, export_utc), = staged.execute("SELECT site_uuid, subject, export_utc FROM bundles").fetchall()
        part = self.parquet / "{table}" / f"site_uuid={site_uuid}" / f"subject={subject}"
        self.con.execute("BEGIN TRANSACTION")
        try:
            for (session_uuid,) in staged.execute("SELECT session_uuid FROM sessions ORDER BY session_uuid").fetchall():
                held = self.con.execute("SELECT export_utc, bundle_id FROM current_sessions WHERE site_uuid = ? AND session_uuid = ?",
                                        [site_uuid, session_uuid]).fetchone()
                if not _newer(export_utc, bundle_id, held):
                    continue
                where = f"session_uuid = {_lit(session_uuid)}"
                for t in SESSION_TABLES:
                    written[t] += self._write(staged, t, where, Path(str(part).format(table=t)) / f"{session_uuid}.parquet")
                self.con.execute("INSERT OR REPLACE INTO current_sessions VALUES (?, ?, ?, ?, ?)",
                                 [site_uuid, session_uuid, subject, bundle_id, export_utc])
            held = self.con.execute("SELECT export_utc, bundle_id FROM current_subjects WHERE site_uuid = ? AND subject = ?",
                                    [site_uuid, subject]).fetchone()
            if _newer(export_utc, bundle_id, held):
                for t in SUBJECT_TABLES:
                    written[t] += self._write(staged, t, "TRUE", Path(str(part).format(table=t)) / "current.parquet")
                self.con.execute("INSERT OR REPLACE INTO current_subjects VALUES (?, ?, ?, ?)", [site_uuid, subject, bundle_id, export_utc])
            extra = f"{_lit(key)} AS object_key, {_lit(etag)} AS etag, {int(size)} AS size_bytes, {_lit(at)} AS loaded_utc"
            written["bundles"] += self._write(staged, "bundles", "TRUE", Path(str(part).format(table="bundles")) / f"{bundle_id}.parquet",
                                              extra=extra)
            self.con.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, 'loaded', ?, ?, ?, ?, NULL)",
                             [key, etag, size, bundle_id, site_uuid, subject, at])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return written

    def _write(self, staged: Any, table: str, where: str, path: Path, extra: str = "") -> int:
        """COPY the rows to ``path`` (without the partition columns); no rows: no file (an older one is removed)."""
        cols = [c for c, _ in merge.columns(table) if c not in PARTITIONS]
        select = f"SELECT {', '.join(cols)}{', ' + extra if extra else ''} FROM {table} WHERE {where}"
        row = staged.execute(f"SELECT COUNT(*) FROM ({select})").fetchone()
        n = int(row[0]) if row else 0
        if n == 0:
            path.unlink(missing_ok=True)
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp")
        staged.execute(f"COPY ({select}) TO {_lit(str(tmp))} (FORMAT parquet, COMPRESSION zstd)")
        os.replace(tmp, path)
        return n

    def refresh_views(self) -> None:
        """Views over the Parquet globs (a table with no file yet: an empty view with the same columns)."""
        for t in VIEWS:
            cols = view_columns(t)
            names = ", ".join(c for c, _ in cols)
            folder = self.parquet / t
            if any(folder.glob("*/*/*.parquet")):
                src = (f"read_parquet({_lit(str(folder / '*' / '*' / '*.parquet'))}, hive_partitioning = true, "
                       "hive_types = {'site_uuid': VARCHAR, 'subject': VARCHAR}, union_by_name = true)")
                self.con.execute(f"CREATE OR REPLACE VIEW {t} AS SELECT {names} FROM {src}")
            else:
                empty = ", ".join(f"CAST(NULL AS {kind}) AS {c}" for c, kind in cols)
                self.con.execute(f"CREATE OR REPLACE VIEW {t} AS SELECT {empty} WHERE FALSE")


def stage(b: Any, bundle_id: str) -> Any:
    """The bundle's rows in memory, with the merge's tables and types."""
    return merge.stage_bundle(b, bundle_id)


def staged_identity(staged: Any) -> tuple[str, str, str]:
    (site_uuid, subject, export_utc), = staged.execute("SELECT site_uuid, subject, export_utc FROM bundles").fetchall()
    return str(site_uuid), str(subject), str(export_utc)

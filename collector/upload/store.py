"""The ``uploads`` table: every SQL statement on the upload queue (the caller owns the transaction).

Every change of a queued upload is written to the audit trail in the same transaction.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from collector.clock import utc_iso
from collector.storage import audit

_COLUMNS = ("id, bundle, bundle_path, sha256, size_bytes, site_uuid, subject_id, bucket, object_key, state, attempts,"
            " last_error, queued_utc, queued_by, done_utc, outcome, version_id, etag, retention_mode, retain_until_utc")


def _row(cur: sqlite3.Cursor, row: tuple[Any, ...] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {d[0]: v for d, v in zip(cur.description, row)}


def get(conn: sqlite3.Connection, upload_id: int) -> dict[str, Any]:
    cur = conn.execute(f"SELECT {_COLUMNS} FROM uploads WHERE id = ?", (upload_id,))
    row = _row(cur, cur.fetchone())
    assert row is not None, f"upload {upload_id} vanished"
    return row


def find(conn: sqlite3.Connection, bucket: str, key: str, sha256: str) -> dict[str, Any] | None:
    cur = conn.execute(f"SELECT {_COLUMNS} FROM uploads WHERE bucket = ? AND object_key = ? AND sha256 = ?",
                       (bucket, key, sha256))
    return _row(cur, cur.fetchone())


def pending(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    cur = conn.execute(f"SELECT {_COLUMNS} FROM uploads WHERE state = 'pending' ORDER BY id")
    return [r for r in (_row(cur, x) for x in cur.fetchall()) if r is not None]


def list_all(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    cur = conn.execute(f"SELECT {_COLUMNS} FROM uploads ORDER BY id")
    return [r for r in (_row(cur, x) for x in cur.fetchall()) if r is not None]


def enqueue(conn: sqlite3.Connection, *, bundle: str, path: str, sha256: str, size: int, site_uuid: str, subject_id: str,
            bucket: str, key: str, by: str, at: float) -> dict[str, Any]:
    """Queue a bundle for ``s3://bucket/key`` (the same bundle to the same place is queued once)."""
    held = find(conn, bucket, key, sha256)
    if held is not None:
        return held
    cur = conn.execute(
        "INSERT INTO uploads (bundle, bundle_path, sha256, size_bytes, site_uuid, subject_id, bucket, object_key, state,"
        " queued_utc, queued_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        (bundle, path, sha256, size, site_uuid, subject_id, bucket, key, utc_iso(at), by))
    upload_id = int(cur.lastrowid or 0)
    audit.append(conn, at=at, actor=by, action="upload_queued", subject_id=subject_id,
                 new={"upload_id": upload_id, "bundle": bundle, "sha256": sha256, "bucket": bucket, "key": key})
    return get(conn, upload_id)


def attempt_failed(conn: sqlite3.Connection, upload_id: int, error: str, *, by: str, at: float) -> None:
    """The attempt did not finish: the upload stays pending with the reason."""
    conn.execute("UPDATE uploads SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error, upload_id))
    row = get(conn, upload_id)
    audit.append(conn, at=at, actor=by, action="upload_attempt_failed", subject_id=row["subject_id"],
                 new={"upload_id": upload_id, "error": error, "attempts": row["attempts"]})


def finish(conn: sqlite3.Connection, upload_id: int, *, outcome: str, by: str, at: float, version_id: str | None = None,
           etag: str | None = None, retention_mode: str | None = None, retain_until_utc: str | None = None,
           error: str | None = None) -> dict[str, Any]:
    """Uploaded, found already uploaded, or refused (a different object holds the key): no longer pending."""
    state = "refused" if outcome == "refused" else "uploaded"
    conn.execute(
        "UPDATE uploads SET state = ?, outcome = ?, attempts = attempts + 1, done_utc = ?, version_id = ?, etag = ?,"
        " retention_mode = ?, retain_until_utc = ?, last_error = ? WHERE id = ?",
        (state, outcome, utc_iso(at), version_id, etag, retention_mode, retain_until_utc, error, upload_id))
    row = get(conn, upload_id)
    audit.append(conn, at=at, actor=by, action="bundle_uploaded" if state == "uploaded" else "upload_refused",
                 subject_id=row["subject_id"],
                 new={"upload_id": upload_id, "bundle": row["bundle"], "sha256": row["sha256"], "bucket": row["bucket"],
                      "key": row["object_key"], "outcome": outcome, "version_id": version_id,
                      "retention_mode": retention_mode, "retain_until_utc": retain_until_utc, "error": error})
    return row

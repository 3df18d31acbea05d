"""The upload queue's table (see collector/upload/store.py), registered in collector/schemas.py.

A bundle is queued (committed) before a byte goes on the network, so an upload cut by a
dropped link, a killed process or a reboot is still listed and ``collector upload --pending``
finishes it.  Each state change is audited in the same transaction.
"""

from __future__ import annotations

from collector.storage.schema import Migration

UPLOADS_SQL = """
CREATE TABLE uploads (
    id INTEGER PRIMARY KEY,
    bundle TEXT NOT NULL,                -- the bag's name (the zip's top folder)
    bundle_path TEXT NOT NULL,           -- the local zip as queued (absolute)
    sha256 TEXT NOT NULL,                -- hex SHA-256 of the zip: the object's checksum
    size_bytes INTEGER NOT NULL,
    site_uuid TEXT NOT NULL,
    subject_id TEXT NOT NULL,            -- pseudonymous screening ID, from the bundle
    bucket TEXT NOT NULL,
    object_key TEXT NOT NULL,            -- <prefix>/site=<uuid>/subject=<id>/<bundle>.zip
    state TEXT NOT NULL CHECK (state IN ('pending', 'uploaded', 'refused')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,                     -- why the last attempt did not finish (state pending or refused)
    queued_utc TEXT NOT NULL,
    queued_by TEXT NOT NULL,
    done_utc TEXT,
    outcome TEXT CHECK (outcome IN ('uploaded', 'already_uploaded', 'refused')),
    version_id TEXT,                     -- the object version the store gave (versioned buckets)
    etag TEXT,
    retention_mode TEXT,                 -- Object Lock mode set on the object, NULL when the bucket has none
    retain_until_utc TEXT,
    UNIQUE (bucket, object_key, sha256)
);
CREATE INDEX uploads_pending ON uploads (state) WHERE state = 'pending';
"""

MIGRATIONS: tuple[Migration, ...] = (Migration("upload queue", UPLOADS_SQL),)

"""The ``signatures`` table (see collector/signatures/store.py), registered in collector/schemas.py.

A signature row holds its manifestation (printed name, role, meaning, time in UTC and in the
site's zone) and the SHA-256 of the exact content signed (RFC 8785 canonical JSON, kept beside
it), so a signature can never be moved to another record and a changed record shows it invalid.
Append-only: a signature is never edited or removed.
"""

from __future__ import annotations

from collector.storage.schema import Migration, append_only

SIGNATURES_SQL = """
CREATE TABLE signatures (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid            TEXT NOT NULL UNIQUE,            -- the same in every bundle and ODM file that carries it
    subject_id      TEXT NOT NULL REFERENCES subjects(id),
    record_type     TEXT NOT NULL CHECK (record_type IN ('review_resolution', 'eligibility_decision', 'export')),
    record_ref      TEXT NOT NULL,                   -- review_resolutions row id, the subject, or the bundle name
    meaning         TEXT NOT NULL CHECK (meaning IN ('reviewed', 'approved', 'responsible for this export')),
    signer          TEXT NOT NULL REFERENCES users(name),
    full_name       TEXT NOT NULL CHECK (length(trim(full_name)) > 0),
    role            TEXT NOT NULL,
    signed_utc      TEXT NOT NULL,                   -- UTC ISO-8601, ...Z
    signed_local    TEXT NOT NULL,                   -- the same instant as people read it, with zone and offset
    timezone        TEXT NOT NULL,
    content_sha256  TEXT NOT NULL CHECK (length(content_sha256) = 64),
    content_json    TEXT NOT NULL CHECK (json_valid(content_json))  -- the canonical bytes the hash covers
);
CREATE INDEX signatures_subject ON signatures(subject_id, id);
""" + append_only("signatures", what="signatures are append-only: sign again to sign a changed record")

MIGRATIONS: tuple[Migration, ...] = (Migration("electronic signatures", SIGNATURES_SQL),)

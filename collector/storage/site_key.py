"""The site's Ed25519 key: bundles, uploads and audit chain heads are signed with it.

Why: a bundle's hashes only prove it is self-consistent; anyone can recompute them after
editing a file.  A signature made with a key that only this database's laptop holds, and
whose public key the study team registered, binds a bundle to the site.  The key alone does
not stop a site from re-exporting an edited database, so every signature also names the
audit chain and sample seal hashes at each chain head the site signed before
(:func:`sign_heads`): the study team holds those earlier heads, and a chain that was
rewritten after them no longer matches (collector/export/signature.py checks it).

The private key is a PEM file next to the database (``<db>.sitekey.pem``, 0600), made on
first use; the public key and its fingerprint are recorded in ``site_keys`` (append-only).
A key file that went missing is never replaced silently: the registered key would no longer
match, so that is an error to fix from backup.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from collector.clock import utc_iso
from collector.errors import StorageError

KEY_SUFFIX = ".sitekey.pem"
ALGORITHM = "Ed25519"


@dataclass(frozen=True)
class SitePublicKey:
    pem: str
    fingerprint: str  # "SHA256:" + hex of the raw 32-byte public key's SHA-256
    created_utc: str


def key_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + KEY_SUFFIX)


def fingerprint(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def load_public_pem(text: str | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM; ValueError for anything else."""
    key = serialization.load_pem_public_key(text.encode("ascii") if isinstance(text, str) else text)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def verify_signature(public: Ed25519PublicKey, signature_b64: str, data: bytes) -> bool:
    try:
        public.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True


def db_path_of(conn: sqlite3.Connection) -> Path:
    """The file behind ``conn`` (the key lives next to it)."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main" and file:
            return Path(file)
    raise StorageError("the site key needs a database file, not an in-memory database")


def _registered(conn: sqlite3.Connection) -> SitePublicKey | None:
    row = conn.execute("SELECT public_key_pem, fingerprint, created_utc FROM site_keys ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else SitePublicKey(str(row[0]), str(row[1]), str(row[2]))


def _write_new_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never overwrite a key another process just made
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def _read_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise StorageError(f"cannot read the site key {path} ({exc}); restore it from backup") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise StorageError(f"{path} is not an Ed25519 site key; restore the site key from backup")
    return key


def _private_key(conn: sqlite3.Connection, *, at: float) -> Ed25519PrivateKey:
    """The site's private key, made (file, then ``site_keys`` row) on first use."""
    path = key_path(db_path_of(conn))
    registered = _registered(conn)
    if not path.exists():
        if registered is not None:
            raise StorageError(f"the site key {path} is missing (the database's key is {registered.fingerprint}); "
                               "restore it from backup: a new key would not match the one registered with the study team")
        try:
            key = _write_new_key(path)
        except FileExistsError:
            key = _read_key(path)
        except OSError as exc:
            raise StorageError(f"cannot create the site key {path}: {exc.strerror or exc}; check the folder is writable") from None
    else:
        key = _read_key(path)
    fp = fingerprint(key.public_key())
    if registered is None:
        conn.execute("INSERT INTO site_keys (public_key_pem, fingerprint, created_utc) VALUES (?, ?, ?)",
                     (public_pem(key.public_key()), fp, utc_iso(at)))
    elif registered.fingerprint != fp:
        raise StorageError(f"the site key {path} ({fp}) is not this database's key ({registered.fingerprint}); "
                           "put the right key file back from backup")
    return key


def site_public_key(conn: sqlite3.Connection, *, at: float) -> SitePublicKey:
    """The site's public key (made on first use; the caller holds the write transaction)."""
    _private_key(conn, at=at)
    reg = _registered(conn)
    assert reg is not None
    return reg


def sign_bytes(conn: sqlite3.Connection, data: bytes, *, at: float) -> str:
    """Base64 Ed25519 signature of ``data`` with this database's site key (for uploads and bundles)."""
    return base64.b64encode(_private_key(conn, at=at).sign(data)).decode("ascii")


def canonical(obj: Any) -> bytes:
    """The exact bytes a statement is signed as (sorted keys, no spaces, ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _hash_at(conn: sqlite3.Connection, table: str, column: str, row_id: int) -> str | None:
    row = conn.execute(f"SELECT {column} FROM {table} WHERE id = ?", (row_id,)).fetchone()  # noqa: S608 - fixed names
    return None if row is None else str(row[0])


def _checkpoints(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """For every head signed before: the chains' hashes at those rows as the database holds them now."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for chain, table, column, id_col in (("audit", "audit", "row_hash", "audit_id"), ("seals", "sample_seals", "seal_hash", "seal_id")):
        for (row_id,) in conn.execute(f"SELECT DISTINCT {id_col} FROM signed_heads WHERE {id_col} IS NOT NULL ORDER BY 1"):
            out[(chain, int(row_id))] = {"chain": chain, "id": int(row_id), "hash": _hash_at(conn, table, column, int(row_id))}
    return [out[k] for k in sorted(out)]


def sign_heads(conn: sqlite3.Connection, *, purpose: str, label: str, digests: dict[str, str], at: float,
               audit_head: tuple[int, str] | None, seal_head: tuple[int, str] | None) -> dict[str, Any]:
    """Sign ``digests`` (name -> SHA-256 of what is sent) with the chain heads and earlier checkpoints; log it.

    Returns the signature document (``statement``, ``signature``, ``public_key_pem``) that goes with the
    bundle or upload.  The caller holds the write transaction, so the log row lands with its export.
    """
    site_row = conn.execute("SELECT site_uuid FROM site_identity WHERE id = 1").fetchone()
    public = site_public_key(conn, at=at)
    statement = {
        "schema": "collector-site-signature/1", "algorithm": ALGORITHM, "purpose": purpose, "label": label,
        "site_uuid": None if site_row is None else str(site_row[0]), "key_fingerprint": public.fingerprint,
        "signed_utc": utc_iso(at), "digests": dict(sorted(digests.items())),
        "audit_chain_head": None if audit_head is None else {"id": audit_head[0], "hash": audit_head[1]},
        "samples_seal_head": None if seal_head is None else {"id": seal_head[0], "hash": seal_head[1]},
        "earlier_heads": _checkpoints(conn),
    }
    data = canonical(statement)
    signature = sign_bytes(conn, data, at=at)
    conn.execute(
        "INSERT INTO signed_heads (signed_utc, purpose, label, audit_id, audit_hash, seal_id, seal_hash, statement_json, signature)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (utc_iso(at), purpose, label, audit_head[0] if audit_head else None, audit_head[1] if audit_head else None,
         seal_head[0] if seal_head else None, seal_head[1] if seal_head else None, data.decode("ascii"), signature))
    return {"statement": statement, "signature": signature, "public_key_pem": public.pem}


def signed_heads(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The local log of signed chain heads, oldest first."""
    cur = conn.execute("SELECT id, signed_utc, purpose, label, audit_id, audit_hash, seal_id, seal_hash FROM signed_heads ORDER BY id")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]

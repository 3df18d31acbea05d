"""The site signature of a bundle (``site-signature.json``) and how a verifier checks it.

Signing happens in the same transaction as the export's audit row
(:func:`sign_bundle`, through collector.storage.site_key).  The statement signed holds the
SHA-256 of ``manifest-sha256.txt`` and ``tagmanifest-sha256.txt`` (so every file), the audit
chain and sample seal heads the bundle names, and the chains' hashes at every head the site
signed before.  :func:`check` needs no database: the signature against the registered key(s),
the digests against the files, the heads against ``subject.json``, and, given earlier signature
documents, whether this bundle's chains still agree with what the site signed then.  A bundle
re-made from an edited (and re-chained) database disagrees at an earlier head.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from collector.storage import site_key

from . import bag

SIGNATURE_FILE = "site-signature.json"
SIGNED_FILES = (bag.MANIFEST, bag.TAGMANIFEST)


def sign_bundle(conn: sqlite3.Connection, name: str, files: dict[str, bytes], *, at: float) -> bytes:
    """The signature document for a built bag; the caller holds the export's write transaction."""
    subject = json.loads(files["data/subject.json"])
    a, s = subject.get("audit_chain_head"), subject.get("samples_seal_head")
    doc = site_key.sign_heads(conn, purpose="bundle", label=name, at=at,
                              digests={f: bag.sha256(files[f]) for f in SIGNED_FILES},
                              audit_head=(int(a["id"]), str(a["row_hash"])) if a else None,
                              seal_head=(int(s["id"]), str(s["seal_hash"])) if s else None)
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def load_keys(site_key_files: list[Path], trusted_dir: Path | None) -> dict[str, Ed25519PublicKey]:
    """Registered public keys by fingerprint (``--site-key`` files and ``*.pem`` in ``--trusted-keys``); ValueError names a bad file."""
    paths = list(site_key_files)
    if trusted_dir is not None:
        paths += sorted(p for p in trusted_dir.iterdir() if p.suffix == ".pem")
        if not paths:
            raise ValueError(f"{trusted_dir} holds no .pem public keys")
    keys = {}
    for p in paths:
        try:
            key = site_key.load_public_pem(p.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{p} is not an Ed25519 public key PEM ({exc})") from None
        keys[site_key.fingerprint(key)] = key
    return keys


def parse(data: bytes) -> tuple[dict[str, Any], str, Ed25519PublicKey]:
    """Statement, signature and embedded public key of a signature document; ValueError if malformed."""
    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("statement"), dict) or not isinstance(doc.get("signature"), str):
        raise ValueError("not a site signature document (statement, signature)")
    return doc["statement"], doc["signature"], site_key.load_public_pem(str(doc.get("public_key_pem", "")))


def read_earlier(path: Path) -> list[bytes]:
    """Signature documents from a bundle (folder or zip), a ``site-signature.json``-style file, or a folder of them."""
    if path.is_file() and path.suffix == ".json":
        return [path.read_bytes()]
    if path.is_dir() and not (path / bag.MANIFEST).exists():
        return [d for p in sorted(path.iterdir()) for d in read_earlier(p)]
    try:
        b = bag.read_bag(path)
    except bag.BagError:
        return []
    return [b.files[SIGNATURE_FILE]] if SIGNATURE_FILE in b.files else []


def _authentic(statement: dict[str, Any], signature: str, embedded: Ed25519PublicKey,
               keys: dict[str, Ed25519PublicKey] | None) -> str | None:
    """None when the signature holds under a registered key (or the embedded one, with no keys given); else why not."""
    fp = site_key.fingerprint(embedded)
    if statement.get("key_fingerprint") != fp:
        return "names a key fingerprint that is not the key it carries"
    key = embedded if keys is None else keys.get(fp)
    if key is None:
        return f"is signed by key {fp}, which is not a registered site key (--site-key / --trusted-keys)"
    if not site_key.verify_signature(key, signature, site_key.canonical(statement)):
        return "signature does not match its statement (changed after signing, or not made by that key)"
    return None


def _heads(statement: dict[str, Any]) -> dict[tuple[str, int], str | None]:
    """Chain hashes a statement vouches for: its own heads and its earlier checkpoints."""
    out: dict[tuple[str, int], str | None] = {}
    for e in statement.get("earlier_heads") or []:
        out[(str(e["chain"]), int(e["id"]))] = e.get("hash")
    for chain, key, field in (("audit", "audit_chain_head", "hash"), ("seals", "samples_seal_head", "hash")):
        h = statement.get(key)
        if h:
            out[(chain, int(h["id"]))] = str(h[field])
    return out


def _tops(statement: dict[str, Any]) -> dict[str, int]:
    return {chain: int(statement[key]["id"]) for chain, key in (("audit", "audit_chain_head"), ("seals", "samples_seal_head"))
            if statement.get(key)}


def compare(this: dict[str, Any], earlier: dict[str, Any]) -> list[str]:
    """Where two statements of one site disagree about the chains (one was re-made from an edited database)."""
    problems = []
    mine, theirs = _heads(this), _heads(earlier)
    when = f"{earlier.get('label')!r} signed {earlier.get('signed_utc')}"
    for chain, row in sorted(set(mine) & set(theirs)):
        if mine[(chain, row)] != theirs[(chain, row)]:
            problems.append(f"{chain} chain row {row} is {str(mine[(chain, row)])[:12]}... here but "
                            f"{str(theirs[(chain, row)])[:12]}... in {when}: re-made from an edited database")
    for chain, top in _tops(earlier).items():
        if _tops(this).get(chain, -1) >= top and (chain, top) not in mine:
            problems.append(f"does not vouch for the {chain} head {top} that the site signed in {when}: "
                            "re-made from a database whose log of signed heads was changed")
    for chain, top in _tops(this).items():
        if _tops(earlier).get(chain, -1) >= top and (chain, top) not in theirs:
            problems.append(f"{when} is later but does not vouch for this bundle's {chain} head {top}: one of the two was re-made")
    return problems


def check(files: dict[str, bytes], keys: dict[str, Ed25519PublicKey] | None,
          earlier: list[bytes]) -> tuple[list[tuple[str, str]], list[str]]:
    """(problems, notes) of a bundle's site signature."""
    problems: list[tuple[str, str]] = []
    notes: list[str] = []
    if SIGNATURE_FILE not in files:
        if keys is not None or earlier:
            problems.append((SIGNATURE_FILE, "is missing: the bundle is not signed by a site key"))
        else:
            notes.append("site signature: none (an unsigned bundle; give --site-key to require one)")
        return problems, notes
    try:
        statement, signature, embedded = parse(files[SIGNATURE_FILE])
    except (ValueError, KeyError, TypeError) as exc:
        return [(SIGNATURE_FILE, f"does not parse ({exc})")], notes
    why = _authentic(statement, signature, embedded, keys)
    if why:
        return [(SIGNATURE_FILE, why)], notes
    digests = statement.get("digests") or {}
    for f in SIGNED_FILES:
        if f not in files or digests.get(f) != bag.sha256(files[f]):
            problems.append((f, f"is not the {f} the site signed (the bundle was changed after signing)"))
    try:
        subject = json.loads(files["data/subject.json"])
    except (KeyError, ValueError):
        subject = {}
    if isinstance(subject, dict):
        a, s = subject.get("audit_chain_head"), subject.get("samples_seal_head")
        if (statement.get("audit_chain_head") or None) != ({"id": a["id"], "hash": a["row_hash"]} if a else None):
            problems.append(("data/subject.json", "audit_chain_head is not the head the site signed"))
        if (statement.get("samples_seal_head") or None) != ({"id": s["id"], "hash": s["seal_hash"]} if s else None):
            problems.append(("data/subject.json", "samples_seal_head is not the head the site signed"))
        if subject.get("site_uuid") != statement.get("site_uuid"):
            problems.append(("data/subject.json", "site_uuid is not the site that signed the bundle"))
    compared = 0
    for data in earlier:
        try:
            st, sig, emb = parse(data)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append((SIGNATURE_FILE, f"an earlier signature given does not parse ({exc})"))
            continue
        if st.get("site_uuid") != statement.get("site_uuid") or (st == statement and sig == signature):
            continue  # another site's, or this very bundle
        why = _authentic(st, sig, emb, keys if keys is not None else {site_key.fingerprint(embedded): embedded})
        if why:
            problems.append((SIGNATURE_FILE, f"earlier signature {st.get('label')!r} {why}"))
            continue
        compared += 1
        problems.extend((SIGNATURE_FILE, p) for p in compare(statement, st))
    who = "a registered site key" if keys is not None else "the key it carries (not checked against a registered key)"
    notes.append(f"site signature: {statement.get('key_fingerprint')} valid under {who}"
                 + (f"; chains agree with {compared} earlier signed head(s)" if compared and not problems else ""))
    return problems, notes

"""``collector warehouse sync``: load every new bundle of a bucket prefix into the warehouse.

Incremental: the catalogue records each object's key and ETag once it is loaded (or found a
duplicate, or rejected), and only objects not seen are fetched.  Each is verified exactly as
``collector verify`` does, and must be filed under the site and subject it is about; a bundle
that fails is recorded in ``rejected``, printed, and never loaded.  A new version of a key
already loaded is rejected too: uploads never overwrite, so a changed object is a tampered one.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.clock import utc_iso
from collector.export import bag
from collector.export.verify import verify_bundle
from collector.upload import s3
from collector.errors import StorageError
from collector.upload.target import KEY, S3Url, canonical_uuid, safe_segment

from . import store


@dataclass
class SyncResult:
    out: str
    listed: int = 0
    loaded: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    rejected_total: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _list(client: Any, url: S3Url) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=url.bucket, Prefix=url.key_prefix()):
        objects.extend(page.get("Contents") or [])
    return sorted(objects, key=lambda o: o["Key"])


def _fetch(client: Any, bucket: str, key: str, etag: str, dest: Path) -> None:
    """The listed version only (If-Match), its SHA-256 checksum checked by botocore when the object has one."""
    body = client.get_object(Bucket=bucket, Key=key, IfMatch=etag, ChecksumMode="ENABLED")["Body"]
    with dest.open("wb") as fh:
        for chunk in iter(lambda: body.read(1 << 20), b""):
            fh.write(chunk)


def _filed_problem(key: str, subject: dict[str, Any], name: str) -> str | None:
    """The key must name the bundle's own site, subject and name; they become folder names, so they must be safe."""
    m = KEY.match(key)
    assert m is not None
    try:
        if canonical_uuid(str(subject.get("site_uuid"))) != subject.get("site_uuid"):
            return f"holds site UUID {subject.get('site_uuid')!r}, not in its canonical form"
        safe_segment(str(subject.get("pseudonym")), "subject ID")
        for s in subject.get("sessions") or []:
            if canonical_uuid(str(s.get("session_uuid"))) != s.get("session_uuid"):
                return f"holds session UUID {s.get('session_uuid')!r}, not in its canonical form"
    except ValueError as exc:
        return str(exc)
    if m["site"] != subject.get("site_uuid") or m["subject"] != subject.get("pseudonym"):
        return (f"is filed under site={m['site']}/subject={m['subject']} but holds site {subject.get('site_uuid')} "
                f"subject {subject.get('pseudonym')}")
    if m["name"] != name:
        return f"is named {m['name']}.zip but holds bundle {name}"
    return None


def sync(url: S3Url, out_dir: Path, *, config: dict[str, Any], now: float, client: Any | None = None) -> SyncResult:
    client = client if client is not None else s3.client(config)
    cat = store.Catalogue(out_dir)
    result = SyncResult(str(cat.dir))
    try:
        try:
            objects = _list(client, url)
        except Exception as exc:
            raise s3.ObjectStoreError(f"{s3.describe(exc, str(url))}; nothing was loaded") from None
        seen = cat.seen()
        loaded_keys = cat.loaded_keys()
        result.listed = len(objects)
        rows = {t: 0 for t in store.VIEWS}
        with tempfile.TemporaryDirectory(prefix="warehouse-") as tmp:
            for obj in objects:
                key, etag, size = obj["Key"], obj["ETag"], int(obj.get("Size") or 0)
                if not KEY.match(key):
                    result.ignored.append(key)
                    continue
                if (key, etag) in seen:
                    continue
                at = utc_iso(now)

                def reject(problem: str, problems: list[tuple[str, str]] | None = None) -> None:
                    cat.reject(key, etag, size, problem, json.dumps(problems or []), at)
                    result.rejected.append({"object_key": key, "problem": problem})

                if key in loaded_keys:
                    reject(f"replaces the object loaded from this key (ETag {loaded_keys[key]} -> {etag}); uploads never "
                           "overwrite, so this version was written by something else: check the bucket's history")
                    continue
                local = Path(tmp) / "bundle.zip"
                try:
                    _fetch(client, url.bucket, key, etag, local)
                except Exception as exc:
                    if s3.checksum_mismatch(exc):
                        reject("its bytes do not match the SHA-256 checksum the store holds for it (changed or damaged)")
                        continue
                    raise s3.ObjectStoreError(f"{s3.describe(exc, f's3://{url.bucket}/{key}')}; what was loaded so far "
                                              "is kept: run the sync again") from None
                check = verify_bundle(local)
                if not check.ok:
                    f, p = check.problems[0]
                    reject(f"fails verification ({len(check.problems)} problems, first {f}: {p})", check.problems)
                    continue
                b = bag.read_bag(local)
                subject = json.loads(b.files["data/subject.json"])
                filed = _filed_problem(key, subject, b.name)
                if filed:
                    reject(filed)
                    continue
                bundle_id = bag.sha256(b.files[bag.TAGMANIFEST])
                first = cat.bundle_key(bundle_id)
                if first is not None:
                    cat.duplicate(key, etag, size, bundle_id, first, at)
                    result.duplicates.append(key)
                    continue
                try:
                    staged = store.stage(b, bundle_id)
                    try:
                        written = cat.load(staged, key=key, etag=etag, size=size, bundle_id=bundle_id, at=at)
                    finally:
                        staged.close()
                except (OSError, store.DuckError) as exc:
                    raise StorageError(f"cannot write the warehouse in {cat.dir} ({exc}); check the folder's permissions and "
                                       "free space; bundles loaded so far are kept: run the sync again") from None
                for t, n in written.items():
                    rows[t] += n
                result.loaded.append(key)
        result.rows = rows
        result.rejected_total = cat.counts()["rejected"]
    finally:
        try:
            cat.refresh_views()  # also after a failed run: what was loaded is queryable
        finally:
            cat.close()
    return result

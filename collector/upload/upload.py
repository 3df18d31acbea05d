"""Put verified bundle zips on object storage, never overwriting, resuming from the queue.

Order of work, so that nothing is lost and nothing is overwritten:
1. every bundle is verified (as ``collector verify`` does) and queued in the database,
   committed before the network is touched;
2. each pending upload is checked against the store: an identical object at its key is
   "already uploaded", a different one is refused; otherwise it is put with
   ``If-None-Match: *`` (the store refuses to replace anything), its SHA-256 as the object
   checksum (the store refuses a body that does not match) and, when the bucket has Object
   Lock, a retention until ``[upload] retention_days`` from now;
3. the outcome is recorded with an audit row; an attempt cut by the network stays pending.

No write transaction is held while bytes travel.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from collector.errors import CollectorError, Conflict, InvalidInput
from collector.export import bag
from collector.storage.db import transaction

from . import s3, store
from .target import S3Url, object_key

VERIFY_FAILED_EXIT = 8


class BundleRefused(CollectorError):
    """A bundle fails verification: nothing was queued."""

    exit_code = VERIFY_FAILED_EXIT


@dataclass
class Outcome:
    upload_id: int
    bundle: str
    url: str
    state: str  # uploaded | already_uploaded | refused | pending
    detail: str = ""
    version_id: str | None = None
    retain_until_utc: str | None = None

    def line(self) -> str:
        if self.state == "uploaded":
            kept = f", retained until {self.retain_until_utc}" if self.retain_until_utc else ", bucket has no Object Lock"
            return f"{self.bundle}: uploaded to {self.url} (version {self.version_id or 'none'}{kept})"
        if self.state == "already_uploaded":
            return f"{self.bundle}: already uploaded to {self.url} (the same SHA-256 is there)"
        if self.state == "refused":
            return f"{self.bundle}: REFUSED: {self.detail}"
        return f"{self.bundle}: pending: {self.detail}"


@dataclass
class UploadRun:
    outcomes: list[Outcome] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"uploads": [o.__dict__ for o in self.outcomes],
                "counts": {s: sum(o.state == s for o in self.outcomes) for s in ("uploaded", "already_uploaded", "refused", "pending")}}


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    name: str
    sha256: str
    size: int
    site_uuid: str
    subject_id: str


def inspect_bundle(path: Path) -> BundleInfo:
    """The zip's name, hash, site and subject, after the same checks as ``collector verify``."""
    from collector.export.verify import verify_bundle

    path = Path(path).resolve()
    if path.is_dir():
        raise InvalidInput(f"{path.name} is a bundle folder; upload the zip (export it with: collector export ... --zip)")
    if not zipfile.is_zipfile(path):
        raise InvalidInput(f"{path.name} is not a zip archive; upload a bundle zip made by: collector export ... --zip")
    result = verify_bundle(path)
    if not result.ok:
        f, problem = result.problems[0]
        raise BundleRefused(f"{path.name} fails verification ({len(result.problems)} problems, first {f}: {problem}); "
                            "nothing was queued: run collector verify on it and export again")
    b = bag.read_bag(path)
    subject = json.loads(b.files["data/subject.json"])
    data = path.read_bytes()
    return BundleInfo(path, b.name, hashlib.sha256(data).hexdigest(), len(data), str(subject.get("site_uuid")),
                      str(subject.get("pseudonym")))


def queue(conn: sqlite3.Connection, paths: list[Path], url: S3Url, *, by: str, now: float) -> list[dict[str, Any]]:
    """Verify every bundle, then queue them all in one transaction (none if any fails)."""
    infos = [inspect_bundle(p) for p in paths]
    rows = []
    with transaction(conn):
        for i in infos:
            try:
                key = object_key(url, site_uuid=i.site_uuid, subject_id=i.subject_id, bundle=i.name)
            except ValueError as exc:
                raise InvalidInput(f"{i.path.name}: {exc}; nothing was queued") from None
            rows.append(store.enqueue(conn, bundle=i.name, path=str(i.path), sha256=i.sha256, size=i.size,
                                      site_uuid=i.site_uuid, subject_id=i.subject_id, bucket=url.bucket, key=key,
                                      by=by, at=now))
    return rows


class _Attempt:
    def __init__(self, client: Any, config: dict[str, Any], now: Callable[[], float]) -> None:
        self.s3 = client
        self.config = config
        self.now = now
        self.locks: dict[str, bool] = {}

    def _same(self, row: dict[str, Any], meta: dict[str, Any]) -> bool:
        return s3.sha256_of(self.s3, row["bucket"], row["object_key"], meta) == row["sha256"]

    def _existing(self, row: dict[str, Any], meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if self._same(row, meta):
            return "already_uploaded", {"version_id": meta.get("VersionId"), "etag": meta.get("ETag"),
                                        "retention_mode": meta.get("ObjectLockMode"),
                                        "retain_until_utc": _iso(meta.get("ObjectLockRetainUntilDate"))}
        url = f"s3://{row['bucket']}/{row['object_key']}"
        return "refused", {"error": f"a different object is already at {url} (uploads never overwrite); "
                                    "ask the study's data manager which one is right"}

    def run(self, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(outcome, fields for store.finish); raises on anything that leaves the upload pending."""
        bucket, key = row["bucket"], row["object_key"]
        path = Path(row["bundle_path"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _Pending(f"cannot read {path} ({exc.strerror or exc}); put the zip back there, then: collector upload --pending") from None
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            return "refused", {"error": f"{path.name} changed after it was queued (SHA-256 differs); export the subject again"}
        meta = s3.head(self.s3, bucket, key)
        if meta is not None:
            return self._existing(row, meta)
        if bucket not in self.locks:
            self.locks[bucket] = s3.object_lock_enabled(self.s3, bucket)
        extra: dict[str, Any] = {}
        retain: dt.datetime | None = None
        if self.locks[bucket]:
            days = int(self.config["upload"]["retention_days"])
            retain = dt.datetime.fromtimestamp(self.now(), tz=dt.timezone.utc) + dt.timedelta(days=days)
            extra = {"ObjectLockMode": self.config["upload"]["retention_mode"], "ObjectLockRetainUntilDate": retain}
        checksum = s3.b64_sha256(row["sha256"])
        try:
            put = self.s3.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*", ChecksumAlgorithm="SHA256",
                                     ChecksumSHA256=checksum, ContentType="application/zip",
                                     Metadata={"sha256": row["sha256"], "bundle": row["bundle"]}, **extra)
        except Exception as exc:
            if not s3.precondition_failed(exc):
                raise
            meta = s3.head(self.s3, bucket, key)  # another upload got there first
            if meta is None:
                raise
            return self._existing(row, meta)
        if put.get("ChecksumSHA256") not in (None, checksum):
            return "refused", {"error": f"the store kept a different checksum for s3://{bucket}/{key} than the zip's; "
                                        "check the object and the store", "version_id": put.get("VersionId")}
        return "uploaded", {"version_id": put.get("VersionId"), "etag": put.get("ETag"),
                            "retention_mode": extra.get("ObjectLockMode"), "retain_until_utc": _iso(retain)}


class _Pending(Exception):
    """This attempt cannot finish; the upload stays queued."""


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(value)


def process(conn: sqlite3.Connection, rows: list[dict[str, Any]], *, config: dict[str, Any], by: str,
            now: Callable[[], float], client: Any | None = None) -> UploadRun:
    """Try each queued upload once, recording every outcome; a connection failure leaves the rest pending."""
    run = UploadRun()
    if not rows:
        return run
    attempt = _Attempt(client if client is not None else s3.client(config), config, now)
    stopped: str | None = None
    for row in rows:
        url = f"s3://{row['bucket']}/{row['object_key']}"
        if stopped is not None:
            run.outcomes.append(Outcome(row["id"], row["bundle"], url, "pending", f"not tried ({stopped})"))
            continue
        try:
            outcome, fields = attempt.run(row)
        except _Pending as exc:
            error = str(exc)
        except Exception as exc:
            error = s3.describe(exc, url)
            if s3.is_connection_problem(exc):
                stopped = "the object store was not reachable"
        else:
            with transaction(conn):
                store.finish(conn, row["id"], outcome=outcome, by=by, at=now(), **fields)
            run.outcomes.append(Outcome(row["id"], row["bundle"], url, outcome, fields.get("error") or "",
                                        fields.get("version_id"), fields.get("retain_until_utc")))
            continue
        with transaction(conn):
            store.attempt_failed(conn, row["id"], error, by=by, at=now())
        run.outcomes.append(Outcome(row["id"], row["bundle"], url, "pending", f"{error}; retry with: collector upload --pending"))
    return run


def raise_for(run: UploadRun) -> None:
    """Exit status for the run: 5 when any was refused, else 11 when any is still pending."""
    refused = [o for o in run.outcomes if o.state == "refused"]
    pending = [o for o in run.outcomes if o.state == "pending"]
    if refused:
        raise Conflict(f"{len(refused)} of {len(run.outcomes)} bundle(s) refused, first {refused[0].bundle}: {refused[0].detail}")
    if pending:
        raise s3.ObjectStoreError(f"{len(pending)} of {len(run.outcomes)} bundle(s) still pending, first {pending[0].bundle}: "
                                  f"{pending[0].detail}")

"""Where a bundle lands: ``s3://bucket/prefix`` and ``<prefix>/site=<uuid>/subject=<id>/<bundle>.zip`` (pure)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from collector.errors import InvalidInput

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# A subject ID or bundle name becomes a path segment (object key, Parquet partition): no '/', '=', spaces or '..'.
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-]{0,127}$")
KEY = re.compile(r"^(?:(?P<prefix>.*)/)?site=(?P<site>[^/]+)/subject=(?P<subject>[^/]+)/(?P<name>[^/]+)\.zip$")


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str  # without leading or trailing '/'; may be empty

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""


def parse_s3_url(text: str) -> S3Url:
    """``s3://bucket[/prefix]``; anything else is refused with an example."""
    if not text.startswith("s3://"):
        raise InvalidInput(f"{text!r} is not an s3:// address; give one like s3://study-bundles/site-uploads")
    bucket, _, prefix = text[len("s3://"):].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidInput(f"{bucket!r} is not a bucket name (3-63 lower-case letters, digits, '.' or '-'); "
                           "give one like s3://study-bundles/site-uploads")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise InvalidInput(f"prefix {prefix!r} has an empty, '.' or '..' part; give one like s3://{bucket}/site-uploads")
    return S3Url(bucket, prefix)


def safe_segment(value: str, what: str) -> str:
    if not _SEGMENT.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} cannot be used in an object key (letters, digits, '.', '_', '-' only)")
    return value


def canonical_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"site UUID {value!r} is not a UUID") from None


def object_key(url: S3Url, *, site_uuid: str, subject_id: str, bundle: str) -> str:
    site = canonical_uuid(site_uuid)
    return (f"{url.key_prefix()}site={site}/subject={safe_segment(subject_id, 'subject ID')}/"
            f"{safe_segment(bundle, 'bundle name')}.zip")

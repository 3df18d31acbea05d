"""The S3 client (boto3) from ``[object_store]`` and the standard AWS configuration chain.

Credentials are never read from the collector's config: boto3 finds them as every AWS tool
does (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials, an
instance role).  The endpoint of an S3-compatible server comes from ``[object_store]
endpoint_url``, else AWS_ENDPOINT_URL (read by boto3 itself).  Every failure becomes one
line: :func:`describe` turns botocore's exceptions into what is wrong and what to do.
"""

from __future__ import annotations

import base64
from typing import Any

from collector.errors import CollectorError


class ObjectStoreError(CollectorError):
    """The object store could not be reached or refused the request; nothing is lost (run the command again)."""

    exit_code = 11


def client(config: dict[str, Any]) -> Any:
    import boto3
    from botocore.config import Config

    c = config["object_store"]
    options: dict[str, Any] = {}
    if c["endpoint_url"]:
        options["endpoint_url"] = c["endpoint_url"]
    if c["region"]:
        options["region_name"] = c["region"]
    cfg = Config(connect_timeout=c["connect_timeout_s"], read_timeout=c["read_timeout_s"],
                 retries={"max_attempts": c["max_attempts"], "mode": "standard"},
                 s3={"addressing_style": c["addressing_style"]},
                 # we send our own SHA-256; no extra default CRC on every call
                 request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", config=cfg, **options)


def b64_sha256(hex_digest: str) -> str:
    """The ``ChecksumSHA256`` form (base64 of the digest) of a hex SHA-256."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return None


def is_connection_problem(exc: BaseException) -> bool:
    """The store could not be reached or no credentials were found: every other request would fail the same way."""
    from botocore import exceptions as bx

    return isinstance(exc, (bx.HTTPClientError, bx.NoCredentialsError, bx.PartialCredentialsError, bx.NoRegionError))


def describe(exc: BaseException, where: str) -> str:
    """One line: what went wrong with ``where`` (an s3:// address), and what to check."""
    from botocore import exceptions as bx

    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return ("no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with "
                "~/.aws/credentials (the collector's config never holds them)")
    if isinstance(exc, bx.NoRegionError):
        return "no AWS region set; set AWS_REGION, or [object_store] region in the site config"
    if isinstance(exc, bx.HTTPClientError):
        return f"cannot reach the object store for {where} ({type(exc).__name__}: {exc}); check the network and the endpoint"
    code = error_code(exc)
    if code in ("NoSuchBucket",):
        return f"the bucket of {where} does not exist; check the address or ask the study's storage administrator"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return f"the object store refused access to {where} ({code}); check the AWS credentials and the bucket policy"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"the object store failed on {where} ({text}); try again later"


def checksum_mismatch(exc: BaseException) -> bool:
    """botocore found the downloaded bytes differ from the object's stored checksum."""
    from botocore import exceptions as bx

    return isinstance(exc, bx.FlexibleChecksumError)


def not_found(exc: BaseException) -> bool:
    return error_code(exc) in ("404", "NoSuchKey", "NotFound")


def precondition_failed(exc: BaseException) -> bool:
    """If-None-Match lost: an object is already at the key (409: a concurrent write to it)."""
    return error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def object_lock_enabled(s3: Any, bucket: str) -> bool:
    """Does the bucket have Object Lock?  A bucket without a lock configuration says so with an error code."""
    try:
        cfg = s3.get_object_lock_configuration(Bucket=bucket)
    except Exception as exc:
        if error_code(exc) in ("ObjectLockConfigurationNotFoundError", "404", "NotImplemented", "501"):
            return False
        raise
    return bool(cfg.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled")


def head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's metadata with its checksum, or None when nothing is at the key."""
    try:
        return dict(s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
    except Exception as exc:
        if not_found(exc):
            return None
        raise


def sha256_of(s3: Any, bucket: str, key: str, meta: dict[str, Any]) -> str:
    """Hex SHA-256 of the object: its checksum or our metadata when the store keeps them, else its bytes."""
    import hashlib

    checksum = meta.get("ChecksumSHA256")
    if checksum and "-" not in checksum:  # "<b64>-N" is a multipart composite, not the object's hash
        return base64.b64decode(checksum).hex()
    h = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()

"""collector upload against a real local S3 server (moto's server mode) with versioned Object Lock buckets:
where the zip lands, its checksum and retention, never overwriting, and the queue that survives a cut
link and a killed process."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import invoke, operator_env
from s3_server import AWS_ENV, CuttingProxy, S3Server
from site_bundles import T0, Site

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("upload")
    s = Site(tmp / "site", "Test Hospital 1")
    s.subject("SCR-0001", nights=1, hours=8.0, gaps=150)
    s.subject("SCR-0002", nights=1, hours=8.0, gaps=150, desat=0.03)
    zips = {subj: s.export(subj, tmp / "out", at=T0 + 20 * 86400) for subj in ("SCR-0001", "SCR-0002")}
    s.close()
    return {"site": s, "zips": zips, "tmp": tmp}


def _config(site: dict[str, Any], endpoint: str, name: str, **store: Any) -> Path:
    p = site["tmp"] / f"{name}.toml"
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in store.items())
    p.write_text(f'[site]\nname = "Test Hospital 1"\n\n[object_store]\nendpoint_url = "{endpoint}"\n'
                 f'connect_timeout_s = 5.0\nread_timeout_s = 30.0\n{extra}')
    return p


def _key(site: dict[str, Any], subject: str, prefix: str = "study") -> str:
    z = site["zips"][subject]
    return f"{prefix}/site={site['site'].uuid}/subject={subject}/{z.stem}.zip"


def _uploads(site: dict[str, Any]) -> list[dict[str, Any]]:
    conn = sqlite3.connect(site["site"].db)
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute("SELECT * FROM uploads ORDER BY id")]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_bundle_lands_under_site_and_subject_with_its_checksum_and_a_retention(s3, site):
    bucket = s3.bucket("lock-land")
    cfg = _config(site, s3.url, "land")
    z = site["zips"]["SCR-0001"]
    r = invoke(site["site"].db, "upload", str(z), "--to", f"s3://{bucket}/study/", config=cfg)
    assert r.exit_code == 0, r.output
    key = _key(site, "SCR-0001")
    assert f"uploaded to s3://{bucket}/{key}" in r.output and "retained until" in r.output
    c = s3.client()
    head = c.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert base64.b64decode(head["ChecksumSHA256"]).hex() == _sha(z)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    until = head["ObjectLockRetainUntilDate"].astimezone(dt.timezone.utc)
    expected = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=5475)  # [upload] retention_days default
    assert abs((until - expected).total_seconds()) < 600
    assert c.get_object(Bucket=bucket, Key=key)["Body"].read() == z.read_bytes()
    with pytest.raises(Exception, match="AccessDenied"):  # the lock holds: the version cannot be deleted
        c.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])
    row, = _uploads(site)[-1:]
    assert (row["state"], row["outcome"], row["sha256"], row["object_key"]) == ("uploaded", "uploaded", _sha(z), key)
    assert row["retention_mode"] == "COMPLIANCE" and row["version_id"] == head["VersionId"]
    audit = sqlite3.connect(site["site"].db).execute(
        "SELECT actor, new_value FROM audit WHERE action = 'bundle_uploaded' ORDER BY id DESC LIMIT 1").fetchone()
    assert audit[0] == "tester" and json.loads(audit[1])["key"] == key

    # again: the same bytes are already there, nothing is written
    again = invoke(site["site"].db, "upload", str(z), "--to", f"s3://{bucket}/study", config=cfg)
    assert again.exit_code == 0 and "already uploaded" in again.output, again.output
    assert len(c.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]) == 1


def test_a_bucket_without_object_lock_gets_the_bundle_without_retention(s3, site):
    bucket = s3.bucket("plain-land", lock=False)
    r = invoke(site["site"].db, "upload", str(site["zips"]["SCR-0002"]), "--to", f"s3://{bucket}/study", "--json",
               config=_config(site, s3.url, "plain"))
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["counts"]["uploaded"] == 1 and out["uploads"][0]["retain_until_utc"] is None
    head = s3.client().head_object(Bucket=bucket, Key=_key(site, "SCR-0002"))
    assert "ObjectLockMode" not in head


def test_a_different_object_at_the_key_is_never_overwritten(s3, site):
    bucket = s3.bucket("lock-taken")
    key = _key(site, "SCR-0001")
    s3.client().put_object(Bucket=bucket, Key=key, Body=b"someone else's bytes")
    r = invoke(site["site"].db, "upload", str(site["zips"]["SCR-0001"]), "--to", f"s3://{bucket}/study",
               config=_config(site, s3.url, "taken"))
    assert r.exit_code == 5, r.output
    assert "REFUSED: a different object is already at" in r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: 1 of 1 bundle(s) refused")
    versions = s3.client().list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    assert len(versions) == 1 and s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b"someone else's bytes"
    assert _uploads(site)[-1]["state"] == "refused"


def test_a_dropped_connection_leaves_the_upload_pending_and_pending_finishes_it(s3, site, monkeypatch):
    bucket = s3.bucket("lock-dropped")
    proxy = CuttingProxy((s3.host, s3.port), after_bytes=64 * 1024, mode="drop")
    z = site["zips"]["SCR-0002"]
    try:
        r = invoke(site["site"].db, "upload", str(z), "--to", f"s3://{bucket}/study",
                   config=_config(site, proxy.url, "dropped", max_attempts=1))
    finally:
        proxy.close()
    assert proxy.cut.is_set()
    assert r.exit_code == 11, r.output
    assert "pending: cannot reach the object store" in r.output and "collector upload --pending" in r.output
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output
    row = _uploads(site)[-1]
    assert (row["state"], row["attempts"], row["bucket"]) == ("pending", 1, bucket)
    assert "Contents" not in s3.client().list_objects_v2(Bucket=bucket)

    # the endpoint from AWS_ENDPOINT_URL (standard AWS configuration) when the config has none
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.url)
    done = invoke(site["site"].db, "upload", "--pending", config=_config(site, "", "resume"))
    assert done.exit_code == 0, done.output
    assert f"uploaded to s3://{bucket}/" in done.output
    assert s3.client().get_object(Bucket=bucket, Key=row["object_key"])["Body"].read() == z.read_bytes()
    assert _uploads(site)[-1]["state"] == "uploaded"
    assert invoke(site["site"].db, "upload", "--pending", config=_config(site, "", "resume")).output.strip() == "no pending uploads"


def test_an_upload_killed_midway_is_still_queued_and_resumes_after_the_restart(s3, site):
    bucket = s3.bucket("lock-killed")
    proxy = CuttingProxy((s3.host, s3.port), after_bytes=64 * 1024, mode="hold")
    db = site["site"].db
    z = site["zips"]["SCR-0001"]
    env = {**os.environ, **AWS_ENV, **operator_env(db, "dm", "data_manager"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "collector", "--db", str(db), "--config", str(_config(site, proxy.url, "killed")),
           "upload", str(z), "--to", f"s3://{bucket}/study"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proxy.cut.wait(120), "the upload never started"  # the body is on its way: kill the process now
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.close()
    assert proc.returncode == -signal.SIGKILL
    row = _uploads(site)[-1]
    assert (row["state"], row["bucket"], row["sha256"]) == ("pending", bucket, _sha(z))
    assert "Contents" not in s3.client().list_objects_v2(Bucket=bucket)
    r = invoke(db, "upload", "--pending", "--json", config=_config(site, s3.url, "after-kill"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["counts"] == {"uploaded": 1, "already_uploaded": 0, "refused": 0, "pending": 0}
    head = s3.client().head_object(Bucket=bucket, Key=row["object_key"], ChecksumMode="ENABLED")
    assert base64.b64decode(head["ChecksumSHA256"]).hex() == _sha(z)


def test_only_verified_zips_are_queued(s3, site, tmp_path):
    import shutil
    import zipfile

    bucket = s3.bucket("lock-checked")
    cfg = _config(site, s3.url, "checked")
    before = len(_uploads(site))
    good = site["zips"]["SCR-0001"]
    bad = tmp_path / good.name
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".csv") and "samples_" in info.filename:
                data = data.replace(b",95.0,", b",99.0,", 1)
            dst.writestr(info, data)
    r = invoke(site["site"].db, "upload", str(good), str(bad), "--to", f"s3://{bucket}/study", config=cfg)
    assert r.exit_code == 8 and "fails verification" in r.stderr and r.stderr.count("\n") == 1, r.output
    folder = tmp_path / "folder"
    shutil.unpack_archive(good, folder)
    r = invoke(site["site"].db, "upload", str(next(folder.iterdir())), "--to", f"s3://{bucket}/study", config=cfg)
    assert r.exit_code == 2 and "--zip" in r.stderr
    r = invoke(site["site"].db, "upload", str(good), "--to", "https://example.org/x", config=cfg)
    assert r.exit_code == 2 and "s3://" in r.stderr
    r = invoke(site["site"].db, "upload", str(good), config=cfg)
    assert r.exit_code == 2 and "--to" in r.stderr
    assert len(_uploads(site)) == before and "Contents" not in s3.client().list_objects_v2(Bucket=bucket)


def test_credentials_come_only_from_the_aws_chain(s3, site, monkeypatch):
    bad = site["tmp"] / "creds.toml"
    bad.write_text('[site]\nname = "Test Hospital 1"\n\n[object_store]\naws_access_key_id = "AKIA..."\n')
    r = invoke(site["site"].db, "upload", "--pending", config=bad)
    assert r.exit_code == 2 and "aws_access_key_id is not a known key" in r.stderr
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k)
    bucket = s3.bucket("lock-nocreds")
    r = invoke(site["site"].db, "upload", str(site["zips"]["SCR-0002"]), "--to", f"s3://{bucket}/x",
               config=_config(site, s3.url, "nocreds"))
    assert r.exit_code == 11 and "no AWS credentials found" in r.stderr, r.output
    assert _uploads(site)[-1]["state"] == "pending"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    r = invoke(site["site"].db, "upload", "--pending", config=_config(site, s3.url, "nocreds"))
    assert r.exit_code == 0 and "uploaded to" in r.output, r.output


def test_s3_addresses_and_keys():
    from collector.errors import InvalidInput
    from collector.upload.target import KEY, object_key, parse_s3_url

    u = parse_s3_url("s3://study-bundles/a/b/")
    assert (u.bucket, u.prefix, str(u)) == ("study-bundles", "a/b", "s3://study-bundles/a/b")
    site = "0b9c2a8e-3f55-4a3e-9a61-0c1d2e3f4a5b"
    key = object_key(u, site_uuid=site.upper(), subject_id="SCR-0042", bundle="SCR-0042_20261201T000000Z")
    assert key == f"a/b/site={site}/subject=SCR-0042/SCR-0042_20261201T000000Z.zip"
    assert KEY.match(key)["subject"] == "SCR-0042"
    assert object_key(parse_s3_url("s3://study-bundles"), site_uuid=site, subject_id="SCR-1", bundle="x").startswith("site=")
    for bad in ("s3://", "s3://A_B/x", "http://b/x", "s3://study-bundles/a//b", "s3://study-bundles/../x"):
        with pytest.raises(InvalidInput):
            parse_s3_url(bad)
    for subject in ("../x", "a/b", "a=b", "", "SCR 1"):
        with pytest.raises(ValueError):
            object_key(u, site_uuid=site, subject_id=subject, bundle="x")


def test_s3_address_parser_never_crashes_on_garbage():
    from hypothesis import given, settings, strategies as st

    from collector.errors import InvalidInput
    from collector.upload.target import parse_s3_url

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.text(), st.text().map(lambda t: "s3://" + t)))
    def check(text: str) -> None:
        try:
            u = parse_s3_url(text)
        except InvalidInput as exc:
            assert "\n" not in exc.message
        else:
            assert u.bucket and not u.prefix.startswith("/") and not u.prefix.endswith("/")

    check()

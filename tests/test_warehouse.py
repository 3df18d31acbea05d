"""collector warehouse sync from a real local S3 server: bundles of two sites uploaded with collector upload,
verified and loaded as Parquet partitioned by site and subject, views in study.duckdb; incremental and
idempotent; a re-exported subject keeps its newest export; tampered objects are rejected, never loaded."""

from __future__ import annotations

import io
import json
import sqlite3
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import invoke
from s3_server import AWS_ENV, S3Server
from site_bundles import T0, Site

BUCKET = "study-warehouse"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two laptops: the same subject ID and session numbers on both; SCR-0001 of site 1 exported twice."""
    tmp = tmp_path_factory.mktemp("warehouse")
    a, b = Site(tmp / "a", "Test Hospital 1"), Site(tmp / "b", "Test Hospital 2")
    a.subject("SCR-0001", nights=2, hours=8.0, gaps=200, desat=0.01)
    a.subject("SCR-0002", nights=1, hours=9.0, gaps=200, desat=0.04)
    b.subject("SCR-0001", nights=1, hours=8.0, gaps=200)
    zips = {
        "a1_old": a.export("SCR-0001", tmp / "out", at=T0 + 30 * 86400),
        "a1_new": a.export("SCR-0001", tmp / "out", at=T0 + 31 * 86400),
        "a2": a.export("SCR-0002", tmp / "out", at=T0 + 30 * 86400),
        "b1": b.export("SCR-0001", tmp / "out-b", at=T0 + 30 * 86400),
    }
    for s in (a, b):
        s.close()
    return {"a": a, "b": b, "zips": zips, "tmp": tmp}


def _upload(s3: S3Server, site: Site, *zips: Path) -> None:
    cfg = site.root / "upload.toml"
    cfg.write_text(site.config_path.read_text() + f'\n[object_store]\nendpoint_url = "{s3.url}"\n')
    r = invoke(site.db, "upload", *map(str, zips), "--to", f"s3://{BUCKET}/bundles", config=cfg)
    assert r.exit_code == 0, r.output


def _sync(s3: S3Server, tmp: Path) -> tuple[Any, dict[str, Any]]:
    cfg = tmp / "central.toml"
    cfg.write_text(f'[object_store]\nendpoint_url = "{s3.url}"\n')
    r = invoke(tmp / "central-unused.sqlite", "warehouse", "sync", f"s3://{BUCKET}/bundles", "--out", str(tmp / "wh"),
               "--json", config=cfg)
    return r, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else {})


def _query(tmp: Path, sql: str) -> list[tuple[Any, ...]]:
    import duckdb

    con = duckdb.connect(str(tmp / "wh" / "study.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _samples_per_session(site: Site) -> dict[int, int]:
    conn = sqlite3.connect(site.db)
    return dict(conn.execute("SELECT session_id, COUNT(*) FROM spo2_samples GROUP BY session_id").fetchall())


def _night_t90(zip_path: Path) -> dict[int, float]:
    out = {}
    with zipfile.ZipFile(zip_path) as zf:
        for n in zf.namelist():
            if "/data/night_" in n and n.endswith(".json"):
                doc = json.loads(zf.read(n))
                out[doc["session"]["id"]] = doc["report"]["t90_pct"]
    return out


def _snapshot(tmp: Path) -> dict[str, Any]:
    files = sorted((tmp / "wh" / "parquet").rglob("*.parquet"))
    return {"files": [(p.relative_to(tmp / "wh").as_posix(), p.stat().st_mtime_ns) for p in files],
            **{t: sorted(_query(tmp, f"SELECT * FROM {t}"), key=repr) for t in ("samples", "nights", "criteria", "decisions")}}


def test_sync_loads_two_sites_incrementally_keeps_newest_exports_and_rejects_tampered_objects(s3, sites):
    tmp, a, b, z = sites["tmp"], sites["a"], sites["b"], sites["zips"]
    _upload(s3, a, z["a1_new"], z["a2"])
    _upload(s3, b, z["b1"])

    r, out = _sync(s3, tmp)
    assert r.exit_code == 0, r.output
    assert len(out["loaded"]) == 3 and out["rejected"] == []
    a_n, b_n = _samples_per_session(a), _samples_per_session(b)
    assert out["rows"]["samples"] == sum(a_n.values()) + sum(b_n.values())
    # queries run on the Parquet files, partitioned by site and subject
    parts = {p.relative_to(tmp / "wh" / "parquet").parts[:3] for p in (tmp / "wh" / "parquet").rglob("*.parquet")}
    assert ("samples", f"site_uuid={a.uuid}", "subject=SCR-0001") in parts
    assert ("samples", f"site_uuid={b.uuid}", "subject=SCR-0001") in parts
    view = _query(tmp, "SELECT sql FROM duckdb_views() WHERE view_name = 'samples'")[0][0]
    assert "read_parquet" in view
    per_session = dict(((s, sid), n) for s, sid, n in _query(
        tmp, "SELECT site_uuid, session_id, COUNT(*) FROM samples GROUP BY ALL"))
    assert per_session == {**{(a.uuid, k): v for k, v in a_n.items()}, **{(b.uuid, k): v for k, v in b_n.items()}}
    # two sites stay apart: both have a session 1 of SCR-0001
    assert _query(tmp, "SELECT COUNT(DISTINCT site_uuid), COUNT(*) FROM nights WHERE session_id = 1") == [(2, 2)]
    t90 = {(s, sid): v for s, sid, v in _query(tmp, "SELECT site_uuid, session_id, t90_pct FROM nights")}
    want = {**{(a.uuid, k): v for k, v in {**_night_t90(z["a1_new"]), **_night_t90(z["a2"])}.items()},
            **{(b.uuid, k): v for k, v in _night_t90(z["b1"]).items()}}
    assert t90 == want
    assert _query(tmp, "SELECT COUNT(*) FROM decisions") == [(3,)]
    assert _query(tmp, "SELECT COUNT(*), COUNT(DISTINCT object_key) FROM bundles") == [(3, 3)]

    # a second sync loads nothing and rewrites nothing
    before = _snapshot(tmp)
    r, out = _sync(s3, tmp)
    assert r.exit_code == 0 and out["loaded"] == [] and sum(out["rows"].values()) == 0
    assert _snapshot(tmp) == before

    # the older export of a re-exported subject arrives late: listed as a bundle, its sessions are not loaded again
    _upload(s3, a, z["a1_old"])
    r, out = _sync(s3, tmp)
    assert r.exit_code == 0 and len(out["loaded"]) == 1, r.output
    assert out["rows"]["samples"] == 0 and out["rows"]["nights"] == 0 and out["rows"]["bundles"] == 1
    after = _snapshot(tmp)
    assert {k: v for k, v in after.items() if k != "files"} == {k: v for k, v in before.items() if k != "files"}
    new_id = _query(tmp, f"SELECT bundle_id FROM bundles WHERE bundle = '{z['a1_new'].stem}'")[0][0]
    assert _query(tmp, f"SELECT DISTINCT bundle_id FROM samples WHERE site_uuid = '{a.uuid}' AND subject = 'SCR-0001'") == [(new_id,)]

    # tampered objects: a new version of a loaded key, and a changed bundle under a new key
    c = s3.client()
    key_a2 = f"bundles/site={a.uuid}/subject=SCR-0002/{z['a2'].stem}.zip"
    tampered = _tamper(z["a2"])
    c.put_object(Bucket=BUCKET, Key=key_a2, Body=tampered)
    c.put_object(Bucket=BUCKET, Key=f"bundles/site={a.uuid}/subject=SCR-0002/{z['a2'].stem}-copy.zip", Body=tampered)
    c.put_object(Bucket=BUCKET, Key=f"bundles/site={b.uuid}/subject=SCR-0002/{z['a2'].stem}.zip", Body=z["a2"].read_bytes())
    c.put_object(Bucket=BUCKET, Key="bundles/README.txt", Body=b"not a bundle")
    r, out = _sync(s3, tmp)
    assert r.exit_code == 8, r.output
    problems = {x["object_key"]: x["problem"] for x in out["rejected"]}
    assert len(problems) == 3 and out["loaded"] == []
    assert "replaces the object loaded from this key" in problems[key_a2]
    assert any("fails verification" in p and "samples_" in p for p in problems.values())
    assert any("is filed under site=" in p for p in problems.values())
    assert {k: v for k, v in _snapshot(tmp).items() if k != "files"} == {k: v for k, v in before.items() if k != "files"}
    assert len(_query(tmp, "SELECT * FROM rejected")) == 3
    r, out = _sync(s3, tmp)  # listed once; the next sync has nothing new
    assert r.exit_code == 0 and out["rejected"] == [] and out["rejected_total"] == 3


def test_sync_prints_rejections_and_says_where_they_are_listed(s3, sites):
    tmp = sites["tmp"] / "second"
    tmp.mkdir()
    c = s3.client()
    bucket = s3.bucket("study-printed")
    z = sites["zips"]["b1"]
    key = f"in/site={sites['b'].uuid}/subject=SCR-0001/{z.stem}.zip"
    c.put_object(Bucket=bucket, Key=key, Body=_tamper(z))
    cfg = tmp / "central.toml"
    cfg.write_text(f'[object_store]\nendpoint_url = "{s3.url}"\n')
    r = invoke(tmp / "unused.sqlite", "warehouse", "sync", f"s3://{bucket}/in", "--out", str(tmp / "wh"), config=cfg)
    assert r.exit_code == 8
    assert r.stderr.startswith(f"REJECTED {key}: fails verification")
    assert "0 new bundle(s) loaded of 1 object(s) listed" in r.stdout and "SELECT * FROM rejected" in r.stdout
    assert _query(tmp, "SELECT COUNT(*) FROM samples") == [(0,)]  # empty views exist before any load
    r = invoke(tmp / "unused.sqlite", "warehouse", "sync", "s3://no-such-bucket-here/x", "--out", str(tmp / "wh"), config=cfg)
    assert r.exit_code == 11 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr, r.output


def _tamper(zip_path: Path) -> bytes:
    """The same bundle with one reading changed in a samples CSV (manifests left as they were)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        done = False
        for info in src.infolist():
            data = src.read(info)
            if not done and "/data/samples_" in info.filename:
                lines = data.split(b"\n")
                lines[100] = lines[100].replace(b",9", b",8", 1)
                data, done = b"\n".join(lines), True
            dst.writestr(info, data)
    return buf.getvalue()


def test_only_safe_site_subject_and_session_names_become_folders():
    from collector.warehouse.sync import _filed_problem

    site = "0b9c2a8e-3f55-4a3e-9a61-0c1d2e3f4a5b"
    ok = {"site_uuid": site, "pseudonym": "SCR-0001", "sessions": [{"session_uuid": "1b9c2a8e-3f55-4a3e-9a61-0c1d2e3f4a5b"}]}
    key = f"p/site={site}/subject=SCR-0001/SCR-0001_x.zip"
    assert _filed_problem(key, ok, "SCR-0001_x") is None
    assert "filed under" in _filed_problem(key, {**ok, "pseudonym": "SCR-0002"}, "SCR-0001_x")
    assert "named" in _filed_problem(key, ok, "SCR-0001_y")
    assert "cannot be used" in _filed_problem(f"p/site={site}/subject=../SCR-0001_x.zip", {**ok, "pseudonym": ".."}, "SCR-0001_x")
    bad_session = {**ok, "sessions": [{"session_uuid": "../../etc"}]}
    assert "not a UUID" in _filed_problem(key, bad_session, "SCR-0001_x")
    assert "canonical" in _filed_problem(key.replace(site, site.upper()), {**ok, "site_uuid": site.upper()}, "SCR-0001_x")

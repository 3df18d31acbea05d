"""Site signatures: a bundle is bound to the site key that made it, and a bundle re-made from an edited
database is told apart from the site's own by the chain heads the site signed before."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector.export import bag, signature
from collector.export.verify import verify_bundle
from collector.storage import audit, seals, site_key
from collector.storage.db import open_db, transaction
from conftest import T0, invoke, run_night, scenario

SUBJECT = "SCR-0077"


def _cli(db: Path, *args: str):
    cfg = db.with_name("site.toml")
    if not cfg.exists():
        cfg.write_text('[site]\nname = "Test Hospital 7"\n')
    return invoke(db, *args, config=cfg, catch_exceptions=False)


def _export(db: Path, out: Path) -> Path:
    r = _cli(db, "export", SUBJECT, "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    return Path(json.loads(r.output)[0]["path"])


def _note(db: Path, text: str) -> None:
    conn = open_db(db).conn
    with transaction(conn):
        audit.append(conn, at=T0 + 9000, actor="tester", action="note", subject_id=SUBJECT, new={"text": text})
    conn.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 1 h night, exported; a note; exported again; the registered public key written out."""
    tmp = tmp_path_factory.mktemp("signed")
    db = tmp / "site.sqlite"
    asyncio.run(run_night(db, [scenario(duration_s=3600.0)], subjects=[SUBJECT]))
    shown = _cli(db, "site", "key", "show", "--json")
    assert shown.exit_code == 0, shown.output
    key = json.loads(shown.output)
    pub = tmp / "registered.pem"
    pub.write_text(key["public_key_pem"])
    first = _export(db, tmp / "out1")
    _note(db, "reviewed")
    second = _export(db, tmp / "out2")
    return {"db": db, "tmp": tmp, "key": key, "pub": pub, "first": first, "second": second}


def test_site_key_is_made_once_private_file_0600_public_key_recorded(site):
    path = site_key.key_path(site["db"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = _cli(site["db"], "site", "key", "show")
    assert again.exit_code == 0 and site["key"]["fingerprint"] in again.output and "BEGIN PUBLIC KEY" in again.output
    # what the command prints loads as the key itself (it can be saved as the file to register)
    loaded = serialization.load_pem_public_key(again.output.encode())
    assert site_key.fingerprint(loaded) == site["key"]["fingerprint"]  # type: ignore[arg-type]
    conn = open_db(site["db"]).conn
    assert [h["label"] for h in site_key.signed_heads(conn)] == [site["first"].name, site["second"].name]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM signed_heads")


def test_the_sites_own_bundles_verify_under_its_registered_key_and_agree_with_each_other(site):
    for b, earlier in ((site["first"], site["second"]), (site["second"], site["first"])):
        r = verify_bundle(b, site_keys=signature.load_keys([site["pub"]], None), earlier=signature.read_earlier(earlier))
        assert r.ok, r.problems
        assert any("valid under a registered site key" in n and "agree with 1 earlier" in n for n in r.notes), r.notes
    r = _cli(site["db"], "verify", str(site["second"]), "--site-key", str(site["pub"]), "--earlier", str(site["first"]))
    assert r.exit_code == 0, r.output


def test_a_key_that_is_not_registered_fails(site, tmp_path):
    other = tmp_path / "other.pem"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(other, keys / "other.pem")
    r = _cli(site["db"], "verify", str(site["first"]), "--trusted-keys", str(keys))
    assert r.exit_code == 8 and "not a registered site key" in r.output
    shutil.copy(site["pub"], keys / "site.pem")
    assert _cli(site["db"], "verify", str(site["first"]), "--trusted-keys", str(keys)).exit_code == 0


def _rehash_bag(folder: Path) -> None:
    """What a forger does: recompute both manifests and the Oxum after editing files."""
    files = bag.read_bag(folder).files
    payload = {k[len("data/"):]: v for k, v in files.items() if k.startswith("data/")}
    info = [(k, v) for k, vs in bag.parse_info(files[bag.BAG_INFO]).items() for v in vs if k != "Payload-Oxum"]
    rebuilt = bag.build_bag(payload, info)
    if signature.SIGNATURE_FILE in files:
        rebuilt[signature.SIGNATURE_FILE] = files[signature.SIGNATURE_FILE]
    shutil.rmtree(folder)
    bag.write_folder(rebuilt, folder)


def test_an_edited_bundle_with_recomputed_manifests_fails_the_signature(site, tmp_path):
    edited = tmp_path / site["first"].name
    shutil.copytree(site["first"], edited)
    info = (edited / "bag-info.txt").read_text().replace("Test Hospital 7", "Another Hospital")
    (edited / "bag-info.txt").write_text(info)
    _rehash_bag(edited)
    assert bag.check_bag(bag.read_bag(edited)) == []  # the fixity is fine again ...
    r = verify_bundle(edited, site_keys=signature.load_keys([site["pub"]], None))
    assert not r.ok and any("not the tagmanifest-sha256.txt the site signed" in p for _, p in r.problems), r.problems
    # ... and re-signing with a key of one's own is caught by the registered key
    forged = tmp_path / "forged"
    shutil.copytree(edited, forged)
    doc = json.loads((forged / signature.SIGNATURE_FILE).read_text())
    k = Ed25519PrivateKey.generate()
    doc["public_key_pem"] = site_key.public_pem(k.public_key())
    doc["statement"]["key_fingerprint"] = site_key.fingerprint(k.public_key())
    doc["statement"]["digests"] = {f: bag.sha256((forged / f).read_bytes()) for f in signature.SIGNED_FILES}
    import base64

    doc["signature"] = base64.b64encode(k.sign(site_key.canonical(doc["statement"]))).decode()
    (forged / signature.SIGNATURE_FILE).write_text(json.dumps(doc))
    assert verify_bundle(forged).ok  # self-consistent without a registered key ...
    r = verify_bundle(forged, site_keys=signature.load_keys([site["pub"]], None))
    assert not r.ok and "not a registered site key" in r.problems[0][1]


def test_an_unsigned_bundle_fails_when_a_key_is_required(site, tmp_path):
    unsigned = tmp_path / "unsigned"
    shutil.copytree(site["first"], unsigned)
    (unsigned / signature.SIGNATURE_FILE).unlink()
    assert verify_bundle(unsigned).ok
    r = verify_bundle(unsigned, site_keys=signature.load_keys([site["pub"]], None))
    assert [p for _, p in r.problems] == ["is missing: the bundle is not signed by a site key"]


def _rechain_audit(conn: sqlite3.Connection, from_id: int) -> None:
    """A forger with the laptop: edit an audit row behind the triggers and recompute the chain from it on."""
    rows = [dict(zip([d[0] for d in cur.description], r)) for cur in [conn.execute("SELECT * FROM audit ORDER BY id")] for r in cur]
    prev = audit.GENESIS
    for row in rows:
        if row["id"] >= from_id:
            row["prev_hash"] = prev
            row["row_hash"] = audit.row_hash(prev, row)
            conn.execute("UPDATE audit SET prev_hash = ?, row_hash = ?, reason = ? WHERE id = ?",
                         (row["prev_hash"], row["row_hash"], row["reason"], row["id"]))
        prev = row["row_hash"]


def _copy_site(site: dict, tmp_path: Path, *, key: bool = True) -> Path:
    """The database as it stands (WAL included, through SQLite's backup), with the site's key file and config."""
    db = tmp_path / "site.sqlite"
    src, dst = sqlite3.connect(site["db"]), sqlite3.connect(db)
    src.backup(dst)
    src.close()
    dst.close()
    if key:
        shutil.copy(site_key.key_path(site["db"]), site_key.key_path(db))  # the forger has the laptop, key included
    shutil.copy(site["db"].with_name("site.toml"), db.with_name("site.toml"))
    return db


def _forge_copy(site: dict, tmp_path: Path, *, forget_log: bool) -> Path:
    db = _copy_site(site, tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET reason = 'edited' WHERE id = 2")
    _rechain_audit(conn, 2)
    if forget_log:
        conn.execute("DROP TRIGGER signed_heads_no_delete")
        conn.execute("DELETE FROM signed_heads")
    conn.close()
    assert audit.verify(open_db(db).conn).ok  # the edited database checks out on its own
    return _export(db, tmp_path / "forged")


@pytest.mark.parametrize("forget_log", [False, True], ids=["log-kept", "log-deleted"])
def test_a_bundle_remade_from_an_edited_database_is_told_apart_by_earlier_signed_heads(site, tmp_path, forget_log):
    forged = _forge_copy(site, tmp_path, forget_log=forget_log)
    keys = signature.load_keys([site["pub"]], None)
    alone = verify_bundle(forged, site_keys=keys)
    assert alone.ok, alone.problems  # signed with the site's own key: alone it cannot be told apart ...
    r = verify_bundle(forged, site_keys=keys, earlier=signature.read_earlier(site["first"]) + signature.read_earlier(site["second"]))
    assert not r.ok
    text = " ".join(p for _, p in r.problems)
    assert ("re-made from an edited database" if not forget_log else "log of signed heads was changed") in text, text
    # and the CLI says so with the documented exit
    res = _cli(site["db"], "verify", str(forged), "--site-key", str(site["pub"]), "--earlier", str(site["first"].parent))
    assert res.exit_code == 8 and "site-signature.json" in res.output


def test_an_edited_sample_with_resealed_chain_differs_at_the_signed_seal_head(site, tmp_path):
    db = _copy_site(site, tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER spo2_samples_no_update")
    conn.execute("DROP TRIGGER sample_seals_no_update")
    conn.execute("UPDATE spo2_samples SET spo2_pct = spo2_pct - 5 WHERE rowid = 10")
    prev = seals.GENESIS
    for sid, first, last in conn.execute("SELECT id, first_rowid, last_rowid FROM sample_seals ORDER BY id").fetchall():
        rows = conn.execute(f"SELECT {', '.join(seals.COLUMNS)} FROM spo2_samples WHERE rowid BETWEEN ? AND ? ORDER BY rowid",
                            (first, last)).fetchall()
        digest = seals.rows_digest(rows)
        h = seals.seal_hash(prev, first, last, digest)
        conn.execute("UPDATE sample_seals SET rows_sha256 = ?, prev_hash = ?, seal_hash = ? WHERE id = ?", (digest, prev, h, sid))
        prev = h
    conn.close()
    assert seals.verify(open_db(db).conn).ok
    forged = _export(db, tmp_path / "forged")
    r = verify_bundle(forged, site_keys=signature.load_keys([site["pub"]], None), earlier=signature.read_earlier(site["first"]))
    assert any("seals chain row" in p and "edited database" in p for _, p in r.problems), r.problems


def test_a_missing_key_file_is_one_line_and_never_silently_replaced(site, tmp_path):
    db = _copy_site(site, tmp_path, key=False)
    r = _cli(db, "site", "key", "show")
    assert r.exit_code == 3 and "restore it from backup" in r.output and len(r.output.strip().splitlines()) == 1
    assert not site_key.key_path(db).exists()
    shutil.copy(site_key.key_path(site["db"]), site_key.key_path(db))
    assert _cli(db, "site", "key", "show").exit_code == 0

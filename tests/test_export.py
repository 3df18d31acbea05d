"""Export bundles end to end: a simulated night through the real daemon, exported through the CLI,
read back with pandas/pyEDFlib/edfio, verified, tampered with, merged."""

from __future__ import annotations

import asyncio
import io
import json
import random
import shutil
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.export import bag
from collector.export.verify import verify_bundle
from collector.storage import audit, repo
from collector.storage.db import open_db
from simulators.scenario import Interval
from conftest import T0, run_night, scenario, invoke

SUBJECT = "SCR-0042"
BIRTH = "1971-04-23"
BIRTH_FORMS = ["1971-04-23", "23.04.1971", "23/04/1971", "04/23/1971", "1971/04/23", "19710423", "23041971",
               "23-APR-1971", "23 Apr 1971", "April 23, 1971", "23-04-1971"]
ADDRESS = "C4:7F:51:00:AB:12"


def _cli(db: Path, *args: str) -> object:
    cfg = db.with_name("site.toml")
    if not cfg.exists():
        cfg.write_text('[site]\nname = "Test Hospital 1"\n')
    return invoke(db, *args, config=cfg, catch_exceptions=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One subject: a 1.5 h night (desaturations, finger out, a disconnect), a birth date, a spirometry
    session, an event and an audit row that mention the birth date and the device address; exported twice."""
    import sqlite_utils

    from collector.eligibility.store import record_fact

    tmp = tmp_path_factory.mktemp("export")
    db = tmp / "site.sqlite"
    sc = scenario(address=ADDRESS, duration_s=5400.0, finger_out=[Interval(1500, 90)], disconnects=[Interval(3000, 120)],
                  desaturations=[{"count": 6, "depth": 10, "duration_s": 70}])
    run = asyncio.run(run_night(db, [sc], subjects=[SUBJECT]))
    sid = run.session_ids[0]
    conn = open_db(db).conn
    record_fact(sqlite_utils.Database(conn), SUBJECT, "birth_date", BIRTH, by="tester", now_utc=T0 + 7200)
    conn.execute("BEGIN IMMEDIATE")
    spiro = repo.open_session(conn, subject_id=SUBJECT, kind="spirometry", device_id=None, by="tester", at=T0 + 8000)
    for n, fvc in enumerate((3.1, 3.2, 3.15), 1):
        conn.execute("INSERT INTO spirometry_manoeuvres (session_id, received_utc, number, manoeuvre_type, fvc_l, fev1_l,"
                     " device_quality_json, raw_json) VALUES (?, '2025-12-29T12:00:00.000Z', ?, 'FVC', ?, 2.5, '{\"grade\":\"A\"}',"
                     " '{\"PID\":\"name and birth date as the device sent them\"}')", (spiro, n, fvc))
    conn.execute("INSERT INTO spirometry_results (session_id, computed_utc, valid, equation, sex, age_years, height_cm, fvc_l,"
                 " predicted_fvc_l, lln_fvc_l, z_fvc, fvc_pct_predicted, grade_fvc, result_json) VALUES"
                 " (?, '2025-12-29T12:01:00.000Z', 1, 'GLI-Global-2022', 'male', 54.68309377138946, 178, 3.2, 4.597213, 3.70118,"
                 " -2.10744, 69.60849, 'A', ?)",
                 (spiro, json.dumps({"inputs": {"age_years": 54.68309377138946, "age_on": "2025-12-29", "height_cm": 178},
                                     "prediction": {"age_years": 54.68309377138946, "predicted_fvc_l": 4.597213,
                                                    "percent_predicted_fvc": 69.60849, "z_fvc": -2.10744}})))
    repo.close_session(conn, spiro, state="stopped", by="tester", at=T0 + 8100)
    repo.add_event(conn, sid, t_ms=int((T0 + 600) * 1000), kind="note", detail={"text": f"born {BIRTH}, device {ADDRESS}"})
    audit.append(conn, at=T0 + 8200, actor="tester", action="note", subject_id=SUBJECT, new={"birth": "23.04.1971"})
    conn.execute("COMMIT")
    out = tmp / "out"
    r1 = _cli(db, "export", SUBJECT, "--out", str(out), "--json", "--lang", "en")
    assert r1.exit_code == 0, r1.output
    r2 = _cli(db, "export", "--all", "--out", str(out / "zips"), "--zip", "--json", "--lang", "en")
    assert r2.exit_code == 0, r2.output
    folder = Path(json.loads(r1.output)[0]["path"])
    zipped = Path(json.loads(r2.output)[0]["path"])
    return {"db": db, "session": sid, "spiro": spiro, "folder": folder, "zip": zipped, "tmp": tmp,
            "export": json.loads(r1.output)[0]}


def _copy(site: dict, name: str) -> Path:
    dst = site["tmp"] / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(site["folder"], dst)
    return dst


def _named(result, rel: str) -> bool:
    return any(rel == f or rel in p for f, p in result.problems)


def test_bundle_is_a_bagit_bag_with_the_promised_files(site):
    root, sid, sp = site["folder"], site["session"], site["spiro"]
    assert (root / "bagit.txt").read_bytes() == b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
    names = sorted(p.relative_to(root / "data").as_posix() for p in (root / "data").iterdir())
    assert names == sorted([f"samples_{sid}.csv", f"gaps_{sid}.csv", f"events_{sid}.csv", f"notes_{sid}.csv", f"alerts_{sid}.csv", f"night_{sid}.json",
                            f"night_{sid}.edf", f"night_{sid}.discontinuous.edf", f"night_{sid}.png", f"spirometry_{sp}.csv", f"spirometry_{sp}.json",
                            "eligibility.json", "audit.csv", "report.pdf", "signatures.json", "subject.json"])
    info = bag.parse_info((root / "bag-info.txt").read_bytes())
    assert info["Subject-Pseudonym"] == [SUBJECT] and info["Source-Organization"]
    assert info["Device"] == ["oximeter SIM-PLX serial SIM0001 firmware 1.0.0-sim"]
    assert info["Bag-Software-Agent"][0].startswith("collector ")
    # the export itself is an audit row naming every file and its hash
    conn = sqlite3.connect(site["db"])
    rows = conn.execute("SELECT actor, new_value FROM audit WHERE action = 'export_made' ORDER BY id").fetchall()
    assert len(rows) == 2 and rows[0][0] == "tester"
    files = json.loads(rows[0][1])["files"]
    assert files["data/report.pdf"] == bag.sha256((root / "data/report.pdf").read_bytes())
    assert set(files) == {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_samples_come_back_the_same_from_csv_edf_and_zip(site):
    import edfio
    import pyedflib

    sid = site["session"]
    conn = sqlite3.connect(site["db"])
    db = conn.execute("SELECT host_utc_ms, spo2_pct, pulse_bpm, valid, pulse_valid, flags FROM spo2_samples"
                      " WHERE session_id = ? ORDER BY host_utc_ms", (sid,)).fetchall()
    df = pd.read_csv(site["folder"] / f"data/samples_{sid}.csv")
    assert len(df) == len(db) > 4000
    t_ms = (pd.to_datetime(df["host_utc"], utc=True, format="ISO8601") - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    assert t_ms.tolist() == [r[0] for r in db]
    assert df["spo2_pct"].tolist() == pytest.approx([np.nan if r[1] is None else r[1] for r in db], nan_ok=True)
    assert df["valid"].tolist() == [r[3] for r in db] and df["flags"].tolist() == [r[5] for r in db]
    assert (~df["valid"].astype(bool)).sum() > 50, "the finger-out minutes are exported as invalid samples"

    with zipfile.ZipFile(site["zip"]) as zf:
        inner = [n for n in zf.namelist() if n.endswith(f"data/samples_{sid}.csv")]
        assert pd.read_csv(io.BytesIO(zf.read(inner[0]))).equals(df)

    path = str(site["folder"] / f"data/night_{sid}.edf")
    valid_spo2 = np.array([r[1] for r in db if r[3] and r[1] is not None])
    valid_pulse = np.array([r[2] for r in db if r[4] and r[2] is not None])
    with pyedflib.EdfReader(path) as f:
        labels = f.getSignalLabels()
        assert labels == ["SpO2", "Pulse"]
        spo2_dig = f.readSignal(0, digital=True)
        spo2 = f.readSignal(0)
        pulse = f.readSignal(1)
        pulse_dig = f.readSignal(1, digital=True)
        assert f.getSampleFrequency(0) == 1
        assert f.getStartdatetime().replace(tzinfo=None) == pd.Timestamp(db[0][0] // 1000, unit="s").to_pydatetime()
        texts = list(f.readAnnotations()[2])
        assert f.getPatientName() in ("X", "") and f.getBirthdate() in ("", "X")
    np.testing.assert_allclose(spo2[spo2_dig != -1], valid_spo2, atol=0.051)
    np.testing.assert_allclose(pulse[pulse_dig != -1], valid_pulse, atol=0.051)
    # one cell per second: each valid sample sits at its own second after the start
    cells = np.flatnonzero(spo2_dig != -1)
    secs = np.array([r[0] // 1000 for r in db if r[3] and r[1] is not None]) - db[0][0] // 1000
    assert cells.tolist() == secs.tolist()
    assert "gap: device_disconnected" in texts and "event: note" in texts
    e = edfio.read_edf(path)
    assert [s.label for s in e.signals] == ["SpO2", "Pulse"]


def test_verify_passes_on_fresh_bundles(site):
    for path in (site["folder"], site["zip"]):
        r = _cli(site["db"], "verify", str(path))
        assert r.exit_code == 0, r.output
        assert "OK" in r.output
    res = verify_bundle(site["folder"])
    assert any("withheld" in n for n in res.notes), "the audit row mentioning the birth date is withheld"


def test_any_changed_byte_fails_naming_the_file(site):
    root = _copy(site, "bytes")
    rng = random.Random(7)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(root).as_posix()
        original = path.read_bytes()
        positions = {0, len(original) - 1, len(original) // 2, *(rng.randrange(len(original)) for _ in range(4))}
        for pos in sorted(positions):
            changed = bytearray(original)
            changed[pos] = (changed[pos] + 1 + rng.randrange(254)) % 256
            path.write_bytes(bytes(changed))
            res = verify_bundle(root)
            assert not res.ok and _named(res, rel), f"byte {pos} of {rel} changed but verify said {res.problems}"
        path.write_bytes(original)
    assert verify_bundle(root).ok


def test_changed_zip_fails(site):
    data = site["zip"].read_bytes()
    for k, pos in enumerate((len(data) // 3, len(data) // 2, len(data) - 30)):
        changed = bytearray(data)
        changed[pos] ^= 0x5A
        bad = site["tmp"] / f"bad{k}.zip"
        bad.write_bytes(bytes(changed))
        r = _cli(site["db"], "verify", str(bad))
        assert r.exit_code != 0


def test_removed_or_added_file_fails_naming_it(site):
    root = _copy(site, "files")
    sid = site["session"]
    gaps = root / f"data/gaps_{sid}.csv"
    kept = gaps.read_bytes()
    gaps.unlink()
    res = verify_bundle(root)
    assert not res.ok and _named(res, f"data/gaps_{sid}.csv")
    gaps.write_bytes(kept)
    for extra in ("data/extra.csv", "notes.txt", "data/sub/x.json"):
        p = root / extra
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
        r = _cli(site["db"], "verify", str(root))
        assert r.exit_code == 8 and extra in r.output
        p.unlink()
    assert verify_bundle(root).ok


def _rebag(root: Path, rel: str, new: bytes) -> None:
    """Replace a payload file and regenerate both manifests, as a careless or dishonest re-packer would."""
    (root / rel).write_bytes(new)
    data = {p.relative_to(root).as_posix(): p.read_bytes() for p in (root / "data").rglob("*") if p.is_file()}
    (root / bag.MANIFEST).write_bytes(bag.manifest_text(data))
    tags = {k: (root / k).read_bytes() for k in bag.TAG_FILES}
    (root / bag.TAGMANIFEST).write_bytes(bag.manifest_text(tags))


def test_verify_recomputes_t90_and_checks_the_audit_chain_beyond_the_manifests(site):
    sid = site["session"]
    root = _copy(site, "rebag")
    csv_path = root / f"data/samples_{sid}.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    k = next(i for i, line in enumerate(lines[1:], 1) if ",95.0," in line)
    lines[k] = lines[k].replace(",95.0,", ",80.0,", 1)
    _rebag(root, f"data/samples_{sid}.csv", "".join(lines).encode())
    res = verify_bundle(root)
    assert any(f == f"data/night_{sid}.json" and "t90_s" in p for f, p in res.problems)
    assert _named(res, f"data/night_{sid}.edf"), "the EDF no longer matches the CSV either"

    root = _copy(site, "rebag_audit")
    text = (root / "data/audit.csv").read_text()
    _rebag(root, "data/audit.csv", text.replace("session_started", "session_startet", 1).encode())
    res = verify_bundle(root)
    problems = dict(res.problems)
    assert sorted(problems) == ["data/audit.csv", "data/report.pdf", "manifest-sha256.txt", "tagmanifest-sha256.txt"]
    assert "edited" in problems["data/audit.csv"]
    assert "site signed" in problems["manifest-sha256.txt"], "re-packed manifests are not the ones the site key signed"
    assert "payload hash" in problems["data/report.pdf"], "the printed report no longer matches the re-packed payload"


def test_no_birth_date_or_device_address_anywhere(site):
    blobs: dict[str, bytes] = {}
    for p in site["folder"].rglob("*"):
        if p.is_file():
            blobs[str(p)] = p.read_bytes()
    raw_zip = site["zip"].read_bytes()
    blobs["zip"] = raw_zip
    with zipfile.ZipFile(site["zip"]) as zf:
        for n in zf.namelist():
            blobs[f"zip:{n}"] = zf.read(n)
    needles = [*BIRTH_FORMS, ADDRESS, ADDRESS.replace(":", ""), ADDRESS.replace(":", "-")]
    for name, data in blobs.items():
        low = data.lower()
        for needle in needles:
            for enc in ("utf-8", "utf-16-le", "utf-16-be"):
                assert needle.lower().encode(enc) not in low, f"{needle!r} ({enc}) found in {name}"
    # age at screening instead of the birth date: 54 on the first session date (2025-12-29)
    subject = json.loads((site["folder"] / "data/subject.json").read_text())
    assert subject["age_at_screening_years"] == 54
    edf_header = (site["folder"] / f"data/night_{site['session']}.edf").read_bytes()[:256]
    assert edf_header[8:88].decode().split() == [SUBJECT, "X", "X", "X"]
    events = (site["folder"] / f"data/events_{site['session']}.csv").read_text()
    assert "<withheld>" in events
    assert "name and birth date" not in (site["folder"] / f"data/spirometry_{site['spiro']}.json").read_text()


def _floats_named(obj, prefix):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k.startswith(prefix) and isinstance(v, float):
                yield k, v
            yield from _floats_named(v, prefix)
    elif isinstance(obj, list):
        for v in obj:
            yield from _floats_named(v, prefix)


def test_no_decimal_age_or_full_precision_reference_value_leaves_the_site(site):
    """A decimal age next to its date gives the birth date back, and so do exact predicted values."""
    for path in (site["folder"] / "data").glob("*.json"):
        doc = json.loads(path.read_text())
        assert list(_floats_named(doc, "age_years")) == [], path.name
    spiro = json.loads((site["folder"] / f"data/spirometry_{site['spiro']}.json").read_text())["result"]
    assert spiro["age_years"] == 54 and spiro["result"]["inputs"]["age_years"] == 54
    assert spiro["predicted_fvc_l"] == 4.6 and spiro["z_fvc"] == -2.11 and spiro["fvc_pct_predicted"] == 69.6
    assert spiro["result"]["prediction"]["percent_predicted_fvc"] == 69.6


def test_rounding_to_the_form_precision_never_lands_on_the_fvc_limit():
    from collector.export.privacy import coarsen

    out = coarsen({"fvc_pct_predicted": 49.96, "other_fvc_pct_predicted": 50.04, "x": {"percent_predicted_fvc": 61.234}},
                  fvc_threshold_pct=50.0)
    assert out == {"fvc_pct_predicted": 49.96, "other_fvc_pct_predicted": 50.0, "x": {"percent_predicted_fvc": 61.2}}


def _other_site(tmp: Path) -> Path:
    """A second laptop: its own database (own site UUID), the same subject ID and session numbers."""
    from collector.config import defaults
    from collector.oximetry import store as oximetry_store
    from collector.storage.db import transaction

    db = tmp / "other" / "site.sqlite"
    db.parent.mkdir()
    conn = open_db(db).conn
    t = (T0 * 1000 + np.arange(3 * 3600) * 1000).astype(np.int64)
    with transaction(conn):
        repo.add_subject(conn, SUBJECT, by="tester", at=T0)
        sid = repo.add_recorded_session(conn, subject_id=SUBJECT, kind="night", origin="simulated", started_at=T0,
                                        stopped_at=T0 + 3 * 3600, by="tester", settings={})
        oximetry_store.insert_samples(conn, [(sid, int(x), None, 96.0, 60.0, None, 1, 1, 0, None, None) for x in t], at=T0 + 3 * 3600)
        oximetry_store.finalise(conn, sid, defaults(), at=T0 + 3 * 3600, actor="tester", reason="night ended")
    conn.close()
    db.with_name("site.toml").write_text('[site]\nname = "Test Hospital 2"\n')
    r = _cli(db, "export", SUBJECT, "--out", str(tmp / "other" / "out"), "--json")
    assert r.exit_code == 0, r.output
    return Path(json.loads(r.output)[0]["path"])


def _tables(path: Path) -> dict:
    import duckdb

    con = duckdb.connect(str(path))
    try:
        return {t: sorted(con.execute(f"SELECT * EXCLUDE (bundle_id) FROM {t}").fetchall(), key=repr)
                for t in ("samples", "nights", "spirometry", "criteria", "decisions")} | {
                "sessions": sorted(con.execute("SELECT site_uuid, session_uuid, bundle_id FROM sessions").fetchall())}
    finally:
        con.close()


def test_merge_keeps_the_newest_export_of_each_session_in_any_order(site, monkeypatch):
    import duckdb

    monkeypatch.setitem(__import__("sys").modules, "pandas", None)  # a plain install has no pandas
    other = _other_site(site["tmp"])
    n = sqlite3.connect(site["db"]).execute("SELECT COUNT(*) FROM spo2_samples").fetchone()[0]
    outs = []
    for k, order in enumerate(([site["folder"], site["zip"], other], [other, site["zip"], site["folder"]])):
        out = site["tmp"] / f"study{k}.duckdb"
        r = _cli(site["db"], "merge", *map(str, order), "--out", str(out), "--json")
        assert r.exit_code == 0, r.output
        outs.append(out)
    a, b = _tables(outs[0]), _tables(outs[1])
    assert a == b, "the order bundles arrive in does not matter"
    con = duckdb.connect(str(outs[0]))
    count = lambda t, w="TRUE": con.execute(f"SELECT COUNT(*) FROM {t} WHERE {w}").fetchone()[0]  # noqa: E731
    assert count("bundles") == 3
    assert count("samples") == n + 3 * 3600, "two exports of one night are one night; the other site's night is its own"
    assert count("nights") == 2 and count("spirometry") == 1 and count("decisions") == 2
    assert con.execute("SELECT COUNT(DISTINCT site_uuid), COUNT(DISTINCT (site_uuid, session_uuid)) FROM samples").fetchone() == (2, 2)
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT session_id) FROM nights").fetchone() == (2, 1)  # both sites' session 1
    newest = con.execute("SELECT bundle_id FROM bundles WHERE site = 'Test Hospital 1' ORDER BY export_utc DESC, bundle_id DESC LIMIT 1").fetchone()[0]
    assert con.execute("SELECT DISTINCT bundle_id FROM samples WHERE site = 'Test Hospital 1'").fetchall() == [(newest,)]
    elig = json.loads((site["folder"] / "data/eligibility.json").read_text())
    assert count("criteria", "site = 'Test Hospital 1'") == len(elig["criteria"]) > 0
    t90 = json.loads((site["folder"] / f"data/night_{site['session']}.json").read_text())["report"]["t90_pct"]
    assert con.execute("SELECT t90_pct FROM nights WHERE site = 'Test Hospital 1'").fetchall() == [(t90,)]
    con.close()
    # the same bundles again add nothing; a tampered bundle is refused and nothing is loaded
    again = _cli(site["db"], "merge", str(site["folder"]), str(other), "--out", str(outs[0]), "--json")
    assert json.loads(again.output)["rows_added"]["samples"] == 0 and _tables(outs[0]) == a
    bad = _copy(site, "bad_merge")
    (bad / "data/report.pdf").write_bytes(b"%PDF-1.4 nothing\n%%EOF\n")
    r = CliRunner().invoke(main, ["merge", str(bad), "--out", str(outs[0])])
    assert r.exit_code != 0 and "refusing to merge" in r.output
    assert _tables(outs[0]) == a


def test_export_refuses_the_default_site_name(site, tmp_path):
    r = invoke(site["db"], "export", SUBJECT, "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "[site] name" in r.output and "unnamed-site" in r.output
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_every_row_carries_site_and_session_uuid(site):
    import uuid

    root = site["folder"]
    subject = json.loads((root / "data/subject.json").read_text())
    site_uuid = subject["site_uuid"]
    assert uuid.UUID(site_uuid).version == 4
    sessions = {s["id"]: s["session_uuid"] for s in subject["sessions"]}
    assert len(set(sessions.values())) == len(sessions)
    for path in (root / "data").glob("*.csv"):
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        assert list(df.columns[:2]) == ["site_uuid", "session_uuid"], path.name
        assert set(df["site_uuid"]) <= {site_uuid}, path.name
        if path.name != "audit.csv":
            sid = int(path.stem.split("_")[1])
            assert set(df["session_uuid"]) <= {sessions[sid]}, path.name
    info = bag.parse_info((root / "bag-info.txt").read_bytes())
    assert info["Site-UUID"] == [site_uuid]
    # the zip made later by --all names the same sessions with the same UUIDs
    with zipfile.ZipFile(site["zip"]) as zf:
        again = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("data/subject.json"))))
    assert {s["id"]: s["session_uuid"] for s in again["sessions"]} == sessions and again["site_uuid"] == site_uuid


def test_export_arguments_are_checked(site):
    r = invoke(site["db"], *["export", "--out", str(site["tmp"] / "x")])
    assert r.exit_code == 2 and "exactly one of" in r.output
    r = invoke(site["db"], *["export", "SCR-9999", "--out", str(site["tmp"] / "x")])
    assert r.exit_code == 4
    r = _cli(site["db"], "export", "--session", str(site["spiro"]), "--out", str(site["tmp"] / "one"), "--json")
    assert r.exit_code == 0
    one = Path(json.loads(r.output)[0]["path"])
    assert sorted(p.name for p in (one / "data").iterdir() if p.name.startswith(("night", "spiro"))) == [
        f"spirometry_{site['spiro']}.csv", f"spirometry_{site['spiro']}.json"]
    assert verify_bundle(one).ok


def _edit_json(root, name, change):
    doc = json.loads((root / name).read_text())
    change(doc)
    _rebag(root, name, json.dumps(doc).encode())


def test_verify_holds_a_bundle_to_the_protocol_not_to_what_it_says_of_itself(site):
    """The hardening run's attacks: a failing night's threshold raised, the decision set to eligible,
    min_analysed_h changed, manifests recomputed: each is named."""
    sid = site["session"]
    assert verify_bundle(site["folder"]).ok

    root = _copy(site, "threshold")

    def raise_limit(doc):
        doc["report"]["definitions"]["threshold_pct"] = 10.0

    _edit_json(root, f"data/night_{sid}.json", raise_limit)
    res = verify_bundle(root)
    assert any(f == f"data/night_{sid}.json" and "threshold_pct = 10.0, the protocol's is 2.0" in p for f, p in res.problems)

    root = _copy(site, "decision")

    def make_eligible(doc):
        doc["decision"] = "eligible"
        doc["thresholds"]["t90_pct_max"] = 10.0
        for c in doc["criteria"]:
            c["state"] = "met"

    _edit_json(root, "data/eligibility.json", make_eligible)
    res = verify_bundle(root)
    problems = [p for f, p in res.problems if f == "data/eligibility.json"]
    assert any("t90_pct_max = 10.0, the protocol's is 2.0" in p for p in problems), problems
    assert any("nocturnal_spo2 is met but the nights recomputed with the protocol's definitions give" in p for p in problems)

    root = _copy(site, "min_h")

    def longer_minimum(doc):
        doc["report"]["definitions"]["min_analysed_h"] = 9.0

    _edit_json(root, f"data/night_{sid}.json", longer_minimum)
    assert any("min_analysed_h = 9.0" in p for _, p in verify_bundle(root).problems)

    root = _copy(site, "decision_only")
    _edit_json(root, "data/eligibility.json", lambda doc: doc.__setitem__("decision", "eligible"))
    assert any("decision is 'eligible' but its criteria give" in p for _, p in verify_bundle(root).problems)


def _odm_schema():
    import importlib.resources

    import xmlschema

    return xmlschema.XMLSchema(str(importlib.resources.files("odmlib") / "schemas/odm/1.3.2/ODM1-3-2.xsd"))


def test_odm_export_validates_against_the_odm_1_3_2_schema(site, tmp_path):
    import xml.etree.ElementTree as ET

    from collector.export.odm import NS

    r = _cli(site["db"], "export", SUBJECT, "--format", "odm", "--out", str(tmp_path), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    odm_bytes = Path(out["odm"]).read_bytes()
    _odm_schema().validate(io.BytesIO(odm_bytes))  # raises with the first violation
    for form in BIRTH_FORMS + [ADDRESS]:
        assert form.encode() not in odm_bytes
    ns = {"o": NS}
    root = ET.fromstring(odm_bytes)
    subj = root.findall("o:ClinicalData/o:SubjectData", ns)
    assert [s.get("SubjectKey") for s in subj] == [SUBJECT]
    items = {i.get("ItemOID"): i for i in subj[0].iter(f"{{{NS}}}ItemData")}
    night = json.loads((site["folder"] / f"data/night_{site['session']}.json").read_text())["report"]
    assert float(items["IT.T90"].get("Value")) == night["t90_pct"]
    assert items["IT.T90"].find("o:MeasurementUnitRef", ns).get("MeasurementUnitOID") == "MU.pct"
    assert float(items["IT.FVC"].get("Value")) == 3.2 and items["IT.FVC_GRADE"].get("Value") == "A"
    assert items["IT.FVC"].find("o:AuditRecord/o:SourceID", ns).text.endswith(f"spirometry_{site['spiro']}.json; GLI-Global-2022 collector " + __import__("collector").__version__)
    groups = subj[0].findall(".//o:ItemGroupData", ns)
    assert {(g.get("ItemGroupOID"), g.get("ItemGroupRepeatKey")) for g in groups} == {
        ("IG.OXIMETRY", str(site["session"])), ("IG.SPIROMETRY", str(site["spiro"])), ("IG.ELIGIBILITY", None)}
    audit_rows = pd.read_csv(site["folder"] / "data/audit.csv")
    records = root.findall("o:ClinicalData/o:AuditRecords/o:AuditRecord", ns)
    assert len(records) >= len(audit_rows) > 0  # the ODM export's own audit row came after the bundle
    assert records[0].find("o:SourceID", ns).text == f"audit {audit_rows['id'][0]} {audit_rows['row_hash'][0]}"
    # results.csv: long format, UCUM units, the method and its version on every row
    res = pd.read_csv(out["results"], dtype=str, keep_default_na=False)
    assert list(res.columns[:5]) == ["site_uuid", "site", "subject", "visit", "repeat"]
    t90 = res[res["test"] == "t90_pct"].iloc[0]
    assert (t90["unit"], t90["visit"], float(t90["value"])) == ("%", "SE.SCREENING", night["t90_pct"])
    assert t90["method"] == night["definitions"]["t90"] and t90["method_version"].startswith("collector ")
    assert set(res["unit"]) <= {"%", "L", "/h", "a", "h", "1", ""}
    assert len(res) == len(items)


def test_odm_signature_hook_writes_valid_signatures(site):
    from collector.config import defaults
    from collector.export.bundle import build_subject_bag
    from collector.export.odm import Signature, odm_document

    cfg = {**defaults(), "site": {**defaults()["site"], "name": "Test Hospital 1", "timezone": "Asia/Shanghai"}}
    files = build_subject_bag(open_db(site["db"]).conn, SUBJECT, config=cfg, by="tester", now=T0 + 9000)[1]
    sig = Signature(subject=SUBJECT, user="dr-li", meaning="I reviewed the screening data", legal_reason="investigator review",
                    at_utc="2025-12-30T08:00:00.000Z")
    doc = odm_document([files], cfg["export"]["odm"], file_oid="ODM.T", created_utc="2025-12-30T09:00:00.000Z",
                       software="collector 0", exported_by="tester", signatures=[sig])
    _odm_schema().validate(io.BytesIO(doc))
    assert b"<Signature>" in doc and b'SignatureDef OID="SD.1"' in doc


def _squash(text: str) -> str:
    return "".join(text.split())


def test_report_pdf_has_full_reasons_local_times_page_numbers_hash_and_vector_nights(site):
    import pypdf

    root = site["folder"]
    reader = pypdf.PdfReader(root / "data/report.pdf")
    pages = [p.extract_text() for p in reader.pages]
    payload_hash = bag.parse_info((root / "bag-info.txt").read_bytes())["Payload-SHA256-Without-Report"][0]
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in (root / "data").iterdir() if p.name not in ("report.pdf", "signatures.json")}
    assert payload_hash == bag.sha256(bag.manifest_text(files))
    assert len(pages) == 2  # the summary, then the one night on its own landscape page
    for k, text in enumerate(pages, 1):
        assert f"page {k} of {len(pages)}" in text and payload_hash in _squash(text)
    assert all(not p.images for p in reader.pages), "night pictures are vector drawings, not embedded images"
    assert reader.pages[1].mediabox.width > reader.pages[1].mediabox.height
    summary = pages[0]
    assert "…" not in summary and "(UTC+08:00)" in summary and "CST" in summary
    elig = json.loads((root / "data/eligibility.json").read_text())
    for c in elig["criteria"]:
        assert _squash(c["reason"]) in _squash(summary), c["id"]
    night = json.loads((root / f"data/night_{site['session']}.json").read_text())
    from collector.export.pdf import local_time

    assert local_time(night["session"]["started_utc"], "Asia/Shanghai")[:10] in summary
    assert "UTC+08:00" in pages[1]  # the night's time axis is in the site's zone too


def test_long_reasons_flow_over_pages_in_full():
    import pypdf

    from collector.export.pdf import summary_pdf

    reason = "the value recorded on the case report form differs from the device printout " * 8
    crit = [{"id": f"criterion_{k}", "state": "needs_review", "reason": f"{k}: {reason}"} for k in range(20)]
    data = summary_pdf(pseudonym="SCR-0001", site="Test Hospital 1", site_uuid="00000000-0000-4000-8000-000000000000",
                       timezone="Europe/Berlin", export_utc="2025-07-01T10:00:00.000Z", software="collector 0",
                       age_years=50, eligibility={"decision": "incomplete", "summary": [reason], "criteria": crit},
                       nights=[], spirometry=[], payload_hash="ab" * 32)
    reader = pypdf.PdfReader(io.BytesIO(data))
    text = "".join(p.extract_text() for p in reader.pages)
    assert len(reader.pages) > 3
    for k in range(20):
        assert _squash(f"{k}: {reason}") in _squash(text)
    assert _squash("2025-07-01 12:00 CEST (UTC+02:00)") in _squash(text)  # the line may wrap inside it
    assert all(f"page {k} of {len(reader.pages)}" in p.extract_text() for k, p in enumerate(reader.pages, 1))

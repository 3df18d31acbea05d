"""A whole borderline night (10 h, 300 gaps) resolved by an investigator, exported signed, verified.

The night is stored straight into the store (samples, gaps, a finalised report), as in
test_export_long_nights.py: what is tested is the review, the signatures and verify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from collector.config import defaults
from collector.oximetry import store as oximetry_store
from collector.storage import repo
from collector.storage.db import open_db, transaction
from conftest import T0, TEST_PASSWORD, invoke

SUBJECT = "SCR-0778"
NIGHT_S = 10 * 3600
N_GAPS = 300


def _borderline_night(conn, start: float) -> int:
    """1.5 % of the samples at 89 and 1.0 % at exactly 90: T90 (< 90) within 2 %, the <= 90 variant above it."""
    rng = np.random.default_rng(7)
    t = (start * 1000 + np.arange(NIGHT_S) * 1000 + rng.integers(-40, 40, NIGHT_S)).astype(np.int64)
    keep = np.ones(NIGHT_S, dtype=bool)
    gaps = []
    for s in np.sort(rng.choice(np.arange(60, NIGHT_S - 300, 110), N_GAPS, replace=False)):
        n = int(rng.integers(3, 40))
        keep[s:s + n] = False
        gaps.append((int(t[s - 1]) + 500, int(t[s + n]) - 500))
    t = t[keep]
    spo2 = np.full(t.size, 95.0)
    low = rng.permutation(t.size)
    spo2[low[: int(0.015 * t.size)]] = 89.0
    spo2[low[int(0.015 * t.size): int(0.025 * t.size)]] = 90.0
    with transaction(conn):
        sid = repo.add_recorded_session(conn, subject_id=SUBJECT, kind="night", origin="simulated", started_at=start,
                                        stopped_at=start + NIGHT_S, by="tester", settings={})
        rows = [(sid, int(t[i]), None, float(spo2[i]), 62.0, None, 1, 1, 0, None, None) for i in range(t.size)]
        oximetry_store.insert_samples(conn, rows, at=start + NIGHT_S)
        for a, b in gaps:
            repo.add_gap(conn, sid, start_ms=a, end_ms=b, cause="device_disconnected")
        oximetry_store.finalise(conn, sid, defaults(), at=start + NIGHT_S, actor="tester", reason="night ended")
    return sid


def test_a_borderline_whole_night_is_resolved_signed_exported_and_verified(tmp_path: Path) -> None:
    db = tmp_path / "site.sqlite"
    cfg = tmp_path / "site.toml"
    cfg.write_text('[site]\nname = "Test Hospital 1"\n')
    assert invoke(db, "subject", "add", SUBJECT, operator="dr.a").exit_code == 0
    conn = open_db(db).conn
    sid = _borderline_night(conn, T0)
    conn.close()
    assert invoke(db, "criteria", "set", SUBJECT, "cooperation", "no", operator="dr.a").exit_code == 0  # decided: ineligible
    for who, name in (("dr.a", "Li Wei"), ("dm.x", "Zhang Min")):
        if who == "dm.x":
            invoke(db, "whoami", operator=who)  # makes the operator
        assert invoke(db, "user", "full-name", who, name, operator="adm").exit_code == 0

    items = json.loads(invoke(db, "review", "list", SUBJECT, "--json").output)
    (night,) = [i for i in items if i["criterion"] == "nocturnal_spo2"]
    assert night["status"] == "open" and "borderline" in night["reason"] and f"session:{sid}" in json.dumps(night["evidence"])
    assert night["evidence"]["value"]["nights"][0]["borderline"] is True
    (v,) = night["variants"]
    assert v["t90_pct"] <= 2.0 < v["t90_pct_inclusive"] and v["borderline"]
    assert "<= 90 %" in invoke(db, "review", "list", SUBJECT).output

    r = invoke(db, "review", "resolve", SUBJECT, "nocturnal_spo2", "--decision", "met", "--password-stdin",
               "--reason", "primary T90 within 2 %; only the <= 90 variant is above", operator="dr.a", input=TEST_PASSWORD + "\n")
    assert r.exit_code == 0, r.output
    assert invoke(db, "sign", SUBJECT, "--meaning", "approved", "--password-stdin", operator="dr.a",
                  input=TEST_PASSWORD + "\n", config=cfg).exit_code == 0
    r = invoke(db, "export", SUBJECT, "--out", str(tmp_path / "out"), "--sign", "--password-stdin", "--json",
               operator="dm.x", input=TEST_PASSWORD + "\n", config=cfg)
    assert r.exit_code == 0, r.output
    bundle = Path(json.loads(r.output)[0]["path"])
    elig = json.loads((bundle / "data/eligibility.json").read_text())
    crit = next(c for c in elig["criteria"] if c["id"] == "nocturnal_spo2")
    assert crit["state"] == "met" and crit["review"]["status"] == "resolved" and crit["review"]["resolved_by"] == "dr.a"

    r = invoke(db, "verify", str(bundle), "--json")
    v = json.loads(r.output)
    assert r.exit_code == 0 and v["ok"], v["problems"]
    assert [(s["record_type"], s["valid"]) for s in v["signatures"]] == [
        ("review_resolution", True), ("eligibility_decision", True), ("export", True)]

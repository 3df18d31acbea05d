"""Stored samples and reports under the audit chain: edits, deletions and truncations are caught.

A whole simulated night through the real daemon, then the file is changed behind SQLite's back
(triggers dropped first, as an attacker with the file would) and ``collector verify-audit`` runs.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from simulators.scenario import parse_scenario
from tests.conftest import invoke, run_night

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def night_db(tmp_path: Path) -> Path:
    db = tmp_path / "collector.sqlite"
    sc = parse_scenario({"device": {"protocol": "plx", "address": "SIM-SEAL-01"}, "night": {"duration_s": 2 * 3600, "seed": 9},
                         "disconnects": [{"at_s": 1800, "duration_s": 60}]})
    asyncio.run(run_night(db, [sc]))
    return db


def verify(db: Path, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["--db", str(db), "verify-audit", *args])
    return r.exit_code, r.output


def tamper(db: Path, *sql: str) -> None:
    conn = sqlite3.connect(db)
    for name in ("spo2_samples_no_update", "spo2_samples_no_delete", "sample_seals_no_delete", "audit_no_delete",
                 "night_reports_no_update"):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_an_untouched_night_verifies_with_every_sample_sealed(night_db: Path) -> None:
    code, out = verify(night_db)
    n = sqlite3.connect(night_db).execute("SELECT COUNT(*) FROM spo2_samples").fetchone()[0]
    assert code == 0 and f"{n} samples in" in out and "intact" in out, out


def test_an_edited_sample_is_caught(night_db: Path) -> None:
    tamper(night_db, "UPDATE spo2_samples SET spo2_pct = spo2_pct + 5 WHERE rowid = (SELECT MIN(rowid) + 100 FROM spo2_samples)")
    code, out = verify(night_db)
    assert code == 8 and "were edited, added or deleted" in out, out


def test_deleted_samples_are_caught(night_db: Path) -> None:
    tamper(night_db, "DELETE FROM spo2_samples WHERE rowid IN (SELECT rowid FROM spo2_samples ORDER BY rowid DESC LIMIT 100)")
    assert verify(night_db)[0] == 8


def test_a_truncated_tail_of_samples_and_seals_is_caught_by_the_anchor_in_the_audit_chain(night_db: Path) -> None:
    conn = sqlite3.connect(night_db)
    n = conn.execute("SELECT COUNT(*) FROM sample_seals").fetchone()[0]
    assert n >= 2
    cut = conn.execute("SELECT first_rowid FROM sample_seals ORDER BY id DESC LIMIT 1 OFFSET ?", (n // 2,)).fetchone()[0]
    conn.close()
    tamper(night_db, f"DELETE FROM spo2_samples WHERE rowid >= {cut}", f"DELETE FROM sample_seals WHERE last_rowid >= {cut}")
    code, out = verify(night_db)
    assert code == 8 and "recorded in the audit trail is missing or differs" in out, out


def test_samples_and_reports_cannot_be_changed_through_sqlite() -> None:
    import tempfile

    from collector.storage.db import open_db

    with tempfile.TemporaryDirectory() as d:
        conn = open_db(Path(d) / "c.sqlite").conn
        for statement in ("UPDATE spo2_samples SET spo2_pct = 1", "DELETE FROM spo2_samples", "UPDATE night_reports SET t90_pct = 0",
                          "DELETE FROM night_reports", "DELETE FROM sample_seals"):
            conn.execute(statement)  # no rows yet: triggers fire per row, so insert one of each first
        conn.execute("INSERT INTO subjects (id, created_utc, created_by) VALUES ('SCR-0001', 'x', 't')")
        conn.execute("INSERT INTO sessions (subject_id, kind, state, origin, started_utc, started_by) VALUES ('SCR-0001', 'night', 'stopped', 'live', 'x', 't')")
        conn.execute("INSERT INTO spo2_samples (session_id, host_utc_ms, valid, pulse_valid, flags) VALUES (1, 0, 1, 1, 0)")
        conn.execute("INSERT INTO night_reports (session_id, computed_utc, definition, night_valid, borderline, report_json)"
                     " VALUES (1, 'x', 'd', 1, 0, '{}')")
        for statement in ("UPDATE spo2_samples SET spo2_pct = 1", "DELETE FROM spo2_samples", "UPDATE night_reports SET t90_pct = 0",
                          "DELETE FROM night_reports"):
            with pytest.raises(sqlite3.DatabaseError):
                conn.execute(statement)
        conn.close()


def test_a_truncated_audit_trail_is_caught_against_the_head_an_export_recorded(night_db: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[site]\nname = "Test Hospital 1"\n', encoding="utf-8")
    r = invoke(night_db, "export", "SCR-0001", "--out", str(tmp_path / "out"), "--json", config=site)
    assert r.exit_code == 0, r.output
    info = (next((tmp_path / "out").glob("*")) / "bag-info.txt").read_text()
    head = next(line.split(": ", 1)[1] for line in info.splitlines() if line.startswith("Audit-Chain-Head"))
    assert verify(night_db, "--expect-head", head)[0] == 0
    last = int(head.split()[0])
    tamper(night_db, f"DELETE FROM audit WHERE id >= {last - 2}")
    assert verify(night_db)[0] == 0  # the chain alone cannot see a cut tail ...
    code, out = verify(night_db, "--expect-head", head)
    assert code == 8 and "truncated or rewritten" in out  # ... the recorded head can

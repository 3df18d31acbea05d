"""The audit trail's hash chain catches rows edited, deleted or inserted behind SQLite's back."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.storage import audit
from conftest import invoke


def cli(db: Path, *args: str):
    return invoke(db, *args, operator="nurse.a")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database with a few real audit rows, written through the CLI."""
    path = tmp_path / "a.sqlite"
    for args in (
        ["subject", "add", "SCR-0001"],                                                  # 1 subject_created
        ["criteria", "set", "SCR-0001", "height_cm", "172"],                             # 2 recorded, 3 eligibility
        ["criteria", "set", "SCR-0001", "weight_kg", "66"],                              # 4 recorded
        ["criteria", "set", "SCR-0001", "height_cm", "171", "--reason", "remeasured"],   # 5 corrected
        ["criteria", "set", "SCR-0001", "cooperation", "yes"],                           # 6 recorded, 7 eligibility
    ):
        r = cli(path, *args)
        assert r.exit_code == 0, r.output
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, for byte edits
    raw.close()
    return path


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


def actions(db: Path) -> list[str]:
    c = raw(db)
    try:
        return [r[0] for r in c.execute("SELECT action FROM audit ORDER BY id")]
    finally:
        c.close()


def broken_at(db: Path) -> tuple[int, str]:
    r = cli(db, "verify-audit")
    assert r.exit_code != 0, r.output
    check = json.loads(cli(db, "verify-audit", "--json").output)
    assert not check["ok"]
    assert f"BROKEN at row {check['first_bad_id']}" in r.stderr
    return check["first_bad_id"], check["problem"]


def test_intact_chain(db: Path) -> None:
    assert actions(db) == ["subject_created", "criterion_recorded", "eligibility_changed", "criterion_recorded",
                           "criterion_corrected", "criterion_recorded", "eligibility_changed"]
    r = cli(db, "verify-audit")
    assert r.exit_code == 0 and "intact: 7 rows" in r.output


def test_triggers_refuse_update_and_delete(db: Path) -> None:
    c = raw(db)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            c.execute("UPDATE audit SET reason = 'x' WHERE id = 2")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            c.execute("DELETE FROM audit WHERE id = 2")
    finally:
        c.close()
    assert cli(db, "verify-audit").exit_code == 0


def test_edited_row_found_by_sql_with_triggers_dropped(db: Path) -> None:
    c = raw(db)
    c.execute("DROP TRIGGER audit_no_update")
    c.execute("UPDATE audit SET reason = 'measured again' WHERE id = 5")
    c.close()
    assert broken_at(db) == (5, "content does not match its hash (row edited)")


def test_edited_row_found_after_byte_edit_of_the_file(db: Path) -> None:
    data = db.read_bytes()
    needle = b'"value":172.0'  # only in the audit rows' JSON (criteria_facts stores 172.0 bare)
    assert data.count(needle) == 2  # recorded (row 2) and the old value of the correction (row 5)
    # Same length, so SQLite reads the page as it is: no checksum would notice.
    db.write_bytes(data.replace(needle, b'"value":182.0'))
    c = raw(db)
    values = [r[0] for r in c.execute("SELECT new_value FROM audit WHERE action = 'criterion_recorded' ORDER BY id")]
    c.close()
    assert '"value":182.0' in values[0]  # the edit really is in the table now
    assert broken_at(db)[0] == 2


def test_deleted_row_found(db: Path) -> None:
    c = raw(db)
    c.execute("DROP TRIGGER audit_no_delete")
    c.execute("DELETE FROM audit WHERE id = 4")
    c.close()
    bad, problem = broken_at(db)
    assert bad == 5 and "inserted or deleted" in problem


def test_deleted_first_row_found(db: Path) -> None:
    c = raw(db)
    c.execute("DROP TRIGGER audit_no_delete")
    c.execute("DELETE FROM audit WHERE id = 1")
    c.close()
    assert broken_at(db)[0] == 2  # row 2 no longer follows the genesis hash


def _recreate_with_gaps(c: sqlite3.Connection) -> None:
    """Rebuild the table behind the triggers' back with room between ids."""
    c.execute("ALTER TABLE audit RENAME TO audit_old")
    c.execute(
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, at_utc TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,"
        " subject_id TEXT, session_id INTEGER, old_value TEXT, new_value TEXT, reason TEXT, prev_hash TEXT NOT NULL,"
        " row_hash TEXT NOT NULL)")
    c.execute("INSERT INTO audit SELECT id * 10, at_utc, actor, action, subject_id, session_id, old_value, new_value, reason,"
              " prev_hash, row_hash FROM audit_old")
    c.execute("DROP TABLE audit_old")  # its triggers go with it


def test_inserted_row_with_a_correct_looking_hash_found(db: Path) -> None:
    c = raw(db)
    _recreate_with_gaps(c)
    prev = c.execute("SELECT row_hash FROM audit WHERE id = 30").fetchone()[0]
    forged = {"at_utc": "2025-01-01T00:00:00.000Z", "actor": "nurse.a", "action": "criterion_recorded",
              "subject_id": "SCR-0001", "session_id": None, "old_value": None,
              "new_value": '{"fact":"nutrition_good","row":99,"source":"staff","value":"yes"}', "reason": None}
    c.execute("INSERT INTO audit (id, at_utc, actor, action, subject_id, session_id, old_value, new_value, reason, prev_hash, row_hash)"
              " VALUES (35, :at_utc, :actor, :action, :subject_id, :session_id, :old_value, :new_value, :reason, :prev, :hash)",
              {**forged, "prev": prev, "hash": audit.row_hash(prev, forged)})
    c.close()
    bad, problem = broken_at(db)
    assert bad == 40 and "inserted or deleted" in problem  # the row after the forgery no longer links


def test_inserted_row_with_a_made_up_hash_found(db: Path) -> None:
    c = raw(db)
    _recreate_with_gaps(c)
    c.execute("INSERT INTO audit (id, at_utc, actor, action, prev_hash, row_hash) VALUES (15, '2025-01-01T00:00:00.000Z',"
              " 'x', 'subject_created', ?, ?)", ("f" * 64, "e" * 64))
    c.close()
    assert broken_at(db)[0] == 15


def test_appended_row_without_the_library_found(db: Path) -> None:
    c = raw(db)
    last = c.execute("SELECT row_hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()[0]
    c.execute("INSERT INTO audit (at_utc, actor, action, prev_hash, row_hash) VALUES ('2025-01-01T00:00:00.000Z',"
              " 'x', 'session_stopped', ?, ?)", (last, "0" * 64))
    c.close()
    assert broken_at(db)[0] == 8

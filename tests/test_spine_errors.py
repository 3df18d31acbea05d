"""Bad input: one line saying what is wrong and what to do, a non-zero exit, nothing recorded."""

from __future__ import annotations

import sqlite3

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.errors import InvalidInput
from simulators.scenario import load_scenario
from conftest import invoke, operator_env


def run(*args):
    if args[:1] == ("--db",) and args[2:3] in (("subject",), ("session",)):
        return invoke(args[1], *args[2:])  # logged in as an operator who may add subjects
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("bad", ["Jane Doe", "ab", "SCR", "x" * 40, "SCR 0001", ""])
def test_invalid_subject_ids_are_refused(db_path, bad):
    res = run("--db", str(db_path), "subject", "add", bad)
    assert res.exit_code == 2
    assert res.output.startswith("error: invalid subject ID") and res.output.count("\n") == 1
    assert sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM subjects").fetchone()[0] == 0


def test_subject_added_twice(db_path):
    assert run("--db", str(db_path), "subject", "add", "SCR-0001").exit_code == 0
    res = run("--db", str(db_path), "subject", "add", "SCR-0001")
    assert res.exit_code == 5 and "already exists" in res.output


def test_unknown_session(db_path):
    res = run("--db", str(db_path), "session", "samples", "99")
    assert res.exit_code == 4 and "unknown session 99" in res.output


def test_database_path_that_cannot_be_opened(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run("--db", str(blocker / "sub" / "db.sqlite"), "subject", "list")
    assert res.exit_code == 3 and res.output.startswith("error: cannot open database") and "--db" in res.output


def test_a_file_that_is_not_a_database(tmp_path):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("this is not sqlite" * 100)
    res = run("--db", str(bad), "subject", "list")
    assert res.exit_code == 3 and "--db" in res.output


def test_corrupt_scenario_names_the_problem(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[device]\nprotocol = 'plx'\n[night]\nduration_s = 'long'\n")
    with pytest.raises(InvalidInput, match="duration_s"):
        load_scenario(path)
    path.write_text("[device\n")
    with pytest.raises(InvalidInput, match="line 1"):
        load_scenario(path)
    path.write_text("[device]\nprotocol = 'zigbee'\n")
    with pytest.raises(InvalidInput, match="unknown protocol"):
        load_scenario(path)


def test_night_without_oximeter(db_path):
    res = run("--db", str(db_path), "session", "start", "--subject", "SCR-0001", "--kind", "night")
    assert res.exit_code == 2 and "--oximeter" in res.output


def test_bad_speed(db_path):
    res = run("--db", str(db_path), "demo", "--speed", "fast")
    assert res.exit_code == 2 and "--speed" in res.output


def test_a_write_on_a_read_only_database_is_one_line_not_a_traceback(tmp_path):
    """The file made immutable (chattr +i: read-only even for root), then a CLI write."""
    import shutil
    import subprocess

    db = tmp_path / "collector.sqlite"
    assert invoke(db, "subject", "add", "SCR-0001").exit_code == 0
    env = operator_env(db, "tester", "technician")  # logged in before the file becomes read-only
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("cannot make the file immutable here (chattr)")
    try:
        # A process of its own: SQLite shares one open file per inode within a process, so an earlier
        # connection of this test process would still write.
        import os
        import sys

        r = subprocess.run([sys.executable, "-m", "collector", "--db", str(db), "subject", "add", "SCR-0002"],
                           capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    out = r.stdout + r.stderr
    assert r.returncode == 3 and out.count("\n") == 1 and "Traceback" not in out, out
    assert "read-only" in out and "nothing was changed" in out

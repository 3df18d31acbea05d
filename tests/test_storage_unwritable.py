"""An unwritable -shm / -wal is one line and exit 3 before SQLite maps it, never SIGBUS (issue 16 item 6).

We run as root in CI, where file modes do not stop a write: the file system itself is made read-only
(a small tmpfs remounted ro), or the -shm file immutable (chattr +i).  Without root, chmod does it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from collector.errors import StorageError
from collector.storage import writable
from collector.storage.db import connect

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _leave_sidecars(db: Path) -> None:
    """A process that wrote and died without closing: -wal and -shm stay behind, as after kill -9."""
    code = textwrap.dedent(f"""
        import os, sqlite3
        c = sqlite3.connect({str(db)!r}, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE IF NOT EXISTS t (x)")
        c.execute("INSERT INTO t VALUES (1)")
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    assert db.with_name(db.name + "-shm").exists() and db.with_name(db.name + "-wal").exists()


def _collector(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collector", "--db", str(db), *args], capture_output=True, text=True, timeout=60)


def _one_line(r: subprocess.CompletedProcess, *words: str) -> None:
    out = r.stdout + r.stderr
    assert r.returncode == 3, (r.returncode, out)
    assert out.count("\n") == 1 and "Traceback" not in out, out
    for w in words:
        assert w in out, out


@pytest.fixture
def ro_mount(tmp_path: Path):
    """A tmpfs holding a database with -wal/-shm left behind, then remounted read-only (root only)."""
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        db = mnt / "collector.sqlite"
        _leave_sidecars(db)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield db
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_check_names_a_read_only_file_system(ro_mount):
    why = writable.problem(ro_mount)
    assert why is not None and "read-only file system" in why and str(ro_mount) in why
    with pytest.raises(StorageError, match="read-only file system"):
        connect(ro_mount)


def test_the_daemon_on_a_read_only_database_exits_3_with_one_line_not_sigbus(ro_mount):
    _one_line(_collector(ro_mount, "run", "--port", "0"), "read-only file system", "nothing was changed")
    _one_line(_collector(ro_mount, "subject", "list"), "read-only file system")


def _unwritable(path: Path) -> bool:
    if ROOT:
        return shutil.which("chattr") is not None and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    path.chmod(0o444)
    return True


def _writable_again(path: Path) -> None:
    if ROOT:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    else:
        path.chmod(0o600)


@pytest.mark.parametrize("sidecar", ["-shm", "-wal"])
def test_an_unwritable_sidecar_is_named_and_the_daemon_exits_3(tmp_path, sidecar):
    db = tmp_path / "collector.sqlite"
    _leave_sidecars(db)
    side = db.with_name(db.name + sidecar)
    if not _unwritable(side):
        pytest.skip("cannot make the file unwritable here (chattr)")
    try:
        why = writable.problem(db)
        assert why is not None and side.name in why and "read-only" in why
        _one_line(_collector(db, "run", "--port", "0"), side.name, "read-only")
    finally:
        _writable_again(side)
    assert writable.problem(db) is None


def test_a_sidecar_that_is_not_a_file_is_refused(tmp_path):
    db = tmp_path / "collector.sqlite"
    _leave_sidecars(db)
    shm = db.with_name(db.name + "-shm")
    shm.unlink()
    shm.mkdir()
    assert "not a regular file" in (writable.problem(db) or "")


def test_a_healthy_or_new_database_passes(tmp_path):
    assert writable.problem(tmp_path / "new" / "collector.sqlite") is None
    db = tmp_path / "collector.sqlite"
    _leave_sidecars(db)
    assert writable.problem(db) is None

"""Spirometry through a GDT exchange folder, with the real daemon, SQLite and files on disk.

The simulated device software (simulators.spirometer.GdtFolderDevice) reads the collector's
request and writes result files in three vendors' shapes.  Polls are driven explicitly (the
background poll interval is an hour), so nothing waits in real time; the kill -9 test runs the
real daemon process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from collector.config import defaults
from collector.eligibility.store import record_fact
from collector.errors import Conflict, InvalidInput
from collector.features import build_daemon
from collector.storage.db import open_db
from drivers.spirometry.gdt import parse_request
from simulators.spirometer import SCENARIO_DIR, GdtFolderDevice, load_scenario
from simulators.vendor_shapes import FAKE_NAME
from conftest import operator_env, wait_until

pytestmark = pytest.mark.timeout(90)
ALS = SCENARIO_DIR / "spirometry_als_session.toml"
SUBJECT = "SCR-0101"
FACTS = {"sex": "male", "height_cm": "178", "weight_kg": "74", "birth_date": "1964-05-02", "screening_date": "2025-03-10"}


def folder_config(root: Path, **spiro: Any) -> dict[str, Any]:
    """Fast polls driven by the test; exchange folders allowed under root (the test's tmp_path)."""
    cfg = defaults()
    cfg["storage"]["flush_interval_s"] = 0.05
    cfg["spirometry"].update(gdt_poll_s=3600.0, gdt_settle_s=0.0, gdt_dir_roots=[str(root)], **spiro)
    return cfg


def record_facts(db: Path, facts: dict[str, str]) -> None:
    fdb = open_db(db)
    for name, value in facts.items():
        record_fact(fdb, SUBJECT, name, value, by="nurse", now_utc=1_741_600_000.0)
    fdb.conn.close()


class Folder:
    def __init__(self, tmp_path: Path, **spiro: Any) -> None:
        self.db = tmp_path / "collector.sqlite"
        self.dir = tmp_path / "gdt"
        self.dir.mkdir()
        self.daemon = build_daemon(self.db, config=folder_config(tmp_path, **spiro))

    @property
    def svc(self) -> Any:
        return self.daemon.services["spirometry"]

    def rows(self, sql: str, *params: Any) -> list[tuple]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    async def poll_until_moved(self, sid: int, polls: int = 4) -> int:
        rec = self.svc.recorders[sid]
        moved = 0
        for _ in range(polls):
            moved += await rec.poll()
        return moved


@asynccontextmanager
async def folder(tmp_path: Path, facts: dict[str, str] | None = FACTS, **spiro: Any) -> AsyncIterator[Folder]:
    f = Folder(tmp_path, **spiro)
    try:
        await f.daemon.add_subject(SUBJECT)
        if facts:
            record_facts(f.db, facts)
        yield f
    finally:
        await f.daemon.shutdown()


def test_request_record_names_the_pseudonym_only_and_each_shape_is_taken_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with folder(tmp_path) as f:
            info = await f.svc.start(SUBJECT, "", gdt_dir=str(f.dir), model="sim-gdt", by="nurse")
            sid = info["id"]
            assert (f.dir / "done").is_dir() and (f.dir / "rejected").is_dir()
            dev = GdtFolderDevice(f.dir, load_scenario(ALS, "gdt"), "trials")
            raw = dev.request_path.read_bytes()
            req = parse_request(raw)
            assert req["8000"] == "6302" and req["3000"] == SUBJECT and req["3101"] == SUBJECT
            assert req["9218"] == "02.10" and req["8315"] == "SPIR" and req["8316"] == "ALSC"
            assert req["3110"] == "1" and req["3622"] == "178" and req["3623"] == "74"
            assert "3103" not in req and b"1964" not in raw and b"02051964" not in raw  # no birth date by default
            assert int(req["8100"]) == len(raw)
            settings = json.loads(f.rows("SELECT settings_json FROM sessions WHERE id = ?", sid)[0][0])
            assert settings["route"] == "gdt-folder" and "3103" not in settings["gdt_request"]["fields"]

            path = dev.respond()
            assert not dev.request_path.exists()  # the device consumed the request
            assert await f.poll_until_moved(sid) == 1
            assert not path.exists() and (f.dir / "done" / path.name).exists()
            assert f.rows("SELECT COUNT(*) FROM spirometry_manoeuvres WHERE session_id = ?", sid)[0][0] == 5
            result = json.loads(f.rows("SELECT result_json FROM spirometry_results WHERE session_id = ? ORDER BY id DESC", sid)[0][0])
            assert result["fvc_basis"] == "manoeuvres" and result["attempts"] == 5 and result["fvc_l"] is not None
            files = f.rows("SELECT route, format, status, session_id FROM spirometry_files")
            assert files == [("gdt-folder", "gdt", "accepted", sid)]
            # The same bytes dropped again (a device resending) are moved without being stored twice.
            (f.dir / "ALSCSPIR.005").write_bytes((f.dir / "done" / path.name).read_bytes())
            assert await f.poll_until_moved(sid) == 1
            assert f.rows("SELECT COUNT(*) FROM spirometry_manoeuvres WHERE session_id = ?", sid)[0][0] == 5
            assert (f.dir / "done" / "ALSCSPIR.005").exists()
            # No name, no street, no hospital number in any stored row.
            dump = "\n".join(str(r) for t in ("spirometry_manoeuvres", "spirometry_observations", "events", "audit", "spirometry_messages")
                             for r in f.rows(f"SELECT * FROM {t}"))
            assert FAKE_NAME[0] not in dump and "SIM-0001" not in dump

    asyncio.run(main())


@pytest.mark.parametrize("shape, basis", [("gdt-text", "device_summary"), ("gdt-best-test", "device_summary"),
                                          ("trials", "manoeuvres")])
def test_three_vendor_shapes_through_the_folder(tmp_path: Path, shape: str, basis: str) -> None:
    async def main() -> None:
        async with folder(tmp_path) as f:
            model = "gdt-best-test" if shape == "gdt-best-test" else "sim-gdt"
            sid = (await f.svc.start(SUBJECT, "", gdt_dir=str(f.dir), model=model, by="nurse"))["id"]
            dev = GdtFolderDevice(f.dir, load_scenario(ALS, "gdt"), shape)
            path = dev.respond()
            assert await f.poll_until_moved(sid) == 1
            assert (f.dir / "done" / path.name).exists()
            result = json.loads(f.rows("SELECT result_json FROM spirometry_results WHERE session_id = ? ORDER BY id DESC", sid)[0][0])
            assert result["fvc_basis"] == basis and result["fvc_l"] == (2.20 if basis == "device_summary" else result["fvc"]["reported_l"])
            if basis == "device_summary":
                assert result["grade_review"]  # quality unknown: needs review unless the site accepts summaries
            obs = f.rows("SELECT COUNT(*) FROM spirometry_observations WHERE session_id = ?", sid)[0][0]
            assert obs > 0

    asyncio.run(main())


def test_a_file_being_written_is_not_read_half(tmp_path: Path) -> None:
    async def main() -> None:
        async with folder(tmp_path) as f:
            sid = (await f.svc.start(SUBJECT, "", gdt_dir=str(f.dir), model="sim-gdt", by="nurse"))["id"]
            dev = GdtFolderDevice(f.dir, load_scenario(ALS, "gdt"), "trials")
            path, rest = dev.write_partial(SUBJECT, 0.4)
            # Size stands still between polls, but the record's 8100 length says more is coming.
            assert await f.poll_until_moved(sid, polls=5) == 0
            assert path.exists() and f.rows("SELECT COUNT(*) FROM spirometry_files")[0][0] == 0
            with open(path, "ab") as fh:
                fh.write(rest)
            assert await f.poll_until_moved(sid) == 1
            assert f.rows("SELECT status FROM spirometry_files") == [("accepted",)]

    asyncio.run(main())


def test_a_file_that_stays_short_is_refused_with_a_reason_file(tmp_path: Path) -> None:
    async def main() -> None:
        async with folder(tmp_path, gdt_incomplete_s=0.001) as f:
            sid = (await f.svc.start(SUBJECT, "", gdt_dir=str(f.dir), model="sim-gdt", by="nurse"))["id"]
            dev = GdtFolderDevice(f.dir, load_scenario(ALS, "gdt"), "trials")
            path, _ = dev.write_partial(SUBJECT, 0.5)
            rec = f.svc.recorders[sid]
            await rec.poll()
            await asyncio.sleep(0.01)  # past gdt_incomplete_s (1 ms) on the daemon's clock
            assert await f.poll_until_moved(sid) == 1
            reason = (f.dir / "rejected" / f"{path.name}.reason.txt").read_text()
            assert "cut short" in reason
            assert f.rows("SELECT status FROM spirometry_files") == [("rejected",)]
            assert f.rows("SELECT COUNT(*) FROM spirometry_manoeuvres")[0][0] == 0
            assert [k for (k,) in f.rows("SELECT kind FROM events WHERE session_id = ?", sid)] == ["spirometry_refused"]

    asyncio.run(main())


def test_another_patients_result_and_a_contradicting_sex_are_rejected(tmp_path: Path) -> None:
    async def main() -> None:
        async with folder(tmp_path) as f:
            sid = (await f.svc.start(SUBJECT, "", gdt_dir=str(f.dir), model="sim-gdt", by="nurse"))["id"]
            dev = GdtFolderDevice(f.dir, load_scenario(ALS, "gdt"), "trials")
            other = dev.respond("SCR-0999")
            assert await f.poll_until_moved(sid) == 1
            why = (f.dir / "rejected" / f"{other.name}.reason.txt").read_text()
            assert "patient number (3000)" in why and "SCR-0999" not in why
            # Right pseudonym, but the device holds a woman: the recorded facts say male.
            sc = load_scenario(ALS, "gdt")
            sc.subject = sc.subject.__class__("x", "female", "2", 178, 74, "1964-05-02") if sc.subject else None
            wrong = GdtFolderDevice(f.dir, sc, "trials").respond(SUBJECT)
            assert await f.poll_until_moved(sid) == 1
            why = (f.dir / "rejected" / f"{wrong.name}.1.reason.txt").read_text()  # the same name again: a new one
            assert "contradicts" in why and "sex" in why
            assert f.rows("SELECT COUNT(*) FROM spirometry_manoeuvres")[0][0] == 0
            assert sorted(s for (s,) in f.rows("SELECT status FROM spirometry_files")) == ["rejected", "rejected"]

    asyncio.run(main())


def test_folder_session_refusals_are_one_line(tmp_path: Path) -> None:
    async def main() -> None:
        async with folder(tmp_path) as f:
            with pytest.raises(InvalidInput, match="does not exist"):
                await f.svc.start(SUBJECT, "", gdt_dir=str(f.dir / "missing"), by="nurse")
            outside = tmp_path.parent / f"{tmp_path.name}-outside"
            outside.mkdir()
            with pytest.raises(InvalidInput, match="gdt_dir_roots"):
                await f.svc.start(SUBJECT, "", gdt_dir=str(outside), by="nurse")
            assert not any(outside.iterdir())  # nothing written outside the allowed folders
            with pytest.raises(InvalidInput, match="not both"):
                await f.svc.start(SUBJECT, "socket://127.0.0.1:1", gdt_dir=str(f.dir), by="nurse")
            with pytest.raises(InvalidInput, match="speaks hl7"):
                await f.svc.start(SUBJECT, "", gdt_dir=str(f.dir), model="sim-hl7", by="nurse")
            await f.svc.start(SUBJECT, "", gdt_dir=str(f.dir), by="nurse")
            await f.daemon.add_subject("SCR-0102")
            with pytest.raises(Conflict, match="already"):
                await f.svc.start("SCR-0102", "", gdt_dir=str(f.dir), by="nurse")
            assert f.rows("SELECT COUNT(*) FROM sessions")[0][0] == 1

    asyncio.run(main())


def test_site_setting_gdt_dir_and_gdt_3_request(tmp_path: Path) -> None:
    gdt = tmp_path / "gdt"

    async def main() -> None:
        async with folder(tmp_path, gdt_dir=str(gdt), gdt_version="03.00", gdt_request_birth_date=True) as f:
            info = await f.svc.start(SUBJECT, "", protocol="gdt", by="nurse")
            req = parse_request((gdt / "SPIRALSC.gdt").read_bytes())
            assert info["spirometry"]["link_state"] == "watching folder"
            assert req["9218"] == "03.00" and "8100" not in req and req["0103"] and req["3103"] == "02051964"

    asyncio.run(main())


def test_files_that_arrive_while_the_daemon_is_down_are_taken_after_resume(tmp_path: Path) -> None:
    async def main() -> None:
        async with folder(tmp_path) as f:
            sid = (await f.svc.start(SUBJECT, "", gdt_dir=str(f.dir), model="sim-gdt", by="nurse"))["id"]
        assert f.rows("SELECT state FROM sessions WHERE id = ?", sid) == [("interrupted",)]
        GdtFolderDevice(f.dir, load_scenario(ALS, "gdt"), "trials").respond(SUBJECT)
        again = build_daemon(f.db, config=folder_config(tmp_path))  # resuming needs no allow-list check: the session holds its folder
        try:
            assert await again.resume_open_sessions() == [sid]
            rec = again.services["spirometry"].recorders[sid]
            moved = 0
            for _ in range(3):
                moved += await rec.poll()
            assert moved == 1 and f.rows("SELECT COUNT(*) FROM spirometry_manoeuvres")[0][0] == 5
        finally:
            await again.shutdown()

    asyncio.run(main())


# -- the real daemon process, killed between pick-up and move ------------------------------------------------
def _collector(db: Path, cfg: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    from conftest import role_for

    proc = subprocess.run([sys.executable, "-m", "collector", "--db", str(db), "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **operator_env(db, "tester", role_for(args) or "admin")})
    if check and proc.returncode != 0:
        raise AssertionError(f"collector {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def _run_daemon(db: Path, cfg: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "collector", "--db", str(db), "--config", str(cfg), "run", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if "ready" not in line:
        raise AssertionError(f"daemon did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc


def test_kill_9_between_pick_up_and_move_processes_the_file_exactly_once(tmp_path: Path) -> None:
    db, gdt = tmp_path / "collector.sqlite", tmp_path / "gdt"
    gdt.mkdir()
    cfg = tmp_path / "site.toml"
    cfg.write_text(f"[spirometry]\ngdt_poll_s = 0.05\ngdt_settle_s = 0.0\ngdt_dir_roots = [{json.dumps(str(tmp_path))}]\n")
    _collector(db, cfg, "subject", "add", SUBJECT)
    for name, value in FACTS.items():
        _collector(db, cfg, "criteria", "set", SUBJECT, name, value)
    d = _run_daemon(db, cfg)
    try:
        sid = json.loads(_collector(db, cfg, "session", "start", "--subject", SUBJECT, "--kind", "spirometry", "--gdt-dir", str(gdt),
                                    "--model", "sim-gdt", "--json").stdout)["id"]
        # done/ replaced by a plain file: the rename after the commit fails, so the daemon is caught between the two.
        (gdt / "done").rmdir()
        (gdt / "done").write_text("in the way")
        path = GdtFolderDevice(gdt, load_scenario(ALS, "gdt"), "trials").respond()

        def stored() -> bool:
            conn = sqlite3.connect(db)
            try:
                return conn.execute("SELECT COUNT(*) FROM spirometry_files").fetchone()[0] == 1
            finally:
                conn.close()

        wait_until(stored, timeout=30, what="the file to be stored")
        assert path.exists(), "committed but not moved: the state the kill must hit"
        d.kill()  # SIGKILL between the commit and the rename
        d.wait(timeout=30)
    finally:
        if d.poll() is None:
            d.kill()
    (gdt / "done").unlink()
    d = _run_daemon(db, cfg)
    try:
        wait_until(lambda: (gdt / "done" / path.name).exists(), timeout=30, what="the file to be moved after the restart")
        assert not path.exists()
    finally:
        d.send_signal(signal.SIGTERM)
        d.wait(timeout=60)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM spirometry_files").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM spirometry_manoeuvres WHERE session_id = ?", (sid,)).fetchone()[0] == 5
        actions = [a for (a,) in conn.execute("SELECT action FROM audit WHERE session_id = ? ORDER BY id", (sid,))]
        assert actions.count("spirometry_file_processed") == 1
    finally:
        conn.close()


def test_a_backlog_of_result_files_is_taken_once_each(tmp_path: Path) -> None:
    """A weekend's backlog: 40 result files (200 trials) waiting when the session starts, plus a stray file."""
    from dataclasses import replace

    from drivers.spirometry.gdt import encode_gdt
    from drivers.spirometry.registry import get_model

    async def main() -> None:
        async with folder(tmp_path) as f:
            sc = load_scenario(ALS, "gdt")
            subject = replace(sc.subject, patient_id=SUBJECT) if sc.subject else None
            codes = get_model("sim-gdt").encoder_codes()
            for i in range(40):
                (f.dir / f"ALSCSPIR.{i:03d}").write_bytes(
                    encode_gdt(sc.manoeuvres, subject, codes, f"2025-03-10T09:{i:02d}:00", charset="3"))
            (f.dir / "notes.txt").write_text("not a GDT file")
            sid = (await f.svc.start(SUBJECT, "", gdt_dir=str(f.dir), model="sim-gdt", by="nurse"))["id"]
            assert await f.poll_until_moved(sid, polls=3) == 40
            assert len(list((f.dir / "done").iterdir())) == 40 and (f.dir / "notes.txt").exists()
            assert f.rows("SELECT COUNT(*), COUNT(DISTINCT sha256) FROM spirometry_files") == [(40, 40)]
            assert f.rows("SELECT COUNT(*) FROM spirometry_manoeuvres WHERE session_id = ?", sid) == [(200,)]
            assert f.rows("SELECT COUNT(*) FROM spirometry_results WHERE session_id = ?", sid) == [(40,)]
            assert await f.poll_until_moved(sid, polls=2) == 0

    asyncio.run(main())


def test_simulator_command_line_answers_a_request_in_a_folder(tmp_path: Path) -> None:
    from drivers.spirometry.gdt import encode_request
    from simulators.spirometer import main as sim_main

    (tmp_path / "SPIRALSC.gdt").write_bytes(encode_request(SUBJECT, receiver_id="SPIR", sender_id="ALSC"))
    assert sim_main(["--scenario", str(ALS), "--gdt-dir", str(tmp_path), "--shape", "gdt-best-test"]) == 0
    data = (tmp_path / "ALSCSPIR.gdt").read_bytes()
    assert b"Best Test" in data and SUBJECT.encode() in data and not (tmp_path / "SPIRALSC.gdt").exists()


def test_stopping_the_session_withdraws_an_unanswered_request(tmp_path: Path) -> None:
    async def main() -> None:
        async with folder(tmp_path) as f:
            sid = (await f.svc.start(SUBJECT, "", gdt_dir=str(f.dir), by="nurse"))["id"]
            request = f.dir / "SPIRALSC.gdt"
            assert request.exists()
            await f.daemon.stop_session(sid, by="nurse")
            assert not request.exists()  # no later test on the device runs under this subject's request
            assert f.rows("SELECT state FROM sessions WHERE id = ?", sid) == [("stopped",)]

    asyncio.run(main())

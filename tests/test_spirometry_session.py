"""Whole spirometry sessions through the real daemon: simulator (pty / socket://) -> serial transport -> codec
-> single writer -> SQLite, ATS/ERS quality and GLI % predicted recomputed after every message."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import httpx
import pytest
from click.testing import CliRunner

from collector.cli import main as cli_main
from collector.config import defaults
from collector.features import build_daemon
from collector.eligibility.store import record_fact
from collector.errors import Conflict, DeviceError, InvalidInput, NotFound
from collector.spirometry import gli
from collector.spirometry.store import decimal_age
from collector.storage import audit
from collector.storage.db import open_db
from simulators.spirometer import SCENARIO_DIR, PtyEndpoint, SpirometerSimulator, TcpEndpoint, load_scenario
from conftest import invoke, operator_env, operator_token

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0
ALS = SCENARIO_DIR / "spirometry_als_session.toml"
SHORT = SCENARIO_DIR / "spirometry_svc_short.toml"
POSIX = not sys.platform.startswith("win")
needs_pty = pytest.mark.skipif(not POSIX, reason="pseudo-terminals are POSIX only")
SUBJECT = "SCR-0101"
FACTS = {"sex": "male", "height_cm": "178", "birth_date": "1964-05-02", "screening_date": "2025-03-10"}
# The short scenario's simulated device holds this person (its subject block): a contradiction refuses messages.
SHORT_FACTS = {"sex": "female", "height_cm": "165.5", "birth_date": "1970-11-23", "screening_date": "2025-03-10"}
AGE = decimal_age(__import__("datetime").date(1964, 5, 2), __import__("datetime").date(2025, 3, 10))


def fast_config() -> dict[str, Any]:
    cfg = defaults()
    cfg["storage"]["flush_interval_s"] = 0.05
    cfg["spirometry"].update(backoff_initial_s=0.02, backoff_max_s=0.2, gdt_idle_s=0.5)
    return cfg


class Harness:
    """A daemon on a temp database with every notification queued for the test to await."""

    def __init__(self, db: Path, capture: Path | None = None) -> None:
        self.db = db
        self.daemon = build_daemon(db, config=fast_config(), capture_path=capture)
        self.results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.daemon.listeners.append(lambda kind, p: self.results.put_nowait(p) if kind == "spirometry_result" else None)

    @property
    def svc(self) -> Any:
        return self.daemon.services["spirometry"]

    async def next_result(self) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self.results.get(), WAIT)
        except asyncio.TimeoutError:
            raise AssertionError("no spirometry_result notification") from None

    def rows(self, sql: str, *params: Any) -> list[tuple]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


def record_facts(db: Path, subject: str, facts: dict[str, str]) -> None:
    fdb = open_db(db)
    for name, value in facts.items():
        record_fact(fdb, subject, name, value, by="nurse", now_utc=1_741_600_000.0)
    fdb.conn.close()


@asynccontextmanager
async def harness(tmp_path: Path, facts: dict[str, str] | None = FACTS, capture: Path | None = None) -> AsyncIterator[Harness]:
    h = Harness(tmp_path / "collector.sqlite", capture)
    try:
        await h.daemon.add_subject(SUBJECT)
        if facts:
            record_facts(h.db, SUBJECT, facts)
        yield h
    finally:
        await h.daemon.shutdown()


async def until(pred: Callable[[], Any], what: str) -> None:
    async def poll() -> None:
        while not pred():
            await asyncio.sleep(0.005)
    try:
        await asyncio.wait_for(poll(), WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def assert_als_result(result: dict[str, Any]) -> None:
    """The ALS scenario over HL7 (curves sent): blows 1, 2 and 4 acceptable for FVC, best 2.20 L, grade A."""
    assert result["valid"] is True and result["fvc_l"] == 2.20
    assert result["fvc"]["grade"] == "A" and result["fvc"]["reported_from_number"] == 1
    assert result["fvc"]["repeatability_diff_ml"] == 80
    status = {m["number"]: (m["fvc"]["status"], m["fev1"]["status"]) for m in result["manoeuvres"]}
    assert status == {1: ("acceptable", "acceptable"), 2: ("acceptable", "acceptable"), 3: ("usable", "acceptable"),
                      4: ("acceptable", "not_usable"), 5: ("not_usable", "not_usable")}
    reasons = {m["number"]: set(m["fvc"]["reasons"]) | set(m["fev1"]["reasons"]) for m in result["manoeuvres"]}
    assert reasons[3] == {"no_end_of_forced_expiration"} and reasons[4] == {"cough_first_second"}
    assert reasons[5] == {"bev_too_large"}
    assert [x["reason"] for x in result["not_assessed"]] == ["device summary (its own best values), not a blow"]
    expected = gli.predict("male", AGE, 178.0, fvc_l=2.20, fev1_l=1.86)
    p = result["prediction"]
    assert p["equation"] == "gli-global-2022" and p["ethnicity"] is None
    assert p["percent_predicted_fvc"] == pytest.approx(expected.fvc.percent_predicted, abs=1e-9)
    assert p["z_fvc"] == pytest.approx(expected.fvc.z, abs=1e-9)
    assert p["lln_fvc_l"] == pytest.approx(expected.fvc.lln, abs=1e-9)
    other = gli.predict("male", AGE, 178.0, equation="gli-2012", ethnicity="other", fvc_l=2.20)
    assert result["other_prediction"]["percent_predicted_fvc"] == pytest.approx(other.fvc.percent_predicted, abs=1e-9)
    assert result["inputs"]["age_on_basis"] == "screening_date fact" and "birth_date" not in json.dumps(result["inputs"])


@needs_pty
def test_whole_hl7_session_over_a_pty(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            sim = SpirometerSimulator(load_scenario(ALS), "hl7")
            ep = PtyEndpoint(sim.on_bytes)
            info = await h.svc.start(SUBJECT, ep.open(), model="sim-hl7", by="nurse")
            sid = info["id"]
            assert info["kind"] == "spirometry" and info["state"] == "open" and info["subject_id"] == SUBJECT
            outcomes = await asyncio.wait_for(sim.run_session(ep.write), WAIT)
            assert [(o.ack, o.attempts) for o in outcomes] == [("AA", 1)]  # stored, then acknowledged
            note = await h.next_result()
            assert note["session_id"] == sid and note["subject_id"] == SUBJECT
            assert_als_result(note["result"])
            stopped = await h.daemon.stop_session(sid, by="nurse")
            assert stopped["state"] == "stopped" and sid not in h.svc.recorders
            ep.close()
            rows = h.rows("SELECT number, is_summary, fvc_l, fev1_l, bev_l, fet_s, curve_json IS NOT NULL FROM spirometry_manoeuvres"
                          " WHERE session_id = ? ORDER BY id", sid)
            assert [r[:3] for r in rows] == [(1, 0, 2.2), (2, 0, 2.12), (3, 0, 1.71), (4, 0, 2.05), (5, 0, 2.18), (None, 1, 2.2)]
            assert [r[6] for r in rows] == [1, 1, 1, 1, 0, 0]
            [res] = h.rows("SELECT valid, equation, fvc_l, fvc_pct_predicted, other_equation, grade_fvc, sex, height_cm"
                           " FROM spirometry_results WHERE session_id = ?", sid)
            assert res[:3] == (1, "gli-global-2022", 2.2) and res[4:] == ("gli-2012", "A", "male", 178.0)
            assert res[3] == pytest.approx(gli.predict("male", AGE, 178.0, fvc_l=2.2).fvc.percent_predicted, abs=1e-9)
            actions = [r[0] for r in h.rows("SELECT action FROM audit WHERE session_id = ? AND action NOT LIKE 'eligibility%'"
                                            " ORDER BY id", sid)]
            assert actions == ["session_started", "spirometry_message_received", "spirometry_result", "session_stopped"]
        conn = sqlite3.connect(h.db)
        assert audit.verify(conn).ok
    asyncio.run(main())


def test_gdt_session_over_socket_url_through_the_api(tmp_path: Path) -> None:
    from collector.api import create_app

    async def main() -> None:
        async with harness(tmp_path) as h:
            sim = SpirometerSimulator(load_scenario(ALS), "gdt")
            ep = TcpEndpoint(sim.on_bytes)
            url = await ep.open()
            app = create_app(h.daemon, "tok")
            auth = {"Authorization": f"Bearer {operator_token(h.db, 'nurse', 'technician')}"}
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                r = await client.post("/api/v1/spirometry/sessions", headers=auth, json={
                    "subject_id": SUBJECT, "kind": "spirometry", "spirometer": url, "protocol": "gdt", "model": "sim-gdt", "by": "nurse"})
                assert r.status_code == 201, r.text
                sid = r.json()["id"]
                await asyncio.wait_for(ep.client_connected.wait(), WAIT)
                assert [o.ack for o in await asyncio.wait_for(sim.run_session(ep.write), WAIT)] == [None]  # GDT has no ACK
                result = (await h.next_result())["result"]
                r = await client.get(f"/api/v1/spirometry/sessions/{sid}", headers=auth)
                assert r.status_code == 200
                detail = r.json()
                assert r.json()["live"]["messages"] == 1
                r = await client.get(f"/api/v1/spirometry/sessions/{sid}")
                assert r.status_code == 401
            await ep.close()
        # GDT carries no curves: the first blow has no end-of-test evidence, later ones pass by the
        # "repeatable with a prior FVC" rule -> acceptable 2.12 (2) and 2.05 (4), grade B, FVC 2.12 L.
        assert result["valid"] is True and result["fvc_l"] == 2.12 and result["fvc"]["grade"] == "B"
        first = result["manoeuvres"][0]
        assert first["fvc"]["status"] == "usable" and "no_end_of_forced_expiration" in first["fvc"]["reasons"]
        expected = gli.predict("male", AGE, 178.0, fvc_l=2.12, fev1_l=result["fev1_l"])
        assert result["prediction"]["percent_predicted_fvc"] == pytest.approx(expected.fvc.percent_predicted, abs=1e-9)
        assert detail["result"]["fvc_pct_predicted"] == pytest.approx(expected.fvc.percent_predicted, abs=1e-9)
        assert [m["number"] for m in detail["manoeuvres"]] == [1, 2, 3, 4, 5, None]
        assert detail["device"]["protocol"] == "gdt" and detail["device"]["address"] == url
        assert detail["session"]["settings"]["model"] == "sim-gdt"
    asyncio.run(main())


def test_unknown_protocol_model_or_port_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            with pytest.raises(InvalidInput, match=r"unknown spirometer protocol 'astm'; known: gdt, hl7"):
                await h.svc.start(SUBJECT, "socket://127.0.0.1:1", protocol="astm")
            with pytest.raises(InvalidInput, match=r"unknown spirometer model 'acme-9'.*\[spirometry.models\]"):
                await h.svc.start(SUBJECT, "socket://127.0.0.1:1", model="acme-9")
            with pytest.raises(InvalidInput, match="speaks hl7, not gdt"):
                await h.svc.start(SUBJECT, "socket://127.0.0.1:1", protocol="gdt", model="sim-hl7")
            with pytest.raises(NotFound, match="unknown subject"):
                await h.svc.start("SCR-9999", "socket://127.0.0.1:1", protocol="hl7")
            with pytest.raises(DeviceError) as ei:
                await h.svc.start(SUBJECT, "/dev/no-such-spirometer", protocol="hl7")
            msg = ei.value.message
            assert "/dev/no-such-spirometer" in msg and "check" in msg and "\n" not in msg
            with pytest.raises(DeviceError, match="socket://127.0.0.1:1.*listening"):
                await h.svc.start(SUBJECT, "socket://127.0.0.1:1", protocol="hl7")
            assert h.rows("SELECT COUNT(*) FROM sessions")[0][0] == 0
            assert h.rows("SELECT COUNT(*) FROM devices")[0][0] == 0
            assert not h.svc.recorders
    asyncio.run(main())


def test_bad_port_through_the_cli_is_one_line_and_non_zero(tmp_path: Path) -> None:
    """The real CLI against a daemon (in this process, on a real port): error line, exit code, nothing created."""
    from collector.runner import serve

    db = tmp_path / "collector.sqlite"

    async def main() -> tuple[Any, Any]:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(db, fast_config(), port=0, ready=ready))
        await asyncio.wait_for(ready.wait(), WAIT)
        runner = CliRunner(env=operator_env(db, "nurse", "technician"))
        try:
            add = await asyncio.to_thread(runner.invoke, cli_main, ["--db", str(db), "subject", "add", SUBJECT])
            assert add.exit_code == 0, add.output
            bad = await asyncio.to_thread(runner.invoke, cli_main, [
                "--db", str(db), "session", "start", "--subject", SUBJECT, "--kind", "spirometry",
                "--spirometer", "/dev/no-such-spirometer", "--protocol", "hl7"])
            unknown = await asyncio.to_thread(runner.invoke, cli_main, [
                "--db", str(db), "session", "start", "--subject", SUBJECT, "--kind", "spirometry",
                "--spirometer", "/dev/ttyS0", "--protocol", "astm"])
        finally:
            import os
            import signal
            os.kill(os.getpid(), signal.SIGINT)  # serve() handles SIGINT: orderly shutdown
            await asyncio.wait_for(task, WAIT)
        return bad, unknown

    bad, unknown = asyncio.run(main())
    assert bad.exit_code == DeviceError.exit_code
    assert bad.output.startswith("error: cannot open serial port /dev/no-such-spirometer") and bad.output.count("\n") == 1
    assert unknown.exit_code == InvalidInput.exit_code and "unknown spirometer protocol 'astm'" in unknown.output
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0


def test_missing_facts_are_named_then_recompute_fills_the_numbers(tmp_path: Path) -> None:
    async def main() -> tuple[Harness, int]:
        async with harness(tmp_path, facts={"sex": "male"}) as h:
            sim = SpirometerSimulator(load_scenario(ALS), "hl7")
            ep = TcpEndpoint(sim.on_bytes)
            info = await h.svc.start(SUBJECT, await ep.open(), model="sim-hl7")
            await asyncio.wait_for(ep.client_connected.wait(), WAIT)
            await asyncio.wait_for(sim.run_session(ep.write), WAIT)
            result = (await h.next_result())["result"]
            assert result["valid"] is True and result["prediction"] is None
            assert result["inputs"]["missing"] == ["height_cm", "birth_date"]
            assert "height_cm, birth_date not recorded" in result["note"]
            await h.daemon.stop_session(info["id"])
            await ep.close()
            return h, info["id"]

    h, sid = asyncio.run(main())
    assert h.rows("SELECT fvc_pct_predicted, predicted_fvc_l FROM spirometry_results WHERE session_id = ?", sid) == [(None, None)]
    record_facts(h.db, SUBJECT, {"height_cm": "165", "birth_date": "1970-11-23"})
    runner = CliRunner()
    r = invoke(h.db, "spirometry", "recompute", str(sid), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    started = h.rows("SELECT started_utc FROM sessions WHERE id = ?", sid)[0][0]
    from datetime import date, datetime
    on = datetime.fromisoformat(started.replace("Z", "+00:00")).astimezone().date()
    expected = gli.predict("male", decimal_age(date(1970, 11, 23), on), 165.0, fvc_l=2.20)
    assert out["prediction"]["percent_predicted_fvc"] == pytest.approx(expected.fvc.percent_predicted, abs=1e-9)
    assert out["inputs"]["age_on_basis"] == "session start (local date)"
    r = invoke(h.db, "spirometry", "show", str(sid))
    assert r.exit_code == 0, r.output
    assert "grade A" in r.output and "% predicted (gli-global-2022)" in r.output and "valid: yes" in r.output
    assert "1970" not in r.output  # the birth date never leaves the facts table


def test_age_outside_the_equation_is_refused_not_extrapolated(tmp_path: Path) -> None:
    async def main() -> dict[str, Any]:
        facts = {"sex": "male", "height_cm": "178", "birth_date": "1925-01-01", "screening_date": "2025-03-10"}
        async with harness(tmp_path, facts=facts) as h:
            sim = SpirometerSimulator(dataclasses.replace(load_scenario(ALS), subject=None), "hl7")  # device sends no PID
            ep = TcpEndpoint(sim.on_bytes)
            await h.svc.start(SUBJECT, await ep.open(), model="sim-hl7")
            await asyncio.wait_for(ep.client_connected.wait(), WAIT)
            await asyncio.wait_for(sim.run_session(ep.write), WAIT)
            result = (await h.next_result())["result"]
            await ep.close()
            return result

    result = asyncio.run(main())
    assert result["prediction"] is None and "outside gli-global-2022's range 3-95 y" in result["prediction_refused"]


def test_impossible_values_are_refused_kept_in_the_capture_and_the_session_goes_on(tmp_path: Path) -> None:
    capture = tmp_path / "capture.jsonl"

    async def main() -> Harness:
        async with harness(tmp_path, facts={**SHORT_FACTS, "height_cm": "160"}, capture=capture) as h:
            sim = SpirometerSimulator(load_scenario(SHORT), "hl7")
            ep = TcpEndpoint(sim.on_bytes)
            sid = (await h.svc.start(SUBJECT, await ep.open(), model="sim-hl7"))["id"]
            await asyncio.wait_for(ep.client_connected.wait(), WAIT)
            (m1, d1), (m2, d2), _ = sim.messages()
            bad = d2.replace(b"||3.02|L|", b"||-3.02|L|")
            assert bad != d2
            out = await asyncio.wait_for(sim.send_message(m2, bad, ep.write), WAIT)
            assert out.ack == "AE" and "negative" in out.ack_text
            out = await asyncio.wait_for(sim.send_message(m1, d1, ep.write), WAIT)
            assert out.ack == "AA"
            await h.next_result()
            # The device resends a message whose ACK it missed: acknowledged again, stored once.
            out = await asyncio.wait_for(sim.send_message(m1, d1, ep.write), WAIT)
            assert out.ack == "AA"
            await until(lambda: h.svc.recorders[sid].duplicates == 1, "duplicate recognised")
            assert h.rows("SELECT fvc_l FROM spirometry_manoeuvres WHERE session_id = ?", sid) == [(2.95,)]
            events = h.rows("SELECT kind, detail_json FROM events WHERE session_id = ? AND kind LIKE 'spirometry%' ORDER BY id", sid)
            assert [e[0] for e in events] == ["spirometry_refused", "spirometry_message_notes", "spirometry_duplicate_message"]
            assert "negative volume: FVC -3.02 L" in json.loads(events[0][1])["reason"]
            # A height other than the recorded one is noted (named, value not copied), not a contradiction.
            assert json.loads(events[1][1])["device_subject_differs"] == ["height_cm"]
            assert "165" not in events[1][1]
            assert h.rows("SELECT COUNT(*) FROM audit WHERE action = 'spirometry_message_refused' AND session_id = ?", sid) == [(1,)]
            assert [r[0] for r in h.rows("SELECT status FROM spirometry_messages WHERE session_id = ? ORDER BY id", sid)] == \
                ["refused", "accepted", "duplicate"]
            await ep.close()
            return h

    asyncio.run(main())
    records = [json.loads(line) for line in capture.read_text().splitlines()]
    assert not any(r.get("characteristic") == "rx" for r in records), "raw line bytes (with the PID) are not captured"
    rx = bytes.fromhex("".join(r["hex"] for r in records if r.get("characteristic") == "rx-masked"))
    assert b"||-3.02|L|" in rx, "the refused message is kept in the capture, masked"
    assert b"SIM-0002" not in rx and b"19701123" not in rx and b"PID|1||***|" in rx
    assert any(r.get("event") == "refused" for r in records)
    assert sum(1 for r in records if r.get("characteristic") == "tx") == 3  # AE, AA, AA


def test_a_device_holding_another_persons_sex_or_birth_date_is_refused_with_ae(tmp_path: Path) -> None:
    """PID sex/birth date against the recorded facts: refused whole, nothing attached, no value copied anywhere."""
    async def main() -> Harness:
        async with harness(tmp_path) as h:  # facts: a man born 1964; the short scenario's device holds a woman born 1970
            sim = SpirometerSimulator(load_scenario(SHORT), "hl7")
            ep = TcpEndpoint(sim.on_bytes)
            sid = (await h.svc.start(SUBJECT, await ep.open(), model="sim-hl7"))["id"]
            await asyncio.wait_for(ep.client_connected.wait(), WAIT)
            m1, d1 = sim.messages()[0]
            out = await asyncio.wait_for(sim.send_message(m1, d1, ep.write), WAIT)
            assert out.ack == "AE" and "contradicts" in out.ack_text
            assert h.rows("SELECT COUNT(*) FROM spirometry_manoeuvres WHERE session_id = ?", sid) == [(0,)]
            [(detail,)] = h.rows("SELECT detail_json FROM events WHERE session_id = ? AND kind = 'spirometry_refused'", sid)
            d = json.loads(detail)
            assert "contradicts subject SCR-0101's recorded sex and birth_date" in d["reason"]
            assert d["device_subject_differs"] == ["sex", "height_cm", "birth_date"]
            dump = "\n".join(str(r) for t in ("events", "audit", "spirometry_messages", "spirometry_observations")
                              for r in h.rows(f"SELECT * FROM {t}"))
            assert "1970" not in dump and "SIM-0002" not in dump and "female" not in dump
            [(status, raw)] = h.rows("SELECT status, raw_masked FROM spirometry_messages WHERE session_id = ?", sid)
            assert status == "subject_mismatch" and b"PID|1||***|" in raw and b"|F" in raw
            assert h.svc.recorders[sid].refused == 1
            await ep.close()
            return h

    asyncio.run(main())


@needs_pty
def test_cable_pulled_mid_session_is_a_port_lost_gap_and_the_port_reopens(tmp_path: Path) -> None:
    link = tmp_path / "ttySPIRO"

    async def main() -> tuple[Harness, int]:
        async with harness(tmp_path, facts=SHORT_FACTS) as h:
            sim = SpirometerSimulator(load_scenario(SHORT), "hl7")  # one message per manoeuvre
            state = {"ep": PtyEndpoint(sim.on_bytes, link)}
            state["ep"].open()
            sid = (await h.svc.start(SUBJECT, str(link), model="sim-hl7"))["id"]
            rec = h.svc.recorders[sid]

            async def pull_cable(i: int) -> None:
                if i != 2:
                    return
                state["ep"].close()
                await until(lambda: rec._gap_id is not None, "port_lost gap")
                new = PtyEndpoint(sim.on_bytes, link)  # re-plugged under the same name
                new.open()
                state["ep"] = new
                await until(lambda: rec._gap_id is None and rec.connects == 2, "port reopened")

            async def write(data: bytes) -> None:
                await state["ep"].write(data)

            outcomes = await asyncio.wait_for(sim.run_session(write, between=pull_cable), 3 * WAIT)
            assert [o.ack for o in outcomes] == ["AA", "AA", "AA"]
            for _ in range(3):
                result = (await h.next_result())["result"]
            await h.daemon.stop_session(sid)
            state["ep"].close()
            assert result["manoeuvre_types"] == ["FVC", "SVC"] and result["attempts"] == 2
            assert "SVC manoeuvre" in result["not_assessed"][0]["reason"]
            return h, sid

    h, sid = asyncio.run(main())
    gaps = h.rows("SELECT cause, start_utc_ms, end_utc_ms FROM gaps WHERE session_id = ?", sid)
    assert [g[0] for g in gaps] == ["port_lost"] and gaps[0][2] is not None and gaps[0][2] >= gaps[0][1]
    assert [r[0] for r in h.rows("SELECT number FROM spirometry_manoeuvres WHERE session_id = ? ORDER BY id", sid)] == [1, 2, 3]
    actions = [r[0] for r in h.rows("SELECT action FROM audit WHERE session_id = ? ORDER BY id", sid)]
    assert actions.count("device_lost") == 1 and actions.count("device_connected") == 1


def test_busy_port_and_second_open_session_are_conflicts(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            await h.daemon.add_subject("SCR-0102")
            ep = TcpEndpoint(lambda b: None)
            url = await ep.open()
            sid = (await h.svc.start(SUBJECT, url, model="sim-hl7"))["id"]
            with pytest.raises(Conflict, match=f"port {url} is already recording session {sid}"):
                await h.svc.start("SCR-0102", url, model="sim-hl7")
            ep2 = TcpEndpoint(lambda b: None)
            with pytest.raises(Conflict, match=f"already has an open spirometry session \\({sid}\\)"):
                await h.svc.start(SUBJECT, await ep2.open(), model="sim-hl7")
            assert h.rows("SELECT COUNT(*) FROM sessions") == [(1,)]
            await ep.close()
            await ep2.close()
    asyncio.run(main())


def test_shutdown_interrupts_and_the_next_start_resumes_with_a_daemon_down_gap(tmp_path: Path) -> None:
    async def main() -> None:
        sim = SpirometerSimulator(load_scenario(SHORT), "hl7")
        ep = TcpEndpoint(sim.on_bytes)
        url = await ep.open()
        async with harness(tmp_path, facts=SHORT_FACTS) as h:
            sid = (await h.svc.start(SUBJECT, url, model="sim-hl7"))["id"]
            await asyncio.wait_for(ep.client_connected.wait(), WAIT)
            mid, data = sim.messages()[0]
            assert (await asyncio.wait_for(sim.send_message(mid, data, ep.write), WAIT)).ack == "AA"
            await h.next_result()
        assert h.rows("SELECT state FROM sessions WHERE id = ?", sid) == [("interrupted",)]
        await until(lambda: not ep.client_connected.is_set(), "old connection closed")

        h2 = Harness(h.db)
        try:
            await h2.daemon.resume_open_sessions()
            assert list(h2.svc.recorders) == [sid]
            await asyncio.wait_for(ep.client_connected.wait(), WAIT)
            for mid, data in sim.messages()[1:]:
                assert (await asyncio.wait_for(sim.send_message(mid, data, ep.write), WAIT)).ack == "AA"
            for _ in range(2):
                result = (await h2.next_result())["result"]
            assert result["attempts"] == 2 and result["fvc_l"] == 3.02
            await until(lambda: h2.svc.recorders[sid]._gap_id is None, "daemon_down gap closed")
            await h2.daemon.stop_session(sid)
        finally:
            await h2.daemon.shutdown()
            await ep.close()
        gaps = h.rows("SELECT cause, end_utc_ms IS NOT NULL FROM gaps WHERE session_id = ?", sid)
        assert gaps == [("daemon_down", 1)]
        actions = [r[0] for r in h.rows("SELECT action FROM audit WHERE session_id = ? ORDER BY id", sid)]
        assert actions[actions.index("session_interrupted"):][:2] == ["session_interrupted", "session_resumed"]
        assert actions[-1] == "session_stopped"
        assert h.rows("SELECT COUNT(*) FROM spirometry_manoeuvres WHERE session_id = ?", sid) == [(3,)]
    asyncio.run(main())


def test_a_lab_session_result_alone_is_the_devices_fvc_with_its_grade_unknown(tmp_path: Path) -> None:
    """A lung-function lab's ORU (anthropometry OBR + one session-result OBR) over the line: stored as the
    device's summary with every OBX, judged as such (needs review), nothing identifying kept."""
    from collector.eligibility.service import evaluate_subject

    async def main() -> tuple[Harness, int, dict[str, Any]]:
        async with harness(tmp_path) as h:
            sim = SpirometerSimulator(dataclasses.replace(load_scenario(ALS), shape="lab-summary"), "hl7")
            ep = TcpEndpoint(sim.on_bytes)
            sid = (await h.svc.start(SUBJECT, await ep.open(), model="generic-hl7"))["id"]
            await asyncio.wait_for(ep.client_connected.wait(), WAIT)
            [out] = await asyncio.wait_for(sim.run_session(ep.write), WAIT)
            assert out.ack == "AA"
            result = (await h.next_result())["result"]
            await ep.close()
            return h, sid, result

    h, sid, result = asyncio.run(main())
    assert result["fvc_basis"] == "device_summary" and result["valid"] is True and result["fvc_l"] == 2.20
    assert result["fvc"] is None and "quality grade is unknown" in result["grade_review"]
    assert result["rules"]["plateau"].startswith("plateau: volume change <= 0.025 L")
    assert result["lower_row_fvc_pct_predicted"] is not None and result["interpolation_decides"] is False
    obs = h.rows("SELECT code, mapped_to, ref_text, ref_low, abnormal_flags, manoeuvre_id IS NULL FROM spirometry_observations"
                 " WHERE session_id = ? ORDER BY id", sid)
    assert ("MMEF", None, "1.9-4.8", 1.9, None, 0) in obs and ("19876-2", "fvc", "> 3.50", 3.5, "L", 0) in obs
    assert ("8302-2", "height", None, None, None, 1) in obs and any(o[0] == "COMMENT" for o in obs)
    conn = sqlite3.connect(h.db)
    try:
        crit = next(c for c in evaluate_subject(conn, SUBJECT, now=1.75e9)["criteria"] if c["id"] == "fvc")
        dump = "\n".join(str(r) for t in ("spirometry_manoeuvres", "spirometry_observations", "spirometry_results", "events", "audit",
                                           "spirometry_messages") for r in conn.execute(f"SELECT * FROM {t}"))
    finally:
        conn.close()
    assert crit["state"] == "needs_review" and "device's own session summary" in crit["reason"]
    for token in ("TESTPATIENT", "SIMONE", "Simulation Road", "19640502", "SIM-0001", "5555"):
        assert token not in dump, token
    r = CliRunner().invoke(cli_main, ["--db", str(h.db), "spirometry", "show", str(sid)])
    assert r.exit_code == 0, r.output
    assert "device's own session summary" in r.output and "NEEDS REVIEW" in r.output
    assert "MMEF MMEF 25-75 = 2.10 L/s  ref 1.9-4.8  -> not mapped (kept)" in r.output and "TESTPATIENT" not in r.output

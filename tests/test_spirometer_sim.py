"""Whole sessions from the simulated spirometer through the real serial transport and codecs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from collector.clock import SystemClock, VirtualClock
from drivers.serial_transport import LinkEvent, SerialTransport
from drivers.spirometry.registry import get_model, make_decoder
from drivers.spirometry.results import DecodedMessage, DecodeError, SpiroEvent
from simulators.spirometer import (
    SCENARIO_DIR,
    PtyEndpoint,
    ScenarioError,
    SpirometerSimulator,
    TcpEndpoint,
    load_scenario,
)

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0
ALS = SCENARIO_DIR / "spirometry_als_session.toml"
SHORT = SCENARIO_DIR / "spirometry_svc_short.toml"
POSIX = not sys.platform.startswith("win")


class Collector:
    """What the daemon will do: transport bytes -> decoder -> events, ACKs written back."""

    def __init__(self, url: str, model: str, clock=None) -> None:
        m = get_model(model)
        self.decoder = make_decoder(m)
        self.events: list[SpiroEvent] = []
        self.link: list[LinkEvent] = []
        self.changed = asyncio.Event()
        self.transport = SerialTransport(url, m.port, self.on_data, clock or SystemClock(), self.on_link, backoff_initial_s=0.05, socket_hosts=["127.0.0.1"])

    def on_link(self, ev: LinkEvent) -> None:
        self.link.append(ev)
        self.changed.set()

    def on_data(self, t: float, data: bytes) -> None:
        for ev in self.decoder.feed(data):
            self.events.append(ev)
            if ev.ack is not None:
                asyncio.ensure_future(self.transport.write(ev.ack))
        self.changed.set()

    async def until(self, pred, what: str) -> None:
        async def loop() -> None:
            while not pred():
                self.changed.clear()
                await self.changed.wait()
        try:
            await asyncio.wait_for(loop(), WAIT)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    def messages(self) -> list[DecodedMessage]:
        return [e for e in self.events if isinstance(e, DecodedMessage)]


def check_als_session(msgs: list[DecodedMessage]) -> None:
    [m] = msgs
    blows = [r for r in m.results if not r.summary]
    assert [r.number for r in blows] == [1, 2, 3, 4, 5]
    assert [r.fvc_l for r in blows] == [2.20, 2.12, 1.71, 2.05, 2.18]
    assert blows[2].fet_s == 1.8 and blows[2].device_quality == ("early_termination",)
    assert blows[3].device_quality == ("cough",) and blows[4].bev_l == 0.25
    assert all(r.posture == "sitting" and r.manoeuvre_type == "FVC" for r in blows)
    assert [r.summary for r in m.results].count(True) == 1
    assert m.subject is not None and m.subject.height_cm == 178 and m.subject.sex == "male"


@pytest.mark.skipif(not POSIX, reason="pseudo-terminals are POSIX only")
def test_hl7_session_over_pty() -> None:
    async def main() -> None:
        sim = SpirometerSimulator(load_scenario(ALS), "hl7")
        ep = PtyEndpoint(sim.on_bytes)
        path = ep.open()
        col = Collector(path, "sim-hl7")
        await col.transport.start(require_first_open=True)
        outcomes = await asyncio.wait_for(sim.run_session(ep.write), WAIT)
        assert [(o.ack, o.attempts) for o in outcomes] == [("AA", 1)]
        check_als_session(col.messages())
        assert blows_have_curves(col.messages()[0])
        await col.transport.stop()
        ep.close()
    asyncio.run(main())


def blows_have_curves(m: DecodedMessage) -> bool:
    return sum(1 for r in m.results if r.curves) == 4


@pytest.mark.parametrize("protocol", ["hl7", "gdt"])
def test_session_over_socket_url(protocol: str) -> None:
    async def main() -> None:
        sim = SpirometerSimulator(load_scenario(ALS), protocol)
        ep = TcpEndpoint(sim.on_bytes)
        url = await ep.open()
        col = Collector(url, f"sim-{protocol}")
        await col.transport.start(require_first_open=True)
        await asyncio.wait_for(ep.client_connected.wait(), WAIT)
        outcomes = await asyncio.wait_for(sim.run_session(ep.write), WAIT)
        await col.until(lambda: len(col.messages()) == 1, "decoded session")
        assert [o.ack for o in outcomes] == (["AA"] if protocol == "hl7" else [None])
        check_als_session(col.messages())
        assert not [e for e in col.events if isinstance(e, DecodeError)]
        await col.transport.stop()
        await ep.close()
    asyncio.run(main())


@pytest.mark.skipif(not POSIX, reason="pseudo-terminals are POSIX only")
def test_port_disappears_mid_session_and_comes_back(tmp_path: Path) -> None:
    async def main() -> None:
        sim = SpirometerSimulator(load_scenario(SHORT), "hl7")  # one message per manoeuvre
        link = tmp_path / "ttySPIRO"
        ep = PtyEndpoint(sim.on_bytes, link)
        ep.open()
        col = Collector(str(link), "sim-hl7")
        await col.transport.start(require_first_open=True)
        state = {"ep": ep}

        async def pull_cable(i: int) -> None:
            if i != 2:
                return
            state["ep"].close()  # the adapter vanishes
            await col.until(lambda: [e.kind for e in col.link][-1:] == ["lost"], "lost")
            new = PtyEndpoint(sim.on_bytes, link)  # re-plugged: new pty behind the same name
            new.open()
            state["ep"] = new
            await col.until(lambda: [e.kind for e in col.link] == ["connected", "lost", "connected"], "reconnect")

        async def write(data: bytes) -> None:
            await state["ep"].write(data)

        outcomes = await asyncio.wait_for(sim.run_session(write, between=pull_cable), 3 * WAIT)
        assert [o.ack for o in outcomes] == ["AA", "AA", "AA"]
        msgs = col.messages()
        assert [r.number for m in msgs for r in m.results] == [1, 2, 3]
        svc = msgs[-1].results[0]
        assert svc.manoeuvre_type == "SVC" and svc.vc_l == 3.10 and svc.posture == "supine"
        assert msgs[1].results[0].device_quality == ("A", "plateau")
        await col.transport.stop()
        state["ep"].close()
    asyncio.run(main())


def test_device_resends_once_without_ack_then_gives_up() -> None:
    async def main() -> None:
        clock = VirtualClock(start=0.0)
        runner = asyncio.create_task(clock.run())
        sim = SpirometerSimulator(load_scenario(SHORT), "hl7", clock=clock, ack_timeout_s=5.0)
        sent: list[bytes] = []

        async def black_hole(data: bytes) -> None:
            sent.append(data)

        mid, data = sim.messages()[0]
        out = await asyncio.wait_for(sim.send_message(mid, data, black_hole), WAIT)
        assert (out.ack, out.attempts) == (None, 2) and sent == [data, data]
        assert clock.now() == 10.0  # two ACK timeouts on the injected clock

        # an ACK arriving after the resend is taken; an AE is recorded, not retried
        mid2, data2 = sim.messages()[1]
        decoder = make_decoder(get_model("sim-hl7"))

        async def late_acker(payload: bytes) -> None:
            sent.append(payload)
            if sent.count(payload) == 2:
                [ev] = decoder.feed(payload)
                sim.on_bytes(ev.ack)

        out2 = await asyncio.wait_for(sim.send_message(mid2, data2, late_acker), WAIT)
        assert (out2.ack, out2.attempts) == ("AA", 2)
        bad = data2.replace(b"||3.02|L|", b"||-3.02|L|")

        async def refusing(payload: bytes) -> None:
            [ev] = decoder.feed(payload)
            sim.on_bytes(ev.ack)

        out3 = await asyncio.wait_for(sim.send_message("SIM20250311140000-2", bad, refusing), WAIT)
        assert out3.ack == "AE" and out3.attempts == 1 and "negative" in out3.ack_text
        runner.cancel()
    asyncio.run(main())


def test_scenario_errors_are_clear(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text("[[manoeuvre]]\nfev1 = 1.0\n")
    with pytest.raises(ScenarioError, match="missing fvc"):
        load_scenario(p)
    p.write_text("[[manoeuvre]]\nfvc = 2.0\nflaw = 'sneeze'\n")
    with pytest.raises(ScenarioError, match="flaw 'sneeze' unknown"):
        load_scenario(p)
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario(tmp_path / "nope.toml")


def test_cli_help_runs() -> None:
    r = subprocess.run([sys.executable, "-m", "simulators.spirometer", "--help"], capture_output=True, text=True, timeout=30,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 0 and "--scenario" in r.stdout and "--tcp" in r.stdout

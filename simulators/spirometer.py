"""Simulated spirometer: sends a TOML-scripted session as real HL7/MLLP or GDT bytes.

It listens on a pseudo-terminal (POSIX; the slave path is printed, optionally
behind a stable symlink so a "re-plugged" port keeps its name) or on a TCP port
on 127.0.0.1 (for ``socket://``).  For HL7 it behaves like a device: it waits
for the ACK of each message and resends once when none arrives in time; AE/AR
answers are recorded, not retried.  GDT has no acknowledgement.

Python API (tests)::

    sim = SpirometerSimulator(load_scenario(path), protocol="hl7")
    ep = PtyEndpoint(sim.on_bytes); ep.open(); print(ep.path)
    outcomes = await sim.run_session(ep.write)

CLI::

    python -m simulators.spirometer --protocol hl7 --scenario FILE [--tcp PORT | --pty [--link PATH]]
    python -m simulators.spirometer --scenario FILE --gdt-dir DIR [--shape trials|gdt-text|gdt-best-test]
"""

from __future__ import annotations

import argparse
import dataclasses
import asyncio
import math
import os
import sys
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable

from collector.clock import SystemClock
from drivers.spirometry.gdt import encode_gdt, parse_request
from drivers.spirometry.hl7 import MllpFramer, encode_oru, frame, parse_ack
from drivers.spirometry.registry import MODELS, get_model
from drivers.spirometry.results import Curve, ManoeuvreResult, SubjectData
from simulators.vendor_shapes import SHAPES, best_of, gdt_best_test, gdt_text, lab_oru

SCENARIO_DIR = Path(__file__).parent / "scenarios"
FLAWS = {"early_termination", "cough", "large_bev"}


class ScenarioError(ValueError):
    """The scenario file is not usable; the message names the entry and the fix."""


@dataclass
class Scenario:
    subject: SubjectData | None
    manoeuvres: list[ManoeuvreResult]
    protocol: str = "hl7"
    model: str = "sim-hl7"
    messages: str = "session"  # "session" | "manoeuvre"
    ack_timeout_s: float = 5.0
    start: str | None = None
    best_summary: ManoeuvreResult | None = None
    shape: str = "trials"  # see simulators.vendor_shapes.SHAPES


def _curve(fvc: float, fev1: float, fet: float, cough: bool) -> Curve:
    """Mono-exponential volume-time curve with V(1 s) = FEV1, sampled every 0.05 s."""
    frac = min(fev1 / fvc, 0.999) if fvc > 0 else 0.5
    tau = -1.0 / math.log(1.0 - frac)
    n = max(2, int(round(fet / 0.05)) + 1)
    xs, ys = [], []
    for i in range(n):
        t = min(i * 0.05, fet)
        v = fvc * (1 - math.exp(-t / tau)) / (1 - math.exp(-fet / tau))
        if cough and 0.4 <= t <= 0.55:
            v -= 0.05 * fvc * math.sin((t - 0.4) / 0.15 * math.pi)
        xs.append(round(t, 3))
        ys.append(round(v, 4))
    return Curve("volume_time", tuple(xs), tuple(ys))


def _manoeuvre(i: int, m: dict[str, Any], session: dict[str, Any], when: str | None) -> ManoeuvreResult:
    where = f"[[manoeuvre]] #{i}"
    flaw = m.get("flaw")
    if flaw is not None and flaw not in FLAWS:
        raise ScenarioError(f"{where}: flaw {flaw!r} unknown; use one of {', '.join(sorted(FLAWS))}")
    mtype = str(m.get("type", session.get("manoeuvre_type", "FVC"))).upper()
    try:
        fvc = float(m["fvc"]) if mtype == "FVC" else None
        vc = float(m["vc"]) if mtype == "SVC" else None
    except KeyError as exc:
        raise ScenarioError(f"{where}: missing {exc.args[0]} (required for a {mtype} manoeuvre)") from None
    fev1 = float(m["fev1"]) if "fev1" in m else None
    fet = float(m.get("fet", 1.8 if flaw == "early_termination" else 8.0))
    bev = float(m.get("bev", max(0.25, 0.1 * (fvc or 0)) if flaw == "large_bev" else 0.05))
    quality = list(m.get("quality", [flaw] if flaw else ["ok"]))
    curves: tuple[Curve, ...] = ()
    if m.get("curve") is True and fvc and fev1:
        curves = (_curve(fvc, fev1, fet, flaw == "cough"),)
    elif isinstance(m.get("curve"), dict):
        c = m["curve"]
        curves = (Curve(c.get("kind", "volume_time"), tuple(map(float, c["x"])), tuple(map(float, c["y"]))),)
    return ManoeuvreResult(
        source="hl7", number=int(m.get("number", i)), time=when, manoeuvre_type=mtype,  # type: ignore[arg-type]
        posture=m.get("posture", session.get("posture")), fvc_l=fvc, fev1_l=fev1,
        fev1_fvc=round(fev1 / fvc, 4) if fev1 is not None and fvc else None,
        pef_l_s=float(m["pef"]) if "pef" in m else None, bev_l=bev if mtype == "FVC" else None,
        fet_s=fet if mtype == "FVC" else None, vc_l=vc, device_quality=tuple(quality), curves=curves,
    )


def load_scenario(path: str | Path, protocol: str | None = None) -> Scenario:
    p = Path(path)
    if not p.exists() and (SCENARIO_DIR / p.name).exists():
        p = SCENARIO_DIR / p.name
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"scenario file {path} not found; see {SCENARIO_DIR} for examples") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {path} is not valid TOML: {exc}") from None
    dev, sess, subj = doc.get("device", {}), doc.get("session", {}), doc.get("subject")
    proto = protocol or dev.get("protocol", "hl7")
    if proto not in ("hl7", "gdt"):
        raise ScenarioError(f"protocol {proto!r} is not hl7 or gdt")
    subject = None
    if subj is not None:
        subject = SubjectData(subj.get("patient_id"), subj.get("sex"), {"male": "1", "female": "2"}.get(subj.get("sex", "")),
                              subj.get("height_cm"), subj.get("weight_kg"), subj.get("birth_date"))
    start = sess.get("start")
    t0 = datetime.fromisoformat(start) if start else None
    interval = float(sess.get("interval_s", 60))
    mans = []
    for i, m in enumerate(doc.get("manoeuvre", []), 1):
        when = (t0 + timedelta(seconds=interval * (i - 1))).isoformat(timespec="seconds") if t0 else None
        mans.append(_manoeuvre(i, m, sess, when))
    if not mans:
        raise ScenarioError(f"scenario {path} lists no [[manoeuvre]]")
    best = None
    if sess.get("best_summary"):
        fvcs = [m.fvc_l for m in mans if m.fvc_l is not None]
        fev1s = [m.fev1_l for m in mans if m.fev1_l is not None]
        if fvcs and fev1s:
            best = ManoeuvreResult("hl7", None, start, "FVC", fvc_l=max(fvcs), fev1_l=max(fev1s), summary=True)
    model = dev.get("model", f"sim-{proto}")
    shape = str(dev.get("shape", "trials"))
    if shape not in SHAPES:
        raise ScenarioError(f"[device] shape {shape!r} unknown; use one of {', '.join(SHAPES)}")
    return Scenario(subject, mans, proto, model, dev.get("messages", "session"), float(dev.get("ack_timeout_s", 5.0)), start, best,
                    shape)


@dataclass
class SendOutcome:
    message_id: str
    attempts: int
    ack: str | None  # AA / AE / AR, or None when no ACK came
    ack_text: str = ""


@dataclass
class SpirometerSimulator:
    """Device-side behaviour, independent of the endpoint (pty or TCP)."""

    scenario: Scenario
    protocol: str | None = None
    clock: Any = field(default_factory=SystemClock)
    ack_timeout_s: float | None = None
    outcomes: list[SendOutcome] = field(default_factory=list)
    frames_sent: int = 0

    def __post_init__(self) -> None:
        self.protocol = self.protocol or self.scenario.protocol
        self.model = get_model(self.scenario.model if self.scenario.model in MODELS and MODELS[self.scenario.model].protocol == self.protocol
                               else f"sim-{self.protocol}")
        self.ack_timeout_s = self.ack_timeout_s if self.ack_timeout_s is not None else self.scenario.ack_timeout_s
        self._framer = MllpFramer()
        self._acks: dict[str, asyncio.Future[tuple[str, str]]] = {}
        self.stray_acks = 0

    # what goes on the wire -----------------------------------------------------------
    def messages(self) -> list[tuple[str, bytes]]:
        """(message id, exact bytes to send) for the whole session."""
        sc, codes = self.scenario, self.model.encoder_codes()
        stamp = (sc.start or "2000-01-01T00:00:00").replace("-", "").replace(":", "").replace("T", "")
        if sc.shape != "trials":
            wanted = "hl7" if sc.shape == "lab-summary" else "gdt"
            if self.protocol != wanted:
                raise ScenarioError(f"shape {sc.shape} is {wanted}; run it with --protocol {wanted}")
            best = best_of(sc.manoeuvres)
            if sc.shape == "lab-summary":
                mid = f"LAB{stamp}"
                return [(mid, frame(lab_oru(best, sc.subject, mid)))]
            encode = gdt_text if sc.shape == "gdt-text" else gdt_best_test
            return [(f"gdt-{stamp}", encode(best, sc.subject))]
        if self.protocol == "gdt":
            results = sc.manoeuvres + ([sc.best_summary] if sc.best_summary else [])
            return [(f"gdt-{stamp}", encode_gdt(results, sc.subject, codes, sc.start, charset=self.model.gdt_charset))]
        batches = [[m] for m in sc.manoeuvres] if sc.messages == "manoeuvre" else [list(sc.manoeuvres)]
        if sc.best_summary:
            batches[-1] = batches[-1] + [sc.best_summary]
        out = []
        for i, batch in enumerate(batches, 1):
            mid = f"SIM{stamp}-{i}"
            out.append((mid, frame(encode_oru(batch, mid, sc.subject, codes, batch[0].time or sc.start))))
        return out

    # device behaviour ------------------------------------------------------------------
    def on_bytes(self, data: bytes) -> None:
        """Bytes from the collector (ACKs)."""
        for item in self._framer.feed(data):
            if not isinstance(item, bytes):
                continue
            ack = parse_ack(item)
            fut = self._acks.get(ack.control_id) if ack else None
            if ack is None or fut is None or fut.done():
                self.stray_acks += 1
                continue
            fut.set_result((ack.code, ack.text))

    async def send_message(self, mid: str, data: bytes, write: Callable[[bytes], Awaitable[None]]) -> SendOutcome:
        if self.protocol == "gdt":
            await write(data)
            self.frames_sent += 1
            out = SendOutcome(mid, 1, None)
            self.outcomes.append(out)
            return out
        fut: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
        self._acks[mid] = fut
        attempts = 0
        result: tuple[str, str] | None = None
        for attempts in (1, 2):  # first send, then one resend
            await write(data)
            self.frames_sent += 1
            result = await self._wait(fut, self.ack_timeout_s or 5.0)
            if result is not None:
                break
        out = SendOutcome(mid, attempts, result[0] if result else None, result[1] if result else "")
        self.outcomes.append(out)
        return out

    async def _wait(self, fut: asyncio.Future[tuple[str, str]], timeout: float) -> tuple[str, str] | None:
        timer = asyncio.ensure_future(self.clock.sleep(timeout))
        await asyncio.wait({fut, timer}, return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        return fut.result() if fut.done() else None

    async def run_session(self, write: Callable[[bytes], Awaitable[None]],
                          between: Callable[[int], Awaitable[None]] | None = None) -> list[SendOutcome]:
        """Send every message; ``between(i)`` is awaited before message i>1 (tests pull the cable there)."""
        outs = []
        for i, (mid, data) in enumerate(self.messages(), 1):
            if between is not None and i > 1:
                await between(i)
            outs.append(await self.send_message(mid, data, write))
        return outs


# --- endpoints ---------------------------------------------------------------------------


FOLDER_SHAPES = ("trials", "gdt-text", "gdt-best-test")


@dataclass
class GdtFolderDevice:
    """A spirometer's PC software on a GDT exchange folder (the GDT file route).

    It reads the collector's request (``<device id><collector id>.gdt``, 6302) and deletes it, as a
    GDT receiver does, then writes its result record (6310) for the requested patient number as
    ``<collector id><device id>.gdt`` (``.001``, ``.002``... when that name is taken), in one of
    three vendors' shapes: ``trials`` (one 8410 group per parameter and trial, ``FVC_1``...),
    ``gdt-text`` (results in the 6220/6228 text fields) or ``gdt-best-test`` (best-test values
    with 8460 reference and 8470 "Best Test").  Files are written to a hidden name and renamed,
    unless a test asks for a file written in pieces (:meth:`write_partial`).
    """

    folder: Path
    scenario: Scenario
    shape: str = "trials"
    collector_id: str = "ALSC"
    device_id: str = "SPIR"

    def __post_init__(self) -> None:
        if self.shape not in FOLDER_SHAPES:
            raise ScenarioError(f"GDT folder shape {self.shape!r} unknown; use one of {', '.join(FOLDER_SHAPES)}")
        self.folder = Path(self.folder)

    @property
    def request_path(self) -> Path:
        return self.folder / f"{self.device_id}{self.collector_id}.gdt"

    def read_request(self, consume: bool = True) -> dict[str, str]:
        """The request's fields ({} when there is none); deleted after reading like a GDT receiver does."""
        try:
            data = self.request_path.read_bytes()
        except FileNotFoundError:
            return {}
        if consume:
            self.request_path.unlink()
        return parse_request(data)

    def result_bytes(self, patient_id: str | None) -> bytes:
        sc = self.scenario
        subject = dataclasses.replace(sc.subject or SubjectData(), patient_id=patient_id) if patient_id else sc.subject
        if self.shape == "gdt-text":
            return gdt_text(best_of(sc.manoeuvres), subject)
        if self.shape == "gdt-best-test":
            return gdt_best_test(best_of(sc.manoeuvres), subject)
        codes = get_model("sim-gdt").encoder_codes()
        return encode_gdt(sc.manoeuvres, subject, codes, sc.start, charset="3")

    def result_path(self) -> Path:
        base = f"{self.collector_id}{self.device_id}"
        path, n = self.folder / f"{base}.gdt", 0
        while path.exists():
            n += 1
            path = self.folder / f"{base}.{n:03d}"
        return path

    def respond(self, patient_id: str | None = None) -> Path:
        """Answer the pending request (or write for ``patient_id``): the whole file appears at once."""
        pid = patient_id or self.read_request().get("3000")
        data = self.result_bytes(pid)
        path = self.result_path()
        tmp = self.folder / f".{path.name}.part"
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def write_partial(self, patient_id: str, fraction: float = 0.5) -> tuple[Path, bytes]:
        """Write the first part of a result file in place (as software that writes slowly does); returns the rest."""
        data = self.result_bytes(patient_id)
        cut = max(1, int(len(data) * fraction))
        path = self.result_path()
        path.write_bytes(data[:cut])
        return path, data[cut:]


class PtyEndpoint:
    """A pseudo-terminal whose slave side plays the device's serial port (POSIX only)."""

    def __init__(self, on_bytes: Callable[[bytes], None], link: str | Path | None = None) -> None:
        self.on_bytes = on_bytes
        self.link = Path(link) if link else None
        self.master: int | None = None
        self.slave: int | None = None
        self.slave_name = ""

    @property
    def path(self) -> str:
        return str(self.link) if self.link else self.slave_name

    def open(self) -> str:
        import tty

        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no CR->LF translation or echo before the collector opens it
        os.set_blocking(self.master, False)
        self.slave_name = os.ttyname(self.slave)
        if self.link:
            tmp = self.link.with_name(self.link.name + ".tmp")
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(self.slave_name, tmp)
            os.replace(tmp, self.link)
        asyncio.get_running_loop().add_reader(self.master, self._readable)
        return self.path

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)  # type: ignore[arg-type]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no slave open right now
            return
        if data:
            self.on_bytes(data)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)  # type: ignore[arg-type]
                view = view[n:]
            except BlockingIOError:
                await asyncio.sleep(0.01)

    def close(self) -> None:
        """Pull the cable: the collector's reads fail and the path stops working."""
        if self.master is not None:
            asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
        if self.slave is not None:
            os.close(self.slave)
        self.master = self.slave = None


class TcpEndpoint:
    """A TCP listener on 127.0.0.1 the collector reaches as ``socket://127.0.0.1:PORT``."""

    def __init__(self, on_bytes: Callable[[bytes], None], port: int = 0) -> None:
        self.on_bytes, self.port = on_bytes, port
        self._server: asyncio.base_events.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.client_connected = asyncio.Event()

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    async def open(self) -> str:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # one device, one line
            writer.close()
            return
        self._writer = writer
        self.client_connected.set()
        try:
            while data := await reader.read(4096):
                self.on_bytes(data)
        except (ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                self.client_connected.clear()
            writer.close()

    async def write(self, data: bytes) -> None:
        if self._writer is None:
            await self.client_connected.wait()
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def drop_client(self) -> None:
        """Pull the cable on the current connection."""
        w, self._writer = self._writer, None
        self.client_connected.clear()
        if w is not None:
            w.close()
            try:
                await w.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def close(self) -> None:
        await self.drop_client()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


# --- CLI -----------------------------------------------------------------------------------


async def _folder(args: argparse.Namespace) -> int:
    """Act as the device's software on a GDT exchange folder: wait for the request, write the result."""
    dev = GdtFolderDevice(Path(args.gdt_dir), load_scenario(args.scenario, "gdt"), args.shape)
    print(f"simulated GDT software ({args.shape}) on {dev.folder}; waiting for {dev.request_path.name}", flush=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.wait
    while not dev.request_path.exists():
        if loop.time() > deadline:
            print(f"error: no request {dev.request_path.name} within {args.wait:g} s", file=sys.stderr)
            return 1
        await asyncio.sleep(0.2)
    print(f"wrote {dev.respond()}", flush=True)
    return 0


async def _main(args: argparse.Namespace) -> int:
    if args.gdt_dir is not None:
        return await _folder(args)
    sim = SpirometerSimulator(load_scenario(args.scenario, args.protocol), args.protocol)
    if args.tcp is not None:
        ep = TcpEndpoint(sim.on_bytes, args.tcp)
        print(f"simulated spirometer ({sim.protocol}) on {await ep.open()}", flush=True)
        while True:
            await ep.client_connected.wait()
            print("collector connected; sending session", flush=True)
            for o in await sim.run_session(ep.write):
                print(f"{o.message_id}: ack={o.ack} attempts={o.attempts} {o.ack_text}", flush=True)
            if not args.repeat:
                await ep.close()
                return 0
            await ep.drop_client()
    if sys.platform.startswith("win"):
        print("--pty needs a POSIX system; use --tcp PORT and socket://127.0.0.1:PORT", file=sys.stderr)
        return 2
    pty_ep = PtyEndpoint(sim.on_bytes, args.link)
    print(f"simulated spirometer ({sim.protocol}) on {pty_ep.open()}", flush=True)
    await asyncio.sleep(args.start_delay)
    for o in await sim.run_session(pty_ep.write):
        print(f"{o.message_id}: ack={o.ack} attempts={o.attempts} {o.ack_text}", flush=True)
    await asyncio.sleep(args.linger)
    pty_ep.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulators.spirometer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=("hl7", "gdt"), default=None)
    ap.add_argument("--scenario", required=True, help="TOML scenario (see simulators/scenarios/)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT (0 = any free port)")
    where.add_argument("--pty", action="store_true", help="use a pseudo-terminal (default)")
    where.add_argument("--gdt-dir", help="act as the device's GDT software on this exchange folder (the file route)")
    ap.add_argument("--shape", choices=FOLDER_SHAPES, default="trials", help="--gdt-dir: the result record's shape")
    ap.add_argument("--wait", type=float, default=600.0, help="--gdt-dir: seconds to wait for the collector's request")
    ap.add_argument("--link", help="stable symlink to the pty slave (pty mode)")
    ap.add_argument("--start-delay", type=float, default=3.0, help="seconds before sending (pty mode)")
    ap.add_argument("--linger", type=float, default=5.0, help="seconds to keep the pty open after the session")
    ap.add_argument("--repeat", action="store_true", help="tcp: send the session to every new connection")
    args = ap.parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""A simulated BLE oximeter: plays a scenario and sends the real notification bytes.

Frames are produced by the same codecs the collector decodes with (in reverse),
so a simulated night exercises the real parsers end to end.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Awaitable, Callable

import numpy as np

from collector.clock import Clock
from drivers.protocols import berrymed, cts, nonin, o2ring, plx
from drivers.protocols.common import ParserStats, RacpCode, RacpOpcode
from drivers.protocols.registry import PROFILES
from simulators.scenario import DISCONNECTED, FINGER_OUT, GARBAGE, SILENT, Scenario, Timeline, build_timeline

if TYPE_CHECKING:
    from bleak.assigned_numbers import CharacteristicPropertyName

    from simulators.ble_backend import SimulatedClientBackend

log = logging.getLogger(__name__)

DIS_SERVICE = "0000180a-0000-1000-8000-00805f9b34fb"
DIS_MODEL = "00002a24-0000-1000-8000-00805f9b34fb"
DIS_SERIAL = "00002a25-0000-1000-8000-00805f9b34fb"
DIS_FIRMWARE = "00002a26-0000-1000-8000-00805f9b34fb"
PLX_FEATURES = "00002a60-0000-1000-8000-00805f9b34fb"
STORED_STATUS = (1 << 9) | (1 << 5)  # measurement status of a stored record: from storage, measurement ongoing
RING_BLOCK = 512  # bytes per answer to an O2Ring file read


def encode_tick(protocol: str, state: int, spo2: float, pulse: float, index: int) -> list[bytes]:
    """The notification payload(s) a device sends for one tick of its timeline."""
    if protocol == "plx":
        if state == FINGER_OUT:
            return [plx.encode_continuous(None, None, meas_status=1 << 13, dev_status=1 << 11)]
        return [plx.encode_continuous(spo2, pulse, meas_status=1 << 5, dev_status=0)]
    if protocol == "nonin":
        if state == FINGER_OUT:
            return [nonin.encode_frame(None, None, counter=index & 0xFFFF, status=0x48)]
        return [nonin.encode_frame(int(spo2), int(pulse), counter=index & 0xFFFF, status=0x54)]
    if protocol == "berrymed":
        if state == FINGER_OUT:
            packet = berrymed.encode_packet(None, None, pleth=0, no_finger=True)
        else:
            packet = berrymed.encode_packet(int(spo2), int(pulse), pleth=50 + index % 30)
        # Every seventh packet arrives split over two notifications, as real UART bridges do.
        return [packet[:2], packet[2:]] if index % 7 == 3 else [packet]
    if protocol == "o2ring":
        if state == FINGER_OUT:
            data = o2ring.encode_realtime(None, None, worn=False)
        else:
            data = o2ring.encode_realtime(int(spo2), int(pulse), motion=index % 5)
        return o2ring.split_notifications(o2ring.encode_answer(0, data))
    raise ValueError(f"unknown protocol {protocol}")


def ring_records(tl: Timeline) -> list[o2ring.NightRecord]:
    """What a ring stores of the whole night, one record per 4 s, link or no link.

    The ring measures on the finger whatever the radio does: only "finger out"
    becomes an invalid record; a disconnect, a silence or radio garbage does not.
    """
    offsets = tl.offset_s
    out: list[o2ring.NightRecord] = []
    if offsets.size == 0:
        return out
    t = 0.0
    end = float(offsets[-1])
    while t <= end:
        k = max(0, int(np.searchsorted(offsets, t, side="right")) - 1)
        if tl.state[k] == FINGER_OUT:
            out.append(o2ring.NightRecord(None, None, 0, False))
        else:
            out.append(o2ring.NightRecord(int(tl.spo2[k]), int(tl.pulse[k]), k % 5, False))
        t += o2ring.RECORD_INTERVAL_S
    return out


class SimulatedOximeter:
    """One device: its GATT table, its link state, and the night it plays."""

    def __init__(self, scenario: Scenario, clock: Clock, *, serial_number: str = "SIM0001", keep_delivered: bool = True) -> None:
        self.scenario = scenario
        self.timeline: Timeline = build_timeline(scenario)
        self.clock = clock
        self.profile = PROFILES[scenario.protocol]
        self.address = scenario.address
        self.name = scenario.name
        self.serial_number = serial_number
        self.reachable = True
        self.finished = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.started_at: float | None = None
        #: (host time, tick index) of every tick delivered to a subscriber: the truth for tests.  Off for
        #: ``collector run --simulate`` and the demo: a day of 8 beds is 700 000 tuples (some 75 MB) nobody reads.
        self.keep_delivered = keep_delivered
        self.delivered: list[tuple[float, int]] = []
        self.delivered_count = 0
        #: Awaited after every tick that reached the air (a stack over real I/O sets it: see simulators.bluez).
        self.settle: Callable[[], Awaitable[None]] | None = None
        self._client: SimulatedClientBackend | None = None
        self._subs: dict[str, Callable[[bytearray], None]] = {}
        self._rng = np.random.default_rng(scenario.seed + 1)
        #: Device memory (PLX with ``memory``): (device wall second, tick index) of each record it keeps.
        self.memory: list[tuple[int, int]] = []
        self.racp_requests: list[bytes] = []
        #: False: a device that sends its records but never the closing response (the collector must time out).
        self.racp_completes = True
        self._device_t0: float = 0.0  # device wall time (as if UTC) at the first tick
        self._ring_frames = o2ring.FrameAssembler(o2ring.REQUEST_HEAD, ParserStats())
        self._ring_poll_pending = False
        self._ring_open: bytes | None = None

    # -- the device clock ------------------------------------------------------------------
    def device_clock(self, t: float) -> float:
        """The device's wall time at host time ``t``: its ticks fall on its whole seconds (it measures on its clock)."""
        if self.started_at is None:
            return t + self.scenario.clock_offset_s
        return self._device_t0 + (t - self.started_at) * (1.0 + self.scenario.clock_drift_ppm * 1e-6)

    # -- GATT ------------------------------------------------------------------------------
    def gatt(self) -> dict[str, dict[str, tuple[CharacteristicPropertyName, ...]]]:
        table: dict[str, dict[str, tuple[CharacteristicPropertyName, ...]]] = {
            DIS_SERVICE: {DIS_MODEL: ("read",), DIS_SERIAL: ("read",), DIS_FIRMWARE: ("read",)},
            self.profile.service_uuid: {u: ("notify",) for u in self.profile.notify_uuids},
        }
        for u in self.profile.read_uuids:
            if u != cts.CURRENT_TIME_UUID:
                table[self.profile.service_uuid][u] = ("read",)
        if self.scenario.memory:
            table[self.profile.service_uuid][plx.PLX_SPOT_CHECK_UUID] = ("indicate",)
            table[self.profile.service_uuid][plx.RACP_UUID] = ("write", "indicate")
            table[cts.CTS_SERVICE_UUID] = {cts.CURRENT_TIME_UUID: ("read",)}
        for u, _ in self.profile.start_writes:
            table[self.profile.service_uuid][u] = ("write",)
        if self.profile.poll is not None:
            table[self.profile.service_uuid][self.profile.poll[0]] = ("write", "write-without-response")
        return table

    def read(self, uuid: str) -> bytes:
        if uuid == DIS_MODEL:
            return f"SIM-{self.scenario.protocol.upper()}".encode()
        if uuid == DIS_SERIAL:
            return self.serial_number.encode()
        if uuid == DIS_FIRMWARE:
            return b"1.0.0-sim"
        if uuid == PLX_FEATURES:
            storage = 0b1100 if self.scenario.memory else 0  # measurement storage + timestamp for spot-check
            return plx.encode_features(storage, meas_status_support=0xFFE0, dev_status_support=0xFFFF)
        if uuid == cts.CURRENT_TIME_UUID and self.scenario.memory:
            return cts.encode_current_time(self.device_clock(self.clock.now()))
        raise KeyError(uuid)

    def write(self, uuid: str, data: bytes) -> None:
        log.debug("%s: write %s %s", self.address, uuid, data.hex())
        if uuid == plx.RACP_UUID and self.scenario.memory:
            self.racp_requests.append(bytes(data))
            # Indications follow the write's response, as on the air.
            asyncio.get_running_loop().call_soon(self._answer_racp, bytes(data))
        if self.scenario.protocol == "o2ring" and uuid == o2ring.O2RING_WRITE_UUID:
            self._ring_request(data)

    # -- RACP --------------------------------------------------------------------------------
    def _record(self, device_s: int, k: int) -> bytes:
        wall = datetime.fromtimestamp(device_s, timezone.utc)
        ts = (wall.year, wall.month, wall.day, wall.hour, wall.minute, wall.second)
        if self.timeline.state[k] == FINGER_OUT:
            return plx.encode_spot_check(None, None, timestamp=ts, meas_status=(1 << 9) | (1 << 13), dev_status=1 << 11)
        return plx.encode_spot_check(float(self.timeline.spo2[k]), float(self.timeline.pulse[k]), timestamp=ts,
                                     meas_status=STORED_STATUS, dev_status=0)

    def _answer_racp(self, data: bytes) -> None:
        racp = self._subs.get(plx.RACP_UUID)
        spot = self._subs.get(plx.PLX_SPOT_CHECK_UUID)
        if racp is None:
            return  # indications not enabled: a real device answers nothing
        if len(data) < 2:
            racp(bytearray(plx.encode_racp_response(data[0] if data else 0, RacpCode.INVALID_OPERATOR)))
            return
        op, operator = data[0], data[1]
        if op in (RacpOpcode.REPORT_RECORDS, RacpOpcode.REPORT_COUNT, RacpOpcode.DELETE_RECORDS) and operator != 0x01:
            racp(bytearray(plx.encode_racp_response(op, RacpCode.OPERATOR_NOT_SUPPORTED)))
        elif op == RacpOpcode.REPORT_COUNT:
            racp(bytearray(plx.encode_racp_count_response(len(self.memory))))
        elif op == RacpOpcode.DELETE_RECORDS:
            self.memory.clear()
            racp(bytearray(plx.encode_racp_response(op, RacpCode.SUCCESS)))
        elif op == RacpOpcode.REPORT_RECORDS:
            if not self.memory:
                racp(bytearray(plx.encode_racp_response(op, RacpCode.NO_RECORDS)))
                return
            for device_s, k in self.memory:
                if spot is not None:
                    spot(bytearray(self._record(device_s, k)))
            if self.racp_completes:
                racp(bytearray(plx.encode_racp_response(op, RacpCode.SUCCESS)))
        elif op == RacpOpcode.ABORT:
            racp(bytearray(plx.encode_racp_response(op, RacpCode.SUCCESS)))
        else:
            racp(bytearray(plx.encode_racp_response(op, RacpCode.OPCODE_NOT_SUPPORTED)))

    def _remember(self, t: float, k: int, delivered: bool) -> None:
        mode = self.scenario.memory
        if mode == "all" or (mode == "undelivered" and not delivered):
            self.memory.append((int(self.device_clock(t) + 1e-6) // 1, k))

    # -- O2Ring: answers requests; live readings wait for the next tick --------------------------
    #: The ring clock's offset from UTC (it keeps local time; a ward in China: UTC+8).
    ring_utc_offset = timedelta(hours=8)

    def ring_file_name(self) -> str:
        start = self.started_at if self.started_at is not None else self.clock.now()
        return self._ring_local(start).strftime("%Y%m%d%H%M%S")

    def _ring_local(self, t_utc: float) -> datetime:
        return (datetime.fromtimestamp(t_utc, tz=timezone.utc) + self.ring_utc_offset).replace(tzinfo=None)

    def ring_night_file(self) -> bytes:
        """The night the ring stored (the whole timeline at 4 s), as the ring's file bytes."""
        start = self.started_at if self.started_at is not None else self.clock.now()
        return o2ring.encode_night_file(self._ring_local(start), ring_records(self.timeline))

    def _ring_request(self, data: bytes) -> None:
        for req in self._ring_frames.push(data):
            if req.code == o2ring.CMD_REALTIME:
                self._ring_poll_pending = True  # answered with the next tick's reading
                continue
            self._ring_send(self._ring_answer(req))

    def _ring_answer(self, req: o2ring.Frame) -> bytes:
        if req.code == o2ring.CMD_INFO:
            files = self.ring_file_name() if self.started_at is not None else ""
            info = {"CurTIME": self._ring_local(self.clock.now()).strftime("%Y-%m-%d,%H:%M:%S"), "FileList": files + ","}
            return o2ring.encode_answer(0, json.dumps(info).encode("ascii") + b"\x00")
        if req.code == o2ring.CMD_FILE_OPEN:
            name = req.data.rstrip(b"\x00").decode("ascii", "replace")
            if self.started_at is None or name != self.ring_file_name():
                return o2ring.encode_answer(0x01)
            self._ring_open = self.ring_night_file()
            return o2ring.encode_answer(0, len(self._ring_open).to_bytes(4, "little"))
        if req.code == o2ring.CMD_FILE_READ:
            if self._ring_open is None:
                return o2ring.encode_answer(0x01, block=req.block)
            piece = self._ring_open[req.block * RING_BLOCK:(req.block + 1) * RING_BLOCK]
            return o2ring.encode_answer(0 if piece else 0x01, piece, block=req.block)
        if req.code == o2ring.CMD_FILE_CLOSE:
            self._ring_open = None
            return o2ring.encode_answer(0)
        return o2ring.encode_answer(0x01)

    def _ring_send(self, frame: bytes) -> None:
        sink = self._subs.get(o2ring.O2RING_NOTIFY_UUID)
        if sink is None:
            return
        for chunk in o2ring.split_notifications(frame):
            sink(bytearray(chunk))

    # -- link ------------------------------------------------------------------------------
    def attach(self, client: SimulatedClientBackend) -> None:
        if self._client is not None and self._client is not client:
            self._client.lost()  # a device serves one central at a time
        self._client = client
        self._subs = {}

    def detach(self, client: SimulatedClientBackend) -> None:
        if self._client is client:
            self._client = None
            self._subs = {}

    def subscribe(self, client: SimulatedClientBackend, uuid: str, callback: Callable[[bytearray], None]) -> None:
        if client is self._client:
            self._subs[uuid] = callback
            self.subscribed.set()

    def unsubscribe(self, client: SimulatedClientBackend, uuid: str) -> None:
        if client is self._client:
            self._subs.pop(uuid, None)

    def _drop_link(self) -> None:
        client, self._client, self._subs = self._client, None, {}
        if client is not None:
            client.lost()

    # -- the night -------------------------------------------------------------------------
    async def run(self) -> None:
        """Play the timeline on the clock; tick k happens at start + offset[k].

        The night starts when the collector first subscribes (the finger goes in as
        recording starts), so real-time waits before that (scanning) cannot eat into
        the scenario while a virtual clock runs ahead.
        """
        tl = self.timeline
        await self.subscribed.wait()
        self.started_at = t0 = self.clock.now()
        self._device_t0 = float(round(t0 + self.scenario.clock_offset_s))
        notify_uuid = self.profile.notify_uuids[0]
        offsets, spo2, pulse, states = tl.offset_s.tolist(), tl.spo2.tolist(), tl.pulse.tolist(), tl.state.tolist()
        for k in range(len(offsets)):
            delay = t0 + offsets[k] - self.clock.now()
            if delay > 0:
                await self.clock.sleep(delay)
            state = states[k]
            if state == DISCONNECTED:
                if self.reachable:
                    self.reachable = False
                    self._drop_link()
                    if self.settle is not None:
                        await self.settle()
                self._remember(self.clock.now(), k, False)  # out of range, still measuring
                continue
            self.reachable = True
            if state == SILENT:
                continue
            sink = self._subs.get(notify_uuid)
            if sink is None:
                if state != GARBAGE:
                    self._remember(self.clock.now(), k, False)
                continue
            if state == GARBAGE:
                # Truncated noise: shorter than any well-formed frame, and (for the
                # BerryMed stream) without a sync bit, so it can only be an error.
                noise = self._rng.integers(0, 128, int(self._rng.integers(1, 4))).astype(np.uint8).tobytes()
                sink(bytearray(noise))
                continue
            if self.scenario.protocol == "o2ring":
                if not self._ring_poll_pending:
                    continue  # a polled ring says nothing unless asked
                self._ring_poll_pending = False
            for payload in encode_tick(self.scenario.protocol, state, spo2[k], pulse[k], k):
                sink(bytearray(payload))
            self.delivered_count += 1
            if self.keep_delivered:
                self.delivered.append((self.clock.now(), k))
            if self.scenario.memory == "all":
                self._remember(self.clock.now(), k, True)
            if self.settle is not None:
                await self.settle()
        self.finished.set()

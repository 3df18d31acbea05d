"""Spirometry in the daemon: a serial port per session, results stored and judged as they arrive.

Why it is built this way:

* The port is opened *before* anything is written, so a wrong port is one
  clear error and leaves no session behind.
* One consumer task per session handles, in arrival order, the bytes and the
  link events the transport queues: decode -> store (one transaction with its
  audit row) -> acknowledge.  The device hears "accepted" only once the data is
  durable; a message it resends because an ACK was lost is recognised by its
  id and not stored twice.
* What the device says about the person is never stored: its sex and birth date are only
  compared with the subject's recorded facts, and a contradiction refuses the whole message
  (an event, an audit row and an HL7 ``AE``) instead of attaching another person's blows to
  this subject.  The hospital number the device holds is expected to differ from the
  pseudonym and is not compared.  Each message is kept as received with every identifying
  field masked (``spirometry_messages``, never exported), and the capture file gets that
  masked copy rather than the raw line bytes.
* After every accepted message the whole session is re-evaluated from the
  database (collector.spirometry.store), so the live result, ``spirometry
  recompute`` and ``spirometry show`` cannot disagree.
* A pulled cable is a ``port_lost`` gap; the transport reopens the port.  On
  daemon shutdown open sessions become ``interrupted`` and the next start
  resumes them (through ``daemon.startup_hooks``) with a ``daemon_down`` gap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
from typing import Any, Literal, Mapping

from collector.storage.sqlite_lib import sqlite_utils
from pydantic import BaseModel, Field

from collector.errors import Conflict, DeviceError, InvalidInput
from collector.spirometry import store
from collector.spirometry.files import CONTRADICTING_FIELDS, subject_mismatch
from collector.spirometry.gdt_folder import GdtFolderRecorder, check_folder, folder_address, is_folder_address
from collector.storage import audit, repo
from drivers.serial_transport import LinkEvent, PortNotAllowed, SerialPortError, SerialTransport, check_port_url
from drivers.spirometry.registry import SpirometerModel, UnknownSpirometerModel, get_model, make_decoder, model_from_dict
from drivers.spirometry.results import DecodedMessage, DecodeError, SpiroEvent

log = logging.getLogger(__name__)

PROTOCOLS = ("gdt", "hl7")
SHUTDOWN_REASON = "daemon_shutdown"
DEFAULT_MODELS = {"hl7": "generic-hl7", "gdt": "generic-gdt"}


def spirometry_config(config: dict[str, Any]) -> dict[str, Any]:
    """The ``[spirometry]`` table (empty dict when a config has none)."""
    return dict(config.get("spirometry") or {})


def configured_models(cfg: dict[str, Any]) -> dict[str, SpirometerModel]:
    out = {}
    for name, table in (cfg.get("models") or {}).items():
        try:
            out[name] = model_from_dict(name, table)
        except (UnknownSpirometerModel, KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"config [spirometry.models.{name}] is not usable ({exc}); fix it (protocol, port, codes)") from None
    return out


def resolve_model(cfg: dict[str, Any], protocol: str | None, model: str | None) -> SpirometerModel:
    """The device model for a session from --protocol and/or --model; one-line errors."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise InvalidInput(f"unknown spirometer protocol {protocol!r}; known: {', '.join(PROTOCOLS)} (or give --model NAME)")
    extra = configured_models(cfg)
    if model is None:
        if protocol is None:
            raise InvalidInput(f"a spirometry session needs --protocol ({', '.join(PROTOCOLS)}) or --model NAME")
        model = {**DEFAULT_MODELS, **(cfg.get("default_model") or {})}[protocol]
    try:
        m = get_model(model, extra)
    except UnknownSpirometerModel:
        known = ", ".join(sorted({*extra, *_builtin_models()}))
        raise InvalidInput(f"unknown spirometer model {model!r}; known: {known} (add it under [spirometry.models] in the config)") from None
    if protocol is not None and m.protocol != protocol:
        raise InvalidInput(f"spirometer model {m.name} speaks {m.protocol}, not {protocol}; drop --protocol or choose another --model")
    return m


def socket_hosts(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """Hosts a ``socket://`` spirometer port may name (serial-over-IP adapters the site lists)."""
    hosts = cfg.get("socket_hosts", [])
    if not isinstance(hosts, (list, tuple)) or not all(isinstance(h, str) for h in hosts):
        raise InvalidInput(f"config [spirometry] socket_hosts must be a list of host names or addresses, got {hosts!r}")
    return tuple(hosts)


def _builtin_models() -> list[str]:
    from drivers.spirometry.registry import MODELS

    return list(MODELS)


class SpirometryRecorder:
    """One spirometry session on one serial port: transport -> decoder -> store -> ACK."""

    def __init__(self, service: "SpirometryService", model: SpirometerModel, url: str) -> None:
        self.service = service
        self.daemon = service.daemon
        self.model = model
        self.url = url
        cfg = service.cfg
        self.decoder = make_decoder(model, clock=self.daemon.clock)
        self.queue: asyncio.Queue[tuple[str, float, Any]] = asyncio.Queue()
        self.transport = SerialTransport(
            url, model.port, self._on_data, self.daemon.clock, self._on_link,
            backoff_initial_s=float(cfg.get("backoff_initial_s", 0.5)), backoff_max_s=float(cfg.get("backoff_max_s", 10.0)),
            socket_hosts=socket_hosts(cfg),
        )
        self.idle_s = float(cfg.get("gdt_idle_s", 2.0))
        self.session_id: int | None = None
        self.subject_id: str | None = None
        self.started_utc: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._gap_id: int | None = None
        self.connects = 0
        self.messages = 0
        self.refused = 0
        self.duplicates = 0
        self.manoeuvres = 0
        self.last_result: dict[str, Any] | None = None
        self.last_error: str | None = None

    # -- transport callbacks (event loop) -------------------------------------------------
    def _on_data(self, t: float, data: bytes) -> None:
        # Raw line bytes are not captured: they carry the device's patient data.  Each message goes
        # to the capture masked once decoded (_capture_masked).
        self.queue.put_nowait(("data", t, data))

    def _capture_masked(self, t: float, masked: bytes | None) -> None:
        if self.daemon.capture is not None and masked is not None:
            self.daemon.capture.frame(t, self.url, self.model.protocol, "rx-masked", masked)

    def _on_link(self, ev: LinkEvent) -> None:
        if self.daemon.capture is not None:
            self.daemon.capture.event(ev.t, self.url, self.model.protocol, ev.kind, ev.detail or None)
        self.queue.put_nowait(("link", ev.t, ev))

    # -- lifecycle ------------------------------------------------------------------------
    def bind(self, session: dict[str, Any], gap_id: int | None = None) -> None:
        self.session_id, self.subject_id, self.started_utc = session["id"], session["subject_id"], session["started_utc"]
        self._gap_id = gap_id

    def start(self) -> None:
        self.task = asyncio.create_task(self._consume(), name=f"spirometry-{self.session_id}")

    async def stop(self, t: float) -> None:
        """Close the port, handle what already arrived, end any open gap at ``t``."""
        await self.transport.stop()
        self.queue.put_nowait(("stop", t, None))
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        await self._close_gap(t)

    async def _next(self, pending: bool) -> tuple[str, float, Any] | None:
        """Next queued item; None when a GDT line has been idle (records without 8100 end there)."""
        if not pending or self.model.protocol != "gdt":
            return await self.queue.get()
        get = asyncio.ensure_future(self.queue.get())
        timer = asyncio.ensure_future(self.daemon.clock.sleep(self.idle_s))
        await asyncio.wait({get, timer}, return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        if get.done():
            return get.result()
        get.cancel()
        return None

    async def _consume(self) -> None:
        pending = False
        while True:
            item = await self._next(pending)
            try:
                if item is None:
                    pending = False
                    await self._handle(self.daemon.clock.now(), self.decoder.end_of_input())
                    continue
                kind, t, payload = item
                if kind == "stop":
                    await self._handle(t, self.decoder.end_of_input())
                    return
                if kind == "data":
                    pending = True
                    await self._handle(t, self.decoder.feed(payload))
                else:
                    await self._link(t, payload)
            except Exception as exc:  # one bad event must not end the session's recording
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("spirometry session %s: failed to handle an event; recording continues", self.session_id)

    # -- decoded events --------------------------------------------------------------------
    async def _handle(self, t: float, events: list[SpiroEvent]) -> None:
        for ev in events:
            if isinstance(ev, DecodedMessage):
                await self._accepted(t, ev)
            else:
                await self._refused(t, ev)

    async def _accepted(self, t: float, msg: DecodedMessage) -> None:
        sid, subject = self.session_id, self.subject_id
        assert sid is not None
        blows = [r for r in msg.results if not r.summary]
        self._capture_masked(t, msg.masked_raw)
        contradicted: list[str] = []

        def raw(c: sqlite3.Connection, status: str, reason: str | None = None) -> None:
            store.insert_raw_message(c, sid, at=t, source=msg.source, message_id=msg.message_id, status=status, reason=reason,
                                     masked_raw=msg.masked_raw)

        def write(c: sqlite3.Connection) -> list[int] | None:
            if store.message_already_stored(c, sid, msg.message_id):
                raw(c, "duplicate")
                repo.add_event(c, sid, t_ms=_ms(t), kind="spirometry_duplicate_message", detail={"message_id": msg.message_id})
                audit.append(c, at=t, actor="collector", action="spirometry_message_duplicate", subject_id=subject, session_id=sid,
                             new={"message_id": msg.message_id}, reason="device resent a message already stored (ACK lost?)")
                return None
            mismatch = subject_mismatch(c, subject, msg)  # type: ignore[arg-type]
            contradicted[:] = [m for m in mismatch if m in CONTRADICTING_FIELDS]
            if contradicted:
                reason = (f"the device's patient data contradicts subject {subject}'s recorded {' and '.join(contradicted)}: "
                          f"check that the device holds this subject (nothing stored)")
                raw(c, "subject_mismatch", reason)
                repo.add_event(c, sid, t_ms=_ms(t), kind="spirometry_refused",
                               detail={"source": msg.source, "reason": reason, "location": "PID" if msg.source == "hl7" else "3103/3110",
                                       "message_id": msg.message_id, "device_subject_differs": mismatch})
                audit.append(c, at=t, actor="collector", action="spirometry_message_refused", subject_id=subject, session_id=sid,
                             new={"message_id": msg.message_id, "device_subject_differs": mismatch}, reason=reason)
                return None
            raw(c, "accepted")
            ids = store.insert_message(c, sid, msg, at=t)
            detail: dict[str, Any] = {}
            if msg.warnings:
                detail["warnings"] = list(msg.warnings)
            if mismatch:
                detail["device_subject_differs"] = mismatch
            if detail:
                repo.add_event(c, sid, t_ms=_ms(t), kind="spirometry_message_notes", detail={"message_id": msg.message_id, **detail})
            audit.append(c, at=t, actor="collector", action="spirometry_message_received", subject_id=subject, session_id=sid,
                         new={"message_id": msg.message_id, "source": msg.source, "manoeuvres": len(blows),
                              "summaries": len(msg.results) - len(blows), "numbers": [r.number for r in blows]})
            return ids

        ids = await self.daemon.write(write)
        if contradicted:
            self.refused += 1
            log.warning("spirometry session %s: message %s refused: the device's %s contradict the subject's recorded facts",
                        sid, msg.message_id, "/".join(contradicted))
            if msg.refuse_ack is not None:
                await self._send(msg.refuse_ack)
            return
        if msg.ack is not None:
            await self._send(msg.ack)  # after the commit: "accepted" means stored
        if ids is None:
            self.duplicates += 1
            return
        self.messages += 1
        self.manoeuvres += len(blows)
        await self.recompute(t)

    async def _refused(self, t: float, err: DecodeError) -> None:
        sid, subject = self.session_id, self.subject_id
        self.refused += 1
        detail = {"source": err.source, "reason": err.reason, "location": err.location, "message_id": err.message_id}
        self._capture_masked(t, err.masked_raw)
        if self.daemon.capture is not None:
            self.daemon.capture.event(t, self.url, self.model.protocol, "refused", str(err))
        log.warning("spirometry session %s: device data refused: %s", sid, err)  # DecodeError text holds no patient data

        def write(c: sqlite3.Connection) -> None:
            if err.masked_raw is not None and sid is not None:
                store.insert_raw_message(c, sid, at=t, source=err.source, message_id=err.message_id, status="refused",
                                         reason=err.reason, masked_raw=err.masked_raw)
            repo.add_event(c, sid, t_ms=_ms(t), kind="spirometry_refused", detail=detail)
            audit.append(c, at=t, actor="collector", action="spirometry_message_refused", subject_id=subject, session_id=sid,
                         new={"message_id": err.message_id, "location": err.location}, reason=err.reason)

        await self.daemon.write(write)
        if err.ack is not None:
            await self._send(err.ack)

    async def _send(self, data: bytes) -> None:
        try:
            await self.transport.write(data)
        except SerialPortError as exc:  # the device resends; the duplicate is recognised
            self.last_error = str(exc)
            log.warning("spirometry session %s: could not send the acknowledgement: %s", self.session_id, exc)
            return
        if self.daemon.capture is not None:
            self.daemon.capture.frame(self.daemon.clock.now(), self.url, self.model.protocol, "tx", data)

    async def recompute(self, t: float) -> dict[str, Any]:
        assert self.session_id is not None and self.subject_id is not None
        self.last_result = await evaluate_and_store(self.daemon, self.service.cfg, self.session_id, self.subject_id, t)
        return self.last_result

    # -- link events ------------------------------------------------------------------------
    async def _link(self, t: float, ev: LinkEvent) -> None:
        sid, subject = self.session_id, self.subject_id
        if ev.kind == "connected":
            self.connects += 1
            reconnect = self._gap_id is not None
            await self._close_gap(t)
            if reconnect:
                await self.daemon.write(lambda c: audit.append(
                    c, at=t, actor="collector", action="device_connected", subject_id=subject, session_id=sid,
                    new={"kind": "spirometer", "connects": self.connects}))
            return
        # lost: the line closed, so whatever is half-received cannot complete
        await self._handle(t, self.decoder.end_of_input())
        if self._gap_id is None:
            start_ms = _ms(t)

            def open_gap(c: sqlite3.Connection) -> int:
                gid = repo.open_gap(c, sid, start_ms=start_ms, cause="port_lost", detail=ev.detail or None)  # type: ignore[arg-type]
                audit.append(c, at=t, actor="collector", action="device_lost", subject_id=subject, session_id=sid,
                             new={"cause": "port_lost"}, reason=ev.detail or None)
                return gid

            self._gap_id = await self.daemon.write(open_gap)
        log.warning("spirometry session %s: port lost (%s); reopening", sid, ev.detail)

    async def _close_gap(self, t: float) -> None:
        gid, self._gap_id = self._gap_id, None
        if gid is not None:
            await self.daemon.write(lambda c: repo.close_gap(c, gid, end_ms=_ms(t)))

    def status(self) -> dict[str, Any]:
        r = self.last_result or {}
        p = r.get("prediction") or {}
        return {
            "session_id": self.session_id, "subject_id": self.subject_id, "kind": "spirometry", "protocol": self.model.protocol,
            "model": self.model.name, "device": self.url, "link_state": "connected" if self.transport.connected else "reconnecting",
            "started_utc": self.started_utc, "messages": self.messages, "manoeuvres": self.manoeuvres, "refused": self.refused,
            "duplicates": self.duplicates, "parser": {"frames": self.decoder.stats.frames, "errors": self.decoder.stats.errors},
            "link": {"connects": self.connects, "last_error": self.transport.last_error}, "last_error": self.last_error,
            "result": {"valid": r.get("valid"), "fvc_l": r.get("fvc_l"), "grade_fvc": (r.get("fvc") or {}).get("grade"),
                       "equation": r.get("equation"), "fvc_pct_predicted": p.get("percent_predicted_fvc"),
                       "more_attempts_needed": r.get("more_attempts_needed"), "note": r.get("note")} if r else None,
        }


def _ms(t: float) -> int:
    return int(round(t * 1000))


async def evaluate_and_store(daemon: Any, cfg: dict[str, Any], sid: int, subject: str, t: float) -> dict[str, Any]:
    """Re-evaluate the whole session from the database, store the result (with audit) and announce it."""
    result = await asyncio.to_thread(_evaluate_stored, daemon, sid, cfg)

    def write(c: sqlite3.Connection) -> int:
        rid = store.insert_result(c, sid, result, at=t)
        p = result.get("prediction") or {}
        audit.append(c, at=t, actor="collector", action="spirometry_result", subject_id=subject, session_id=sid,
                     new={"result_id": rid, "valid": result["valid"], "equation": result["equation"],
                          "fvc_l": result["fvc_l"], "fvc_pct_predicted": p.get("percent_predicted_fvc"),
                          "grade_fvc": (result.get("fvc") or {}).get("grade"), "note": result["note"] or None})
        return rid

    await daemon.write(write)
    daemon.notify("spirometry_result", {"session_id": sid, "subject_id": subject, "result": result})
    return result


def _evaluate_stored(daemon: Any, session_id: int, cfg: dict[str, Any]) -> dict[str, Any]:
    conn = daemon.open_reader()
    try:
        return store.recompute(conn, session_id, cfg)
    finally:
        conn.close()


class SpirometryService:
    """``daemon.services['spirometry']``: starts, stops, resumes and reports spirometry sessions."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.recorders: dict[int, SpirometryRecorder | GdtFolderRecorder] = {}
        self._lock: asyncio.Lock | None = None

    @property
    def cfg(self) -> dict[str, Any]:
        return spirometry_config(self.daemon.config)

    def _mutex(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def start(
        self, subject_id: str, port_url: str, *, protocol: str | None = None, model: str | None = None,
        by: str | None = None, origin: str = "live", gdt_dir: str | None = None,
    ) -> dict[str, Any]:
        """Open the port, then create the session; nothing is created when the port cannot be opened.

        With ``gdt_dir`` (or no port, a GDT model and ``[spirometry] gdt_dir`` set) the session is fed
        through a GDT exchange folder instead (collector.spirometry.gdt_folder)."""
        by = by or self.daemon.operator
        repo.validate_subject_id(subject_id)
        port_url = (port_url or "").strip()
        if gdt_dir is not None and port_url:
            raise InvalidInput("give either --spirometer PORT or --gdt-dir DIR, not both")
        if gdt_dir is None and not port_url and self.cfg.get("gdt_dir") and protocol in (None, "gdt"):
            gdt_dir = str(self.cfg["gdt_dir"])
        if gdt_dir is not None:
            return await self._start_folder(subject_id, gdt_dir, protocol=protocol, model=model, by=by or "collector", origin=origin)
        if not port_url:
            raise InvalidInput("a spirometry session needs --spirometer PORT (e.g. /dev/ttyUSB0, COM3 or socket://127.0.0.1:5000)"
                               " or --gdt-dir DIR")
        try:
            check_port_url(port_url, socket_hosts(self.cfg))
        except PortNotAllowed as exc:
            raise InvalidInput(str(exc)) from None
        m = resolve_model(self.cfg, protocol, model)
        async with self._mutex():
            self._check_free(subject_id, port_url, label=f"port {port_url}", alternative=" or choose another port")
            for rec in self.recorders.values():
                if _same_port(rec.url, port_url):
                    raise Conflict(f"port {port_url} is already recording session {rec.session_id} (subject {rec.subject_id}); "
                                   f"stop that session first (collector session stop {rec.session_id}) or choose another port")
            rec = SpirometryRecorder(self, m, port_url)
            try:
                await rec.transport.start(require_first_open=True)
            except SerialPortError as exc:
                raise DeviceError(str(exc)) from None
            now = self.daemon.clock.now()
            settings = {"protocol": m.protocol, "model": m.name, "port": dataclasses.asdict(m.port),
                        **{k: v for k, v in store.evaluation_settings(self.cfg).items() if k != "quality_codes"},
                        **self.daemon.facts_for_session()}

            def create(c: sqlite3.Connection) -> dict[str, Any]:
                device_id = repo.upsert_device(c, kind="spirometer", protocol=m.protocol, address=port_url, at=now, model=m.name)
                sid = repo.open_session(c, subject_id=subject_id, kind="spirometry", device_id=device_id, by=by, at=now,
                                        origin=origin, settings=settings)
                return repo.get_session(c, sid)

            try:
                session = await self.daemon.write(create)
            except BaseException:
                await rec.transport.stop()
                raise
            rec.bind(session)
            self.recorders[session["id"]] = rec
            rec.start()
            self.daemon.notify("session_recording", {"session_id": session["id"], "kind": "spirometry"})
        return self.session_info(session["id"])

    def _check_free(self, subject_id: str, address: str, *, label: str | None = None, alternative: str = "") -> None:
        """The subject has no open spirometry session and no open session records from ``address``."""
        conn = self.daemon.open_reader()
        try:
            repo.get_subject(conn, subject_id)
            for s in repo.list_sessions(conn, subject_id=subject_id, state="open"):
                if s["kind"] == "spirometry":
                    raise Conflict(f"subject {subject_id} already has an open spirometry session ({s['id']}); "
                                   f"stop it first: collector session stop {s['id']}")
            for s in repo.list_sessions(conn, state="open"):
                if s["device_address"] is not None and _same_port(s["device_address"], address):
                    raise Conflict(f"{label or address} is already recording session {s['id']} (subject {s['subject_id']}); "
                                   f"stop that session first (collector session stop {s['id']}){alternative}")
        finally:
            conn.close()

    async def _start_folder(self, subject_id: str, gdt_dir: str, *, protocol: str | None, model: str | None, by: str,
                            origin: str) -> dict[str, Any]:
        """A session on a GDT exchange folder: the request record written first, then the session created."""
        from collector.eligibility.store import current_facts

        if protocol not in (None, "gdt"):
            raise InvalidInput("a GDT exchange folder carries GDT records: drop --protocol or use --protocol gdt")
        m = resolve_model(self.cfg, "gdt", model)
        folder = check_folder(gdt_dir, [str(self.cfg.get("gdt_dir") or ""), *self.cfg.get("gdt_dir_roots", [])])
        address = folder_address(folder)
        async with self._mutex():
            self._check_free(subject_id, address)
            for rec in self.recorders.values():
                if _same_port(rec.url, address):
                    raise Conflict(f"GDT folder {folder} is already used by session {rec.session_id}; stop it first")
            conn = self.daemon.open_reader()
            try:
                facts = {k: v.value for k, v in current_facts(sqlite_utils.Database(conn), subject_id).items()}
            finally:
                conn.close()
            rec = GdtFolderRecorder(self, m, folder)
            rec.subject_id = subject_id
            facts = {"sex": facts.get("sex"), "height_cm": _float(facts.get("height_cm")),
                     "weight_kg": _float(facts.get("weight_kg")),
                     "birth_date": facts["birth_date"].isoformat() if facts.get("birth_date") is not None else None}
            try:
                rec.folder.prepare()
                request = rec.folder.write_request(rec.request_bytes(facts))
            except OSError as exc:
                raise DeviceError(f"cannot write the GDT request into {folder}: {exc.strerror or exc}; check the folder") from None
            now = self.daemon.clock.now()
            settings = {"protocol": "gdt", "model": m.name, "route": "gdt-folder", "gdt_dir": str(folder),
                        "gdt_request": {"file": request.name, "version": str(self.cfg.get("gdt_version", "02.10")),
                                        "fields": _request_fields(request.read_bytes())},
                        **{k: v for k, v in store.evaluation_settings(self.cfg).items() if k != "quality_codes"}}

            def create(c: sqlite3.Connection) -> dict[str, Any]:
                device_id = repo.upsert_device(c, kind="spirometer", protocol="gdt", address=address, at=now, model=m.name)
                sid = repo.open_session(c, subject_id=subject_id, kind="spirometry", device_id=device_id, by=by, at=now,
                                        origin=origin, settings=settings)
                return repo.get_session(c, sid)

            session = await self.daemon.write(create)
            rec.bind(session)
            self.recorders[session["id"]] = rec
            rec.start()
        return self.session_info(session["id"])

    async def evaluate_and_store(self, session_id: int, subject_id: str, t: float) -> dict[str, Any]:
        """Judge a session again from the database and store the result (recorders of every kind use this)."""
        return await evaluate_and_store(self.daemon, self.cfg, session_id, subject_id, t)

    def session_info(self, session_id: int) -> dict[str, Any]:
        info = self.daemon.session_info(session_id)
        rec = self.recorders.get(session_id)
        if rec is not None:
            info["spirometry"] = rec.status()
        return info

    def detail(self, session_id: int) -> dict[str, Any]:
        conn = self.daemon.open_reader()
        try:
            out = store.session_detail(conn, session_id)
        finally:
            conn.close()
        rec = self.recorders.get(session_id)
        out["live"] = rec.status() if rec is not None else None
        return out

    async def recompute(self, session_id: int) -> dict[str, Any]:
        """Re-evaluate a session (e.g. after sex/height/birth date were recorded) and store the result."""
        rec = self.recorders.get(session_id)
        if rec is not None:
            return await rec.recompute(self.daemon.clock.now())
        conn = self.daemon.open_reader()
        try:
            session = repo.get_session(conn, session_id)
        finally:
            conn.close()
        if session["kind"] != "spirometry":
            raise InvalidInput(f"session {session_id} is a {session['kind']} session, not spirometry")
        return await evaluate_and_store(self.daemon, self.cfg, session_id, session["subject_id"], self.daemon.clock.now())

    async def stop_session_hook(self, session_id: int, t: float) -> None:
        """Called by daemon.stop_session for every session: close this one's port if it is ours."""
        rec = self.recorders.pop(session_id, None)
        if rec is not None:
            await rec.stop(t)
            if isinstance(rec, GdtFolderRecorder):
                rec.withdraw_request()

    async def shutdown(self) -> None:
        """Daemon shutdown: ports closed, open sessions kept as ``interrupted`` (resumed on the next start)."""
        now = self.daemon.clock.now()
        for sid, rec in list(self.recorders.items()):
            try:
                await rec.stop(now)
            finally:
                await self.daemon.write(lambda c, sid=sid: repo.close_session(
                    c, sid, state="interrupted", by="collector", at=now, reason=SHUTDOWN_REASON))
        self.recorders.clear()

    async def resume(self) -> list[int]:
        """Daemon start: sessions left open or interrupted continue, the downtime a ``daemon_down`` gap."""
        conn = self.daemon.open_reader()
        try:
            unfinished = sorted((r for state in ("open", "interrupted") for r in repo.list_sessions(conn, state=state)),
                                key=lambda r: r["id"])
            rows = [r for r in unfinished if r["kind"] == "spirometry" and r["origin"] in ("live", "simulated") and r["id"] not in self.recorders]
            last = {r["id"]: store.last_received_utc(conn, r["id"]) for r in rows}
        finally:
            conn.close()
        resumed = []
        for row in rows:
            settings = json.loads(row["settings_json"] or "{}")
            try:
                m = resolve_model(self.cfg, settings.get("protocol"), settings.get("model"))
            except InvalidInput as exc:
                log.error("spirometry session %s cannot be resumed: %s", row["id"], exc.message)
                continue
            if not row["device_address"]:
                log.error("spirometry session %s has no port recorded; cannot resume it", row["id"])
                continue
            folder_rec: GdtFolderRecorder | None = None
            if is_folder_address(row["device_address"]):
                from pathlib import Path

                folder_rec = GdtFolderRecorder(self, m, Path(settings.get("gdt_dir") or row["device_address"].split(":", 1)[1]))
            now = self.daemon.clock.now()
            since_iso = row["stopped_utc"] if row["state"] == "interrupted" and row["stopped_utc"] else (last[row["id"]] or row["started_utc"])
            from collector.clock import parse_utc

            since_ms = min(_ms(parse_utc(since_iso)), _ms(now))

            def reopen(c: sqlite3.Connection, row: dict[str, Any] = row, since_ms: int = since_ms) -> int:
                if row["state"] == "interrupted":
                    repo.resume_session(c, row["id"], by="collector", at=now)
                else:
                    audit.append(c, at=now, actor="collector", action="session_resumed", subject_id=row["subject_id"],
                                 session_id=row["id"], reason="collector restarted after an unclean stop")
                return repo.open_gap(c, row["id"], start_ms=since_ms, cause="daemon_down", detail="collector was not running")

            gap_id = await self.daemon.write(reopen)
            if folder_rec is not None:  # files that arrived meanwhile wait in the folder: nothing was lost
                folder_rec.bind(row, gap_id=gap_id)
                self.recorders[row["id"]] = folder_rec
                folder_rec.start()
                resumed.append(row["id"])
                log.info("resumed spirometry session %s (GDT folder) for subject %s", row["id"], row["subject_id"])
                continue
            rec = SpirometryRecorder(self, m, row["device_address"])
            rec.bind(row, gap_id=gap_id)
            self.recorders[row["id"]] = rec
            self.daemon.notify("session_recording", {"session_id": row["id"], "kind": "spirometry"})
            await rec.transport.start()  # keeps trying until the port is there
            rec.start()
            resumed.append(row["id"])
            log.info("resumed spirometry session %s for subject %s", row["id"], row["subject_id"])
        return resumed

    def status(self) -> list[dict[str, Any]]:
        return [rec.status() for rec in self.recorders.values()]


def _float(v: Any) -> float | None:
    return float(v) if v is not None else None


def _request_fields(data: bytes) -> list[str]:
    """Field ids the request record carried (recorded in the session settings; values stay out)."""
    from drivers.spirometry.gdt import parse_request

    return sorted(parse_request(data))


def _same_port(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def attach(daemon: Any) -> None:
    svc = SpirometryService(daemon)
    daemon.services["spirometry"] = svc
    daemon.status_providers["spirometry"] = svc.status
    daemon.shutdown_hooks.append(svc.shutdown)
    hooks = getattr(daemon, "startup_hooks", None)
    if hooks is not None:
        hooks.append(svc.resume)
    else:  # pragma: no cover - older daemon without startup hooks
        log.warning("daemon has no startup_hooks: interrupted spirometry sessions will not resume automatically")


# -- control API ------------------------------------------------------------------------------
class SpirometrySessionIn(BaseModel):
    subject_id: str = Field(min_length=1, max_length=64)
    kind: Literal["spirometry"] = "spirometry"
    spirometer: str | None = Field(default=None, max_length=300, description="serial port: /dev/ttyUSB0, COM3 or socket://host:port")
    gdt_dir: str | None = Field(default=None, min_length=1, max_length=1000, description="GDT exchange folder (instead of a port)")
    protocol: str | None = Field(default=None, max_length=20, description="hl7 or gdt")
    model: str | None = Field(default=None, max_length=100, description="spirometer model from the config")
    by: str | None = Field(default=None, max_length=100)


def make_router(daemon: Any, auth: Any) -> Any:
    from fastapi import APIRouter, Depends

    router = APIRouter(dependencies=[Depends(auth)], tags=["spirometry"])

    from collector.users.roles import INVESTIGATOR, TECHNICIAN

    @router.post("/spirometry/sessions", status_code=201, dependencies=[Depends(auth.roles(TECHNICIAN))])
    async def start_session(body: SpirometrySessionIn) -> dict[str, Any]:
        return await daemon.services["spirometry"].start(body.subject_id, body.spirometer or "", protocol=body.protocol,
                                                         model=body.model, by=body.by, gdt_dir=body.gdt_dir)

    @router.get("/spirometry/sessions/{session_id}")
    async def get_session(session_id: int) -> dict[str, Any]:
        return daemon.services["spirometry"].detail(session_id)

    @router.post("/spirometry/sessions/{session_id}/recompute", dependencies=[Depends(auth.roles(TECHNICIAN, INVESTIGATOR))])
    async def recompute(session_id: int) -> dict[str, Any]:
        return await daemon.services["spirometry"].recompute(session_id)

    return router


__all__ = ["SpirometryRecorder", "SpirometryService", "attach", "make_router", "resolve_model"]

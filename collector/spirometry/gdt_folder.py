"""A spirometry session fed through a GDT exchange folder (the GDT standard's file route).

Why it is built this way:

* At start the collector writes the request record (6302) for the subject into the folder as
  ``<device id><collector id>.gdt`` (receiver first, as GDT names files), written to a hidden
  temporary name and renamed, so the device's software never reads half a request.  It holds the
  screening pseudonym and, when recorded, sex, height and weight; the birth date only when the
  site sets ``[spirometry] gdt_request_birth_date`` (see drivers.spirometry.gdt.encode_request).
* The device's result file (6310; ``*.gdt`` or a GDT running number ``*.001``) is taken only
  when it is complete: its size and modification time unchanged over ``gdt_settle_s`` between
  two polls, and no shorter than the record length its field 8100 declares (after
  ``gdt_incomplete_s`` a file still short is taken and refused as cut short).
* It is processed in one transaction with a ``spirometry_files`` row keyed by the SHA-256 of its
  bytes (collector.spirometry.files), and only after the commit moved to ``done/`` or
  ``rejected/`` (with ``<name>.reason.txt``) by an atomic rename.  If the daemon dies between
  the commit and the rename, the next poll finds the file's hash already recorded and only
  moves it: each file is processed exactly once and none is lost.
* A result whose patient number (3000) is not the session's pseudonym is another person's and
  is rejected; sex and birth date are compared with the recorded facts like every other route.
* Polls run on the daemon's injected clock (``gdt_poll_s``); tests call :meth:`poll` directly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from collector.errors import InvalidInput
from collector.spirometry import files, store
from collector.storage.db import transaction
from drivers.spirometry.gdt import declared_record_length, encode_request
from drivers.spirometry.registry import SpirometerModel
from drivers.spirometry.results import DecodedMessage, DecodeError

log = logging.getLogger(__name__)

ADDRESS_PREFIX = "gdt-folder:"
_RESULT_NAME = re.compile(r"[^.].*\.(gdt|[0-9]{3})", re.I)
DONE, REJECTED = "done", "rejected"


def folder_address(path: Path) -> str:
    """The session's device address for a folder (local only, never exported)."""
    return ADDRESS_PREFIX + str(path)


def is_folder_address(address: str | None) -> bool:
    return bool(address) and str(address).startswith(ADDRESS_PREFIX)


def check_folder(raw: str, roots: Sequence[str] = ()) -> Path:
    """The exchange folder as an absolute path; one-line refusal when it is not a usable directory.

    Like serial ports, folders come from an allow-list: the collector writes a request into the folder
    and moves files out of it, so only ``roots`` (the site's ``gdt_dir`` and ``gdt_dir_roots``) and
    folders inside them are used."""
    try:
        path = Path(raw).expanduser()
        usable = path.is_dir()
    except (RuntimeError, ValueError, OSError):  # "~nobody", NUL bytes
        usable = False
    if not usable:
        raise InvalidInput(f"GDT folder {raw} does not exist or is not a directory; create it or fix --gdt-dir / [spirometry] gdt_dir")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise InvalidInput(f"GDT folder {raw} is not readable and writable by the collector; fix its permissions")
    resolved = path.resolve()
    allowed = [Path(r).expanduser().resolve() for r in roots if r]
    if not any(resolved == a or a in resolved.parents for a in allowed):
        raise InvalidInput(f"GDT folder {raw} is not under a folder the site allows; add it to [spirometry] gdt_dir_roots "
                           f"(allowed now: {', '.join(map(str, allowed)) or 'none'})")
    return resolved


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float


class ExchangeFolder:
    """The folder's file handling (no database): which files are complete, and moving them out."""

    def __init__(self, root: Path, request_name: str, settle_s: float, incomplete_s: float) -> None:
        self.root, self.request_name = root, request_name
        self.settle_s, self.incomplete_s = settle_s, incomplete_s
        self._seen: dict[str, _Seen] = {}

    def prepare(self) -> None:
        for sub in (DONE, REJECTED):
            (self.root / sub).mkdir(exist_ok=True)

    def write_request(self, data: bytes) -> Path:
        target = self.root / self.request_name
        tmp = self.root / f".{self.request_name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return target

    def candidates(self) -> list[Path]:
        out = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as exc:
            log.error("GDT folder %s cannot be listed: %s", self.root, exc)
            return []
        for e in entries:
            if e.name == self.request_name or not _RESULT_NAME.fullmatch(e.name):
                continue
            try:
                if e.is_file(follow_symlinks=False):
                    out.append(Path(e.path))
            except OSError:
                continue
        names = {p.name for p in out}
        for gone in set(self._seen) - names:
            del self._seen[gone]
        return out

    def ready(self, path: Path, now: float) -> bool:
        """Complete: unchanged since an earlier poll for ``settle_s`` and not shorter than its 8100 length."""
        try:
            st = path.stat()
        except OSError:
            return False
        prev = self._seen.get(path.name)
        if prev is None or (prev.size, prev.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._seen[path.name] = _Seen(st.st_size, st.st_mtime_ns, now)
            return False
        if now - prev.stable_since < self.settle_s or st.st_size == 0:
            return False
        try:
            with open(path, "rb") as f:
                head = f.read(64)
        except OSError:
            return False
        declared = declared_record_length(head)
        if declared is not None and st.st_size < declared and now - prev.stable_since < self.incomplete_s:
            return False  # still being written (GDT 2.x states the record length first)
        return True

    def move(self, path: Path, status: str, reason: str | None = None) -> Path:
        """Atomically rename into done/ or rejected/ (a new name if taken); a reason file beside a rejected one."""
        sub = self.root / (DONE if status == "accepted" else REJECTED)
        sub.mkdir(exist_ok=True)
        target = sub / path.name
        n = 1
        while target.exists():
            target = sub / f"{path.name}.{n}"
            n += 1
        if status != "accepted":
            note = sub / f"{target.name}.reason.txt"
            tmp = sub / f".{target.name}.reason.tmp"
            tmp.write_text((reason or "rejected") + "\n", encoding="utf-8")
            os.replace(tmp, note)
        os.replace(path, target)
        self._seen.pop(path.name, None)
        return target


class GdtFolderRecorder:
    """One spirometry session on one exchange folder: poll -> decode -> store (once per hash) -> move."""

    def __init__(self, service: Any, model: SpirometerModel, folder: Path) -> None:
        self.service = service
        self.daemon = service.daemon
        self.model = model
        self.folder_path = folder
        self.url = folder_address(folder)
        cfg = service.cfg
        self.poll_s = float(cfg.get("gdt_poll_s", 1.0))
        self.request_name = f"{cfg.get('gdt_device_id', 'SPIR')}{cfg.get('gdt_collector_id', 'ALSC')}.gdt"
        self.folder = ExchangeFolder(folder, self.request_name, float(cfg.get("gdt_settle_s", 2.0)),
                                     float(cfg.get("gdt_incomplete_s", 60.0)))
        self.session_id: int | None = None
        self.subject_id: str | None = None
        self.started_utc: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._poll_lock = asyncio.Lock()
        self.messages = self.refused = self.duplicates = self.manoeuvres = self.moved = 0
        self.last_result: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.request: bytes | None = None  # what this session wrote (withdrawn at stop if still there)

    # -- lifecycle ---------------------------------------------------------------------------
    def bind(self, session: dict[str, Any], gap_id: int | None = None) -> None:
        self.session_id, self.subject_id, self.started_utc = session["id"], session["subject_id"], session["started_utc"]

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"spirometry-gdt-{self.session_id}")

    async def stop(self, t: float) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        async with self._poll_lock:
            pass  # a poll under way finishes its file first

    def withdraw_request(self) -> None:
        """The session stopped: a request the device has not taken is removed, so no later test runs under it."""
        target = self.folder.root / self.request_name
        try:
            if target.exists() and target.read_bytes() == self.request:
                target.unlink()
        except OSError as exc:
            log.warning("spirometry session %s: could not remove the unanswered GDT request: %s", self.session_id, exc.strerror)

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad poll must not end the session
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("spirometry session %s: GDT folder poll failed; polling continues", self.session_id)
            await self.daemon.clock.sleep(self.poll_s)

    def request_bytes(self, facts: dict[str, Any]) -> bytes:
        cfg = self.service.cfg
        birth = facts.get("birth_date") if cfg.get("gdt_request_birth_date", False) else None
        request = encode_request(self.subject_id or "", receiver_id=str(cfg.get("gdt_device_id", "SPIR")),
                              sender_id=str(cfg.get("gdt_collector_id", "ALSC")), version=str(cfg.get("gdt_version", "02.10")),
                              sex=facts.get("sex"), height_cm=facts.get("height_cm"), weight_kg=facts.get("weight_kg"),
                              birth_date=birth)
        self.request = request
        return request

    # -- one poll ----------------------------------------------------------------------------
    async def poll(self) -> int:
        """Look at the folder once; returns how many files were moved out of it."""
        async with self._poll_lock:
            moved = 0
            for path in self.folder.candidates():
                if self.folder.ready(path, self.daemon.clock.now()):
                    moved += await self._take(path)
            return moved

    async def _take(self, path: Path) -> int:
        sid, subject = self.session_id, self.subject_id
        assert sid is not None and subject is not None
        try:
            raw = path.read_bytes()
        except OSError as exc:
            self.last_error = f"cannot read a result file in the GDT folder: {exc.strerror}"  # names may identify: not logged
            return 0
        digest = files.sha256(raw)
        conn = self.daemon.open_reader()
        try:
            prev = store.find_file(conn, digest)
        finally:
            conn.close()
        if prev is not None:  # processed before (a crash between commit and rename, or the same file again)
            self.duplicates += 1
            reason = prev["reason"] if prev["status"] == "rejected" else None
            if prev["session_id"] != sid or prev["route"] != "gdt-folder":
                return self._move(path, "rejected", f"this file was already processed ({prev['route']}) into session "
                                                    f"{prev['session_id']}: not read again", digest)
            return self._move(path, prev["status"], reason, digest)
        ev = files.decode_file(raw, "gdt", self.model)
        if isinstance(ev, DecodedMessage) and ev.subject is not None and ev.subject.patient_id not in (None, "", subject):
            ev = DecodeError("gdt", f"patient number (3000) is not this session's pseudonym {subject}: another subject's "
                                    "result; check the device's patient", location="3000", masked_raw=ev.masked_raw)
        t = self.daemon.clock.now()
        cfg = self.service.cfg

        def write(c: sqlite3.Connection) -> tuple[str, str | None, dict[str, Any] | None]:
            if store.find_file(c, digest) is not None:
                return ("duplicate", None, None)
            if isinstance(ev, DecodedMessage):
                try:
                    with transaction(c):
                        out = files.store_file_message(c, sid, subject, ev, raw=raw, route="gdt-folder", fmt="gdt", at=t,
                                                       actor="collector", cfg=cfg)
                    return ("accepted", None, out)
                except InvalidInput as exc:
                    reason, masked = exc.message, ev.masked_raw
            else:
                reason, masked = files.refusal_text(ev), ev.masked_raw
            with transaction(c):
                files.store_file_refusal(c, sid, subject, raw=raw, route="gdt-folder", fmt="gdt", reason=reason, masked=masked,
                                         at=t, actor="collector", source="gdt")
            return ("rejected", reason, None)

        status, reason, out = await self.daemon.write(write)
        if status == "duplicate":
            return 0  # the next poll moves it
        if status == "accepted":
            assert out is not None
            self.messages += 1
            self.manoeuvres += sum(1 for r in ev.results if not r.summary) if isinstance(ev, DecodedMessage) else 0
            self.last_result = out["result"]
            self.daemon.notify("spirometry_result", {"session_id": sid, "subject_id": subject, "result": out["result"]})
        else:
            self.refused += 1
            log.warning("spirometry session %s: GDT file refused: %s", sid, reason)
        return self._move(path, status, reason, digest)

    def _move(self, path: Path, status: str, reason: str | None, digest: str) -> int:
        try:
            self.folder.move(path, status, reason)
        except OSError as exc:  # stored already: the next poll finds its hash and moves it
            # The file is named by its hash: device software may put a patient's name in a file name.
            self.last_error = (f"cannot move result file sha256 {digest[:12]} to {DONE if status == 'accepted' else REJECTED}/: "
                               f"{exc.strerror or type(exc).__name__}")
            log.error("spirometry session %s: %s (it is stored; moving it again at the next poll)", self.session_id, self.last_error)
            return 0
        self.moved += 1
        return 1

    async def recompute(self, t: float) -> dict[str, Any]:
        assert self.session_id is not None and self.subject_id is not None
        self.last_result = await self.service.evaluate_and_store(self.session_id, self.subject_id, t)
        return self.last_result

    def status(self) -> dict[str, Any]:
        r = self.last_result or {}
        p = r.get("prediction") or {}
        return {
            "session_id": self.session_id, "subject_id": self.subject_id, "kind": "spirometry", "protocol": "gdt",
            "model": self.model.name, "device": str(self.folder_path), "link_state": "watching folder",
            "started_utc": self.started_utc, "messages": self.messages, "manoeuvres": self.manoeuvres, "refused": self.refused,
            "duplicates": self.duplicates, "files_moved": self.moved, "last_error": self.last_error,
            "parser": {"frames": self.messages, "errors": self.refused}, "link": {"connects": 0, "last_error": self.last_error},
            "result": {"valid": r.get("valid"), "fvc_l": r.get("fvc_l"), "grade_fvc": (r.get("fvc") or {}).get("grade"),
                       "equation": r.get("equation"), "fvc_pct_predicted": p.get("percent_predicted_fvc"),
                       "more_attempts_needed": r.get("more_attempts_needed"), "note": r.get("note")} if r else None,
        }

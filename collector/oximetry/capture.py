"""Raw capture files: every frame the daemon receives, as JSON Lines.

One object per line: ``{"t", "device", "protocol", "characteristic", "hex"}``
for a frame, or ``{"t", "device", "event", "cause"}`` for a link event (lost /
connected), so that a replay reproduces the same samples *and* gaps.  This is
how a site hands a field problem to us and how anyone tests the decoders.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from collector.clock import parse_utc, utc_iso
from collector.errors import InvalidInput, StorageError


class CaptureWriter:
    """Appends records; flushes to the OS at least once a second."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[str] = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise StorageError(f"cannot open capture file {self.path}: {exc.strerror or exc}; choose another --capture path") from exc
        self._last_flush = time.monotonic()

    def frame(self, t: float, device: str, protocol: str, characteristic: str, data: bytes) -> None:
        self._write({"t": utc_iso(t), "device": device, "protocol": protocol, "characteristic": characteristic, "hex": data.hex()})

    def event(self, t: float, device: str, protocol: str, event: str, cause: str | None = None) -> None:
        self._write({"t": utc_iso(t), "device": device, "protocol": protocol, "event": event, "cause": cause})

    def _write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        now = time.monotonic()
        if now - self._last_flush >= 1.0:
            self._fh.flush()
            self._last_flush = now

    def flush(self) -> None:
        self._fh.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self._fh.close()


@dataclass(frozen=True)
class CaptureRecord:
    line: int
    t: float
    device: str
    protocol: str
    characteristic: str | None = None
    data: bytes | None = None
    event: str | None = None
    cause: str | None = None


def read_capture(path: Path | str) -> Iterator[CaptureRecord]:
    """Yield records in file order; a malformed line raises InvalidInput naming the line."""
    path = Path(path)
    try:
        fh = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read capture {path}: {exc.strerror or exc}") from exc
    with fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"capture {path} line {n}"
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                t = parse_utc(str(obj["t"]))
                device = str(obj["device"])
                protocol = str(obj["protocol"])
                if "event" in obj:
                    yield CaptureRecord(n, t, device, protocol, event=str(obj["event"]), cause=obj.get("cause"))
                else:
                    yield CaptureRecord(n, t, device, protocol, characteristic=str(obj["characteristic"]).lower(), data=bytes.fromhex(obj["hex"]))
            except KeyError as exc:
                raise InvalidInput(f"{where}: missing field {exc.args[0]!r}; each line needs t, device, protocol and characteristic+hex or event") from exc
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"{where}: {exc}; fix or remove that line") from exc

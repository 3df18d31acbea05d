"""HL7 v2 ORU^R01 over MLLP, sans-I/O: bytes in, results and ACK bytes out.

Framing (MLLP): ``0x0B`` message ``0x1C 0x0D``; segments end with ``0x0D``.
The receiver answers every message it could identify (it has an MSH-10) with
``MSH`` + ``MSA|AA|<MSH-10>`` (accepted), ``MSA|AE|...`` (content refused:
impossible values, unknown units) or ``MSA|AR|...`` (not a message we take:
wrong type, no control id), plus an ``ERR`` segment saying why.  A message is
accepted or refused as a whole, so a device never believes half a session
arrived.

Delimiters come from MSH-1/MSH-2 of each message (never assumed), text is
unescaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\``), and garbage between
frames is skipped and counted; a new ``0x0B`` always restarts framing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping

from drivers.clock import TimeSource
from drivers.protocols.common import ParserStats
from drivers.spirometry.results import (
    Bronchodilator,
    CodeMapEntry,
    Curve,
    DecodedMessage,
    DecodeError,
    ManoeuvreResult,
    ManoeuvreType,
    Observation,
    RawField,
    SpiroEvent,
    SubjectData,
    check_result,
    check_subject,
    convert_unit,
    parse_number,
    parse_reference_range,
    ratio_contradiction,
)

SB = 0x0B  # start block (VT)
EB = 0x1C  # end block (FS)
CR = 0x0D
MAX_FRAME_BYTES = 2_000_000

# LOINC codes we map by default (spirometry.md, checked against published value sets).
LOINC_MAP: dict[str, CodeMapEntry] = {
    "19870-5": CodeMapEntry("fvc"),
    "19868-9": CodeMapEntry("fvc"),
    "19876-2": CodeMapEntry("fvc", "pre"),
    "19874-7": CodeMapEntry("fvc", "post"),  # post-bronchodilator FVC, NOT % predicted
    "20150-9": CodeMapEntry("fev1"),
    "20157-4": CodeMapEntry("fev1", "pre"),
    "20155-8": CodeMapEntry("fev1", "post"),
    "19926-5": CodeMapEntry("fev1_fvc"),
    "33452-4": CodeMapEntry("pef"),
    "19869-7": CodeMapEntry("fvc_pred"),
    "19872-1": CodeMapEntry("fvc_pct_pred"),
    "19871-3": CodeMapEntry("fvc_pct_pred", "pre"),
    "20152-5": CodeMapEntry("fev1_pct_pred"),
    "8302-2": CodeMapEntry("height"),
    "3137-7": CodeMapEntry("height"),
    "3141-9": CodeMapEntry("weight"),
    "29463-7": CodeMapEntry("weight"),
}
LOINC_SYSTEMS = {"LN", "LOINC", "HTTP://LOINC.ORG", ""}
# Preferred LOINC per parameter for the encoder.
ENCODE_LOINC = {"fvc": ("19870-5", "FVC"), "fev1": ("20150-9", "FEV1"), "fev1_fvc": ("19926-5", "FEV1/FVC"),
                "pef": ("33452-4", "PEF"), "height": ("8302-2", "Body height"), "weight": ("29463-7", "Body weight")}

_OBR_SVC = re.compile(r"\b(SVC|SLOW|VC\b)", re.I)
_OBR_FVC = re.compile(r"(FVC|FORCED)", re.I)
# Segments that carry a person's identity (beyond PID): next of kin, guarantor, insurance, roles.
IDENTIFYING_SEGMENTS = frozenset({"NK1", "GT1", "IN1", "IN2", "IN3", "PD1", "ROL", "MRG", "ACC"})
_PID_KEPT = {1, 8}  # set id and administrative sex; every other PID field is masked in the audit copy
MASK = "***"


# --- delimiters and escapes --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_chars(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


def unescape(text: str, d: Delimiters) -> str:
    """Resolve HL7 escape sequences; unknown ones are kept verbatim."""
    e = d.escape
    if not e or e not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != e:
            out.append(c)
            i += 1
            continue
        j = text.find(e, i + 1)
        if j < 0:  # lone escape char: keep it
            out.append(text[i:])
            break
        seq = text[i + 1 : j]
        rep = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition, "E": d.escape, ".br": "\n"}.get(seq)
        if rep is None and seq[:1] == "X" and len(seq) > 1 and len(seq) % 2 == 1:
            try:
                rep = bytes.fromhex(seq[1:]).decode("latin-1")
            except ValueError:
                rep = None
        if rep is None and seq[:1] in ("H", "N"):  # highlight on/off: formatting only
            rep = ""
        out.append(rep if rep is not None else text[i : j + 1])
        i = j + 1
    return "".join(out)


def escape(text: str, d: Delimiters) -> str:
    """Escape delimiter characters in data for encoding."""
    table = {d.escape: "E", d.field: "F", d.component: "S", d.subcomponent: "T", d.repetition: "R"}
    out: list[str] = []
    for c in text:
        if c in table:
            out.append(f"{d.escape}{table[c]}{d.escape}")
        elif c == "\r" or c == "\n":
            out.append(f"{d.escape}.br{d.escape}")
        else:
            out.append(c)
    return "".join(out)


def frame(message: bytes) -> bytes:
    """Wrap a message in the MLLP block."""
    return bytes([SB]) + message + bytes([EB, CR])


def mask_identifying(payload: bytes) -> bytes:
    """The message with every identifying field replaced by ``***`` (the site's audit copy).

    PID keeps only its set id (PID-1) and sex (PID-8): the name, birth date, hospital and other
    identifiers, address, phone numbers and the rest are masked, as are whole segments that name
    people (next of kin, guarantor, insurance).  Works on any bytes, parseable or not, and keeps
    everything else byte for byte so the copy still shows what the device sent.
    """
    start = payload.lstrip(b"\r\n \x00")
    fs = chr(start[3]) if start.startswith(b"MSH") and len(start) > 3 else "|"
    if fs.isalnum() or fs.isspace() or fs == "\x00":
        fs = "|"
    text = payload.decode("latin-1")
    out: list[str] = []
    for seg in re.split(r"(\r\n|\r|\n)", text):
        name = seg[:3]
        if (name == "PID" or name in IDENTIFYING_SEGMENTS) and seg[3:4] not in ("", fs):
            seg = name + MASK  # not split by the declared separator: mask all of it
        elif name == "PID" or name in IDENTIFYING_SEGMENTS:
            fields = seg.split(fs)
            keep = _PID_KEPT if name == "PID" else {1}
            seg = fs.join(f if (i == 0 or i in keep or not f) else MASK for i, f in enumerate(fields))
        out.append(seg)
    return "".join(out).encode("latin-1")


# --- MLLP framer --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FramingIssue:
    reason: str
    skipped: int


class MllpFramer:
    """Splits a byte stream into MLLP payloads; resyncs on every 0x0B."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._in_frame = False
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes | FramingIssue]:
        out: list[bytes | FramingIssue] = []
        self._buf += data
        while True:
            if not self._in_frame:
                i = self._buf.find(SB)
                junk = self._buf if i < 0 else self._buf[:i]
                if junk.strip(b"\r\n\x00 "):
                    out.append(FramingIssue("bytes outside an MLLP frame", len(junk)))
                if i < 0:
                    self._buf.clear()
                    return out
                del self._buf[: i + 1]
                self._in_frame = True
            end = self._buf.find(EB)
            restart = self._buf.find(SB)
            if restart >= 0 and (end < 0 or restart < end):
                out.append(FramingIssue("frame interrupted by a new start block", restart + 1))
                del self._buf[:restart]
                self._in_frame = False
                continue
            if end < 0:
                if len(self._buf) > self.max_frame:
                    out.append(FramingIssue(f"frame longer than {self.max_frame} bytes", len(self._buf)))
                    self._buf.clear()
                    self._in_frame = False
                return out
            if end + 1 >= len(self._buf):
                return out  # wait for the byte after FS
            payload = bytes(self._buf[:end])
            drop = end + 2 if self._buf[end + 1] == CR else end + 1
            del self._buf[:drop]
            self._in_frame = False
            out.append(payload)

    def end_of_input(self) -> list[bytes | FramingIssue]:
        """Line idle/closed: a frame that ends in FS without its CR is complete; others are lost."""
        out: list[bytes | FramingIssue] = []
        if self._in_frame:
            if self._buf.endswith(bytes([EB])):
                out.append(bytes(self._buf[:-1]))
            elif self._buf:
                out.append(FramingIssue("frame cut off (no end block)", len(self._buf)))
        self._buf.clear()
        self._in_frame = False
        return out


# --- message parsing ----------------------------------------------------------------------


@dataclass(slots=True)
class Segment:
    name: str
    fields: list[str]  # fields[n] is SEG-n (raw, still escaped); fields[0] is the name

    def get(self, n: int) -> str:
        return self.fields[n] if n < len(self.fields) else ""


@dataclass(slots=True)
class Hl7Message:
    delimiters: Delimiters
    segments: list[Segment]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)


class Hl7ParseError(ValueError):
    pass


def _charset_for(msh18: str) -> str:
    m = msh18.upper()
    if "UTF-8" in m or "UTF8" in m:
        return "utf-8"
    if "8859/15" in m:
        return "iso-8859-15"
    if "8859" in m:
        return "latin-1"
    return ""


def parse_message(payload: bytes) -> Hl7Message:
    """Parse one HL7 v2 message (no MLLP bytes). Raises Hl7ParseError (caught by the receiver)."""
    start = payload.lstrip(b"\r\n \x00")
    if not start.startswith(b"MSH") or len(start) < 8:
        raise Hl7ParseError("message does not start with an MSH segment")
    fs = chr(start[3])
    if fs.isalnum() or fs in "\r\n ":
        raise Hl7ParseError("MSH-1 field separator is not a usable character")
    text = start.decode("latin-1")
    first_seg = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]
    msh_raw = first_seg.split(fs)
    enc = msh_raw[1] if len(msh_raw) > 1 else ""
    if len(enc) < 4 or len(set(enc[:4] + fs)) != 5 or any(c.isalnum() for c in enc[:4]):
        raise Hl7ParseError("MSH-2 encoding characters are missing or invalid")
    d = Delimiters(fs, enc[0], enc[1], enc[2], enc[3])
    charset = _charset_for(msh_raw[18] if len(msh_raw) > 18 else "")
    if charset and charset != "latin-1":
        try:
            text = start.decode(charset)
        except UnicodeDecodeError:
            raise Hl7ParseError(f"message is not valid {charset} as MSH-18 declares") from None
    elif not charset:
        try:
            text = start.decode("utf-8")
        except UnicodeDecodeError:
            text = start.decode("latin-1")
    segments: list[Segment] = []
    for raw in re.split(r"\r\n|\r|\n", text):
        raw = raw.strip("\x00")
        if not raw:
            continue
        name = raw[:3]
        if not re.fullmatch(r"[A-Z][A-Z0-9]{2}", name) or (len(raw) > 3 and raw[3] != fs):
            raise Hl7ParseError(f"malformed segment {name!r}")
        if name == "MSH":
            parts = raw.split(fs)
            fields = ["MSH", fs] + parts[1:]
        else:
            fields = raw.split(fs)
        segments.append(Segment(name, fields))
    return Hl7Message(d, segments)


def _comp(field: str, d: Delimiters, n: int = 1, rep: int = 0) -> str:
    """Component n (1-based) of repetition rep of a raw field, unescaped."""
    reps = field.split(d.repetition)
    if rep >= len(reps):
        return ""
    comps = reps[rep].split(d.component)
    return unescape(comps[n - 1], d) if n - 1 < len(comps) else ""


def hl7_ts_to_iso(ts: str) -> str | None:
    """HL7 TS/DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) -> ISO-8601; None if malformed."""
    m = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?", ts.strip())
    if not m:
        return None
    y, mo, dd, hh, mi, ss, frac, tz = m.groups()
    try:
        datetime(int(y), int(mo or 1), int(dd or 1), int(hh or 0), int(mi or 0), int(ss or 0))
    except ValueError:
        return None
    if hh is None:
        return f"{y}-{mo or '01'}-{dd or '01'}"
    out = f"{y}-{mo}-{dd}T{hh}:{mi or '00'}:{ss or '00'}{frac or ''}"
    if tz:
        out += f"{tz[:3]}:{tz[3:]}"
    return out


# --- receiver ------------------------------------------------------------------------------


def _norm_map(local_codes: Mapping[str, str | CodeMapEntry] | None) -> dict[str, CodeMapEntry]:
    out: dict[str, CodeMapEntry] = {}
    for k, v in (local_codes or {}).items():
        out[k.upper()] = v if isinstance(v, CodeMapEntry) else CodeMapEntry(v)
    return out


@dataclass
class _Group:
    """Values collected under one OBR."""

    index: int
    obr: Segment | None
    values: dict[str, tuple[float, Bronchodilator | None]] = field(default_factory=dict)  # param -> (value, phase)
    texts: dict[str, list[str]] = field(default_factory=dict)
    ranges: list[tuple[str, str]] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    unknown: list[RawField] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    trial: int | None = None  # from a manoeuvre-number OBX: this OBR is that trial

    def has_measure(self) -> bool:
        return any(k in self.values for k in ("fvc", "fev1", "fev1_fvc", "pef", "bev", "fet", "vc")) or bool(self.curves)

    def service_code(self, d: Delimiters) -> str:
        """OBR-4 identifier (upper case): repeated OBRs with one code are one trial each."""
        return _comp(self.obr.get(4), d, 1).strip().upper() if self.obr is not None else ""


class _Refuse(Exception):
    def __init__(self, reason: str, location: str | None = None, code: str = "207") -> None:
        super().__init__(reason)
        self.reason, self.location, self.code = reason, location, code


def _wall_clock_now() -> float:
    """ACK stamps when no clock is injected (a receiver used on its own)."""
    return datetime.now(timezone.utc).timestamp()


class MllpReceiver:
    """Sans-I/O HL7 receiver: ``feed(bytes) -> [DecodedMessage | DecodeError]``.

    ``local_codes`` maps device codes (OBX-3 identifier, or ``"SYSTEM:CODE"``) to a
    parameter name (see results.KNOWN_PARAMS) or a CodeMapEntry; it wins over the
    LOINC map.  ``clock`` (any :class:`drivers.clock.TimeSource`) stamps our ACKs;
    without one they carry the wall-clock time.
    """

    def __init__(
        self,
        local_codes: Mapping[str, str | CodeMapEntry] | None = None,
        clock: TimeSource | None = None,
        app_name: str = "ALSCOLLECTOR",
        facility: str = "",
        max_frame: int = MAX_FRAME_BYTES,
        single_obr_is_summary: bool = True,
    ) -> None:
        self.local = _norm_map(local_codes)
        self.single_obr_is_summary = single_obr_is_summary
        self.stats = ParserStats()
        self._framer = MllpFramer(max_frame)
        self._now: Callable[[], float] = clock.now if clock is not None else _wall_clock_now
        self.app_name, self.facility = app_name, facility
        self._ack_seq = 0

    # public ----------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[SpiroEvent]:
        return self._handle_all(self._framer.feed(data))

    def end_of_input(self) -> list[SpiroEvent]:
        return self._handle_all(self._framer.end_of_input())

    def decode_payload(self, payload: bytes) -> SpiroEvent:
        """Decode one unframed message (files, tests); updates stats; never raises."""
        try:
            return self._decode(payload)
        except Exception as exc:  # last line of defence: a parser bug must not kill the daemon
            self.stats.error(f"internal decoder error: {type(exc).__name__}")
            return DecodeError("hl7", f"internal decoder error ({type(exc).__name__}); message not accepted")

    # internals -------------------------------------------------------------------------
    def _handle_all(self, items: Iterable[bytes | FramingIssue]) -> list[SpiroEvent]:
        out: list[SpiroEvent] = []
        for it in items:
            if isinstance(it, FramingIssue):
                self.stats.error(it.reason, it.skipped)
                out.append(DecodeError("hl7", it.reason))
            else:
                out.append(self.decode_payload(it))
        return out

    def _decode(self, payload: bytes) -> SpiroEvent:
        masked = mask_identifying(payload)
        try:
            msg = parse_message(payload)
        except Hl7ParseError as exc:
            self.stats.error(str(exc), len(payload))
            return DecodeError("hl7", f"{exc}; no acknowledgement possible", masked_raw=masked)
        d = msg.delimiters
        msh = msg.segments[0]
        control_id = _comp(msh.get(10), d)
        if not control_id:
            return self._refuse(msg, "", _Refuse("MSH-10 message control id is empty", "MSH-10", "101"), "AR", masked)
        mcode, mevent = _comp(msh.get(9), d, 1), _comp(msh.get(9), d, 2)
        if mcode.upper() != "ORU" or mevent.upper() not in ("R01", ""):
            return self._refuse(msg, control_id, _Refuse(f"unsupported message type {mcode}^{mevent} (expected ORU^R01)", "MSH-9", "200"),
                                "AR", masked)
        version = _comp(msh.get(12), d)
        try:
            subject, results, unknown, warnings, observations = self._interpret(msg, control_id)
        except _Refuse as r:
            return self._refuse(msg, control_id, r, "AE", masked)
        if version and not re.fullmatch(r"2\.(3|3\.1|4|5|5\.1|6)", version):
            warnings.append(f"HL7 version {version!r} (read as 2.3-2.6)")
        self.stats.frames += 1
        refuse = self._ack(msg, control_id, "AE", "patient data contradicts the session's subject", "102")
        return DecodedMessage("hl7", control_id, tuple(results), subject, self._ack(msg, control_id, "AA"), tuple(unknown),
                              tuple(warnings), tuple(observations), masked, refuse)

    def _refuse(self, msg: Hl7Message, control_id: str, r: _Refuse, code: str, masked: bytes | None = None) -> DecodeError:
        self.stats.error(r.reason)
        return DecodeError("hl7", r.reason, control_id or None, r.location, self._ack(msg, control_id, code, r.reason, r.code), masked)

    def _interpret(
        self, msg: Hl7Message, control_id: str,
    ) -> tuple[SubjectData | None, list[ManoeuvreResult], list[RawField], list[str], list[Observation]]:
        d = msg.delimiters
        subj: dict[str, object] = {}
        warnings: list[str] = []
        groups: list[_Group] = []
        current: _Group | None = None
        unknown_segments: set[str] = set()
        for seg in msg.segments[1:]:
            if seg.name == "PID":
                pid = _comp(seg.get(3), d, 1)
                if pid:
                    subj["patient_id"] = pid
                birth = _comp(seg.get(7), d, 1)
                if birth:
                    iso = hl7_ts_to_iso(birth)
                    if iso is None:
                        raise _Refuse("PID-7 birth date is not a valid date", "PID-7", "102")
                    subj["birth_date"] = iso[:10]
                sex = _comp(seg.get(8), d, 1).upper()
                if sex:
                    subj["sex_raw"] = sex
                    subj["sex"] = {"M": "male", "F": "female"}.get(sex)
            elif seg.name == "OBR":
                current = _Group(len(groups) + 1, seg)
                groups.append(current)
            elif seg.name == "OBX":
                if current is None:
                    current = _Group(0, None)
                    groups.append(current)
                    warnings.append("OBX before any OBR")
                self._obx(seg, d, current, subj, f"OBR {current.index} / OBX {seg.get(1) or '?'}", warnings)
            elif seg.name not in ("PV1", "PV2", "ORC", "NTE", "SFT", "PD1", "NK1", "EVN", "TQ1", "SPM", "CTI", "TXA"):
                unknown_segments.add(seg.name)
        if unknown_segments:
            warnings.append("segments ignored: " + ",".join(sorted(unknown_segments)))
        subject = SubjectData(**subj) if subj else None  # type: ignore[arg-type]
        if subject is not None:
            why = check_subject(subject)
            if why:
                raise _Refuse(why, "PID/OBX", "102")
        roles = self._roles([g for g in groups if g.has_measure()], d)
        results: list[ManoeuvreResult] = []
        unknown: list[RawField] = []
        observations: list[Observation] = []
        for g in groups:
            if g.index not in roles:
                unknown.extend(g.unknown)
                observations.extend(g.observations)
                continue
            results.append(self._result(g, d, control_id, subject, roles[g.index]))
        warnings.extend(f"device summary: {w}" for r in results if r.summary and (w := ratio_contradiction(r)))
        if not results:
            warnings.append("message carried no spirometry values")
        return subject, results, unknown, warnings, observations

    def _roles(self, measuring: list["_Group"], d: Delimiters) -> dict[int, int | None]:
        """OBR index -> manoeuvre number, or None for the device's session-level result.

        Decided by the message's structure, never by the words in OBR-4: an OBR with a trial index
        (a manoeuvre-number OBX) is that trial; OBRs without one that repeat the same OBR-4 service
        code are one trial each, numbered in order; any other OBR without a trial index is the
        device's session result (best values), unless the model says its devices send one blow
        per message (``single_obr_is_summary=False``) and nothing else in the message is a trial.
        """
        roles: dict[int, int | None] = {}
        by_code: dict[str, list[int]] = {}
        for g in measuring:
            if g.trial is None:
                by_code.setdefault(g.service_code(d), []).append(g.index)
        has_trials = any(g.trial is not None for g in measuring) or any(len(v) > 1 for v in by_code.values())
        for g in measuring:
            if g.trial is not None:
                roles[g.index] = g.trial
                continue
            same = by_code[g.service_code(d)]
            if len(same) > 1:
                roles[g.index] = same.index(g.index) + 1
            elif not has_trials and not self.single_obr_is_summary:
                roles[g.index] = 1
            else:
                roles[g.index] = None
        return roles

    def _lookup(self, obx3: str, d: Delimiters) -> tuple[CodeMapEntry | None, str, str, str]:
        code, text, system = _comp(obx3, d, 1), _comp(obx3, d, 2), _comp(obx3, d, 3)
        for c, s in ((code, system), (_comp(obx3, d, 4), _comp(obx3, d, 6))):
            if not c:
                continue
            hit = self.local.get(f"{s}:{c}".upper()) or self.local.get(c.upper())
            if hit is None and s.upper() in LOINC_SYSTEMS:
                hit = LOINC_MAP.get(c)
            if hit is not None:
                return hit, code, text, system
        return None, code, text, system

    def _obx(self, seg: Segment, d: Delimiters, g: _Group, subj: dict[str, object], where: str, warnings: list[str]) -> None:
        vtype = _comp(seg.get(2), d).upper()
        entry, code, text, system = self._lookup(seg.get(3), d)
        raw_value = seg.get(5)
        unit = _comp(seg.get(6), d, 1) or _comp(seg.get(6), d, 2)
        status = _comp(seg.get(11), d).upper()
        ref_text = unescape(seg.get(7), d)
        param = entry.param if entry is not None else None
        shown = unescape(raw_value, d)
        if param in ("curve_volume_time", "curve_flow_volume"):
            shown = f"({len([x for x in raw_value.split(d.repetition) if x])} points)"
        g.observations.append(Observation(
            g.index, code, shown, text or None, system or None, vtype or None, unit or None, parse_reference_range(ref_text),
            unescape(seg.get(8), d) or None, status or None, unescape(seg.get(4), d) or None, param))
        if status in ("X", "D", "W"):
            warnings.append(f"{where}: result status {status}, value ignored")
            return
        if entry is None:
            g.unknown.append(RawField(code, shown, unit or None, text or None, system or None))
            return
        p = entry.param
        if p in ("curve_volume_time", "curve_flow_volume"):
            g.curves.append(self._curve(p, raw_value, unit, d, where))
            return
        if p in ("quality", "posture", "manoeuvre_type", "time", "manoeuvre_number"):
            vals = [unescape(r, d) for r in raw_value.split(d.repetition) if r]
            g.texts.setdefault(p, []).extend(vals)
            if p == "manoeuvre_number" and vals:
                n = parse_number(vals[0])
                if n is None or n != int(n) or n < 0:
                    raise _Refuse("manoeuvre number is not a whole number", where, "102")
                g.trial = int(n)
            return
        first = raw_value.split(d.repetition)[0]
        if vtype == "SN":  # structured numeric: comparator^number
            comparator, num = _comp(first, d, 1), _comp(first, d, 2)
            if comparator not in ("", "="):
                raise _Refuse(f"{p} sent as a bound ({comparator}{num}), not a value", where, "102")
            first = num
        else:
            first = unescape(first.split(d.component)[0], d)
        value = parse_number(first)
        if value is None:
            if not first.strip():
                warnings.append(f"{where}: {p} has no value")
                return
            raise _Refuse(f"{p} value is not a number", where, "102")
        conv, why = convert_unit(p, value, unit)
        if conv is None:
            raise _Refuse(str(why), where, "102")
        if p in ("height", "weight"):
            subj["height_cm" if p == "height" else "weight_kg"] = conv
            return
        prev = g.values.get(p)
        if prev is not None and prev[1] != entry.bronchodilator:
            raise _Refuse("OBR mixes pre- and post-bronchodilator values", where, "102")
        if prev is not None and abs(prev[0] - conv) > 1e-9:
            raise _Refuse(f"{p} reported twice with different values in one OBR", where, "102")
        g.values[p] = (conv, entry.bronchodilator)
        if ref_text:
            g.ranges.append((p, ref_text))
            rr = parse_reference_range(ref_text)
            if rr is not None and rr.low is not None and rr.high is None and p in ("fvc", "fev1"):
                lln_l, _ = convert_unit(p, rr.low, unit)  # labs put the LLN in OBX-7 as "> x"
                if lln_l is not None:
                    g.values[f"{p}_lln"] = (lln_l, entry.bronchodilator)

    def _curve(self, p: str, raw_value: str, unit: str, d: Delimiters, where: str) -> Curve:
        xs: list[float] = []
        ys: list[float] = []
        scale = 0.001 if unit.strip().lower() == "ml" else 1.0
        for point in raw_value.split(d.repetition):
            if not point:
                continue
            parts = point.split(d.component)
            if len(parts) != 2:
                raise _Refuse(f"{p} point {point[:20]!r} is not x^y", where, "102")
            x, y = parse_number(unescape(parts[0], d)), parse_number(unescape(parts[1], d))
            if x is None or y is None:
                raise _Refuse(f"{p} has a non-numeric sample", where, "102")
            if p == "curve_volume_time":
                xs.append(x)
                ys.append(y * scale)
            else:
                xs.append(x * scale)
                ys.append(y * scale)
        return Curve("volume_time" if p == "curve_volume_time" else "flow_volume", tuple(xs), tuple(ys))

    def _result(self, g: _Group, d: Delimiters, control_id: str, subject: SubjectData | None, number: int | None) -> ManoeuvreResult:
        where = f"OBR {g.index}"
        v = g.values
        phases = {ph for (_, ph) in v.values() if ph}
        if len(phases) > 1:
            raise _Refuse("OBR mixes pre- and post-bronchodilator values", where, "102")
        obr_text = " ".join(_comp(g.obr.get(4), d, i) for i in (1, 2)) if g.obr else ""
        mtype_txt = " ".join(g.texts.get("manoeuvre_type", [])) or obr_text
        mtype: ManoeuvreType | None = "SVC" if _OBR_SVC.search(mtype_txt) else "FVC" if _OBR_FVC.search(mtype_txt) else None
        if mtype is None:
            mtype = "FVC" if "fvc" in v else "SVC" if "vc" in v else None
        t = None
        if g.texts.get("time"):
            t = hl7_ts_to_iso(g.texts["time"][0])
        elif g.obr is not None and _comp(g.obr.get(7), d):
            t = hl7_ts_to_iso(_comp(g.obr.get(7), d))
            if t is None:
                raise _Refuse("OBR-7 observation time is not a valid timestamp", where, "102")
        derived = tuple((k, val) for k, (val, _) in v.items() if k not in ("fvc", "fev1", "fev1_fvc", "pef", "bev", "fet", "vc"))
        r = ManoeuvreResult(
            source="hl7",
            number=number,
            time=t,
            manoeuvre_type=mtype,
            posture=next(iter(g.texts.get("posture", ())), None),
            bronchodilator=next(iter(phases), None),
            fvc_l=v.get("fvc", (None,))[0],
            fev1_l=v.get("fev1", (None,))[0],
            fev1_fvc=v.get("fev1_fvc", (None,))[0],
            pef_l_s=v.get("pef", (None,))[0],
            bev_l=v.get("bev", (None,))[0],
            fet_s=v.get("fet", (None,))[0],
            vc_l=v.get("vc", (None,))[0],
            device_quality=tuple(g.texts.get("quality", [])),
            device_derived=derived,
            reference_ranges=tuple(g.ranges),
            curves=tuple(g.curves),
            subject=subject,
            unknown=tuple(g.unknown),
            summary=number is None,
            message_id=control_id,
            observations=tuple(g.observations),
        )
        why = check_result(r)
        if why:
            raise _Refuse(why, where, "102")
        return r

    def _ack(self, msg: Hl7Message, control_id: str, code: str, text: str = "", err_code: str = "") -> bytes:
        d = msg.delimiters
        msh = msg.segments[0]
        self._ack_seq += 1
        ts = datetime.fromtimestamp(self._now(), tz=timezone.utc).strftime("%Y%m%d%H%M%S+0000")
        version = _comp(msh.get(12), d) or "2.5"
        processing = _comp(msh.get(11), d) or "P"
        f = d.field
        segs = [
            f.join(["MSH", d.encoding_chars, escape(self.app_name, d), escape(self.facility, d), msh.get(3), msh.get(4),
                    ts, "", f"ACK{d.component}R01{d.component}ACK", f"A{self._ack_seq}", processing, version]),
            f.join(["MSA", code, escape(control_id, d)] + ([escape(text[:80], d)] if text else [])),
        ]
        if code != "AA":
            segs.append(f.join(["ERR", "", "", f"{err_code or '207'}{d.component}{escape(text[:80], d)}{d.component}HL70357", "E"]))
        return frame(("\r".join(segs) + "\r").encode("latin-1", errors="replace"))


# --- ACK parsing (used by the simulator / device side) ------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    code: str  # AA / AE / AR (or CA/CE/CR)
    control_id: str
    text: str = ""


def parse_ack(payload: bytes) -> Ack | None:
    """Read MSA-1/MSA-2/MSA-3 from an unframed ACK; None when it is not one."""
    try:
        msg = parse_message(payload)
    except Hl7ParseError:
        return None
    msa = msg.first("MSA")
    if msa is None:
        return None
    d = msg.delimiters
    return Ack(_comp(msa.get(1), d).upper(), _comp(msa.get(2), d), _comp(msa.get(3), d))


# --- encoder (simulator) ------------------------------------------------------------------


def _hl7_ts(iso: str | None) -> str:
    if not iso:
        return ""
    dt = datetime.fromisoformat(iso)
    s = dt.strftime("%Y%m%d%H%M%S")
    offset = dt.utcoffset()
    if offset is not None:
        off = int(offset.total_seconds() // 60)
        s += f"{'+' if off >= 0 else '-'}{abs(off) // 60:02d}{abs(off) % 60:02d}"
    return s


def _num(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if v != int(v) else f"{int(v)}"


def encode_oru(
    results: Iterable[ManoeuvreResult],
    message_id: str,
    subject: SubjectData | None = None,
    local_codes: Mapping[str, str] | None = None,
    sent_at: str | None = None,
    sending_app: str = "SPIROSIM",
    d: Delimiters = Delimiters(),
    version: str = "2.5",
) -> bytes:
    """Build an ORU^R01 (unframed) as a device would: one OBR per manoeuvre.

    ``local_codes`` maps parameter -> local code for what LOINC does not cover
    (bev, fet, vc, quality, posture, manoeuvre_type, curves).
    """
    codes = dict(local_codes or {})
    f, c = d.field, d.component
    segs = [f.join(["MSH", d.encoding_chars, escape(sending_app, d), "", "ALSCOLLECTOR", "", _hl7_ts(sent_at), "",
                    f"ORU{c}R01{c}ORU_R01", escape(message_id, d), "P", version])]
    if subject is not None:
        sex = {"male": "M", "female": "F"}.get(subject.sex or "", "")
        birth = (subject.birth_date or "").replace("-", "")
        segs.append(f.join(["PID", "1", "", escape(subject.patient_id or "", d), "", "", "", birth, sex]))
    seq = 0

    def obx(code: str, text: str, system: str, value: str, unit: str, vtype: str = "NM") -> str:
        nonlocal seq
        seq += 1
        return f.join(["OBX", str(seq), vtype, f"{escape(code, d)}{c}{escape(text, d)}{c}{system}", "", value, escape(unit, d), "", "", "", "", "F"])

    obr_n = 0
    if subject is not None and (subject.height_cm is not None or subject.weight_kg is not None):
        obr_n += 1
        segs.append(f.join(["OBR", str(obr_n), "", "", f"ANTH{c}Anthropometry{c}L"]))
        seq = 0
        if subject.height_cm is not None:
            segs.append(obx("8302-2", "Body height", "LN", _num(subject.height_cm), "cm"))
        if subject.weight_kg is not None:
            segs.append(obx("29463-7", "Body weight", "LN", _num(subject.weight_kg), "kg"))
    for r in results:
        obr_n += 1
        seq = 0
        label = "Best values" if r.summary else f"{r.manoeuvre_type or 'FVC'} manoeuvre"
        service = f"{r.manoeuvre_type or 'FVC'}{'-BEST' if r.summary else ''}"
        segs.append(f.join(["OBR", str(obr_n), "", "", f"{service}{c}{escape(label, d)}{c}L", "", "", _hl7_ts(r.time)]))
        for p, val, unit in (("fvc", r.fvc_l, "L"), ("fev1", r.fev1_l, "L"), ("fev1_fvc", r.fev1_fvc, "{ratio}"), ("pef", r.pef_l_s, "L/s"),
                             ("bev", r.bev_l, "L"), ("fet", r.fet_s, "s"), ("vc", r.vc_l, "L")):
            if val is None:
                continue
            if p in ENCODE_LOINC:
                code, text = ENCODE_LOINC[p]
                segs.append(obx(code, text, "LN", _num(val), unit))
            elif p in codes:
                segs.append(obx(codes[p], p.upper(), "L", _num(val), unit))
        if r.number is not None and "manoeuvre_number" in codes:
            segs.append(obx(codes["manoeuvre_number"], "Trial", "L", str(r.number), "", "NM"))
        if r.posture and "posture" in codes:
            segs.append(obx(codes["posture"], "Posture", "L", escape(r.posture, d), "", "ST"))
        if r.device_quality and "quality" in codes:
            segs.append(obx(codes["quality"], "Quality", "L", d.repetition.join(escape(q, d) for q in r.device_quality), "", "ST"))
        for cv in r.curves:
            key = "curve_volume_time" if cv.kind == "volume_time" else "curve_flow_volume"
            if key in codes:
                pts = d.repetition.join(f"{_num(x)}{c}{_num(y)}" for x, y in zip(cv.x, cv.y))
                segs.append(obx(codes[key], key, "L", pts, "L", "NA"))
    return ("\r".join(segs) + "\r").encode("utf-8")

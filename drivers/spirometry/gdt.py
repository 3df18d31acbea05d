"""GDT 2.1 examination records (record type 6310), sans-I/O.

Line format: ``LLL FFFF content CR LF`` with no spaces: ``LLL`` is the length of the
whole line in encoded bytes including CR LF (content + 9), ``FFFF`` the field id.
Field 9206 names the character set (1 = 7-bit DIN 66003, 2 = IBM CP437,
3 = ISO 8859-1); lengths are byte counts, so the check is charset-independent,
while decoding the text and encoding lengths use the declared charset.

Record boundaries on a serial line (GDT itself is file based, so this is our
decision, documented here and in the report):

1. a record starts with a line for field 8000 (record type);
2. it ends when the number of bytes declared in field 8100 (the whole record,
   every line including CR LF) has arrived -- the normal case;
3. without 8100 it ends when the next 8000 line starts, at an 8001
   (record-end) line, or when the line goes idle / the file ends
   (:meth:`GdtStreamParser.end_of_input`);
4. a new 8000 line before the 8100 byte count is reached means the record was
   cut short: it is refused and the new record is parsed.

Bytes outside a record are skipped and counted; an unparseable line is searched
for the start of an 8000 line so a good record after garbage still decodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from drivers.protocols.common import ParserStats
from drivers.spirometry.results import (
    MEASURED_PARAMS,
    Bronchodilator,
    CodeMapEntry,
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

RECORD_EXAM_DATA = "6310"
RECORD_REQUEST = "6302"
GDT_VERSION = "02.10"
GDT_VERSIONS = frozenset({"02.00", "02.10", "03.00", "03.01", "3.0", "3.00", "2.1", "2.10"})
MAX_LINE = 999  # LLL has three digits
_LINE = re.compile(rb"(\d{3})(\d{4})(.*)", re.S)
_START = re.compile(rb"(\d{3})8000")

# 7-bit German reference version (DIN 66003): these ASCII positions carry umlauts.
_DIN66003_DEC = str.maketrans({"@": "§", "[": "Ä", "\\": "Ö", "]": "Ü", "{": "ä", "|": "ö", "}": "ü", "~": "ß"})
_DIN66003_ENC = {v: k for k, v in {"@": "§", "[": "Ä", "\\": "Ö", "]": "Ü", "{": "ä", "|": "ö", "}": "ü", "~": "ß"}.items()}
CHARSETS = {"1": "din66003", "2": "cp437", "3": "latin-1"}

# Fields that identify a person and that we never keep: every patient field 3xxx (names, title,
# insurance number, address, phone, ...) except the ones the equations need.  3000 (patient
# number) and 3103 (birth date) are read only to compare with the subject's recorded facts.
SUBJECT_FIELDS_READ = {"3000", "3103", "3110", "3622", "3623"}
SUBJECT_FIELDS_SHOWN = {"3110", "3622", "3623"}  # left unmasked in the audit copy
_GROUP_FIELDS = {"8411", "8418", "8420", "8421", "8422", "8460", "8461", "8462", "8470", "8480"}
# Free-text result fields (validated GDT outputs often put the results here): 6205 findings,
# 6220 findings text, 6228 result table text; one line per field occurrence.
TEXT_RESULT_FIELDS = ("6205", "6220", "6228")
#: Labels of text result lines -> parameter, when a model names none of its own (``gdt_text_labels``).
DEFAULT_TEXT_LABELS: dict[str, str] = {
    "FVC": "fvc", "FEV1": "fev1", "FEV1/FVC": "fev1_fvc", "FEV1%FVC": "fev1_fvc", "FEV1/FVC%": "fev1_fvc",
    "PEF": "pef", "VC": "vc", "FET": "fet", "BEV": "bev", "EV": "bev",
}
_PCT_PRED = {"fvc": "fvc_pct_pred", "fev1": "fev1_pct_pred"}
_PRED = {"fvc": "fvc_pred", "fev1": "fev1_pred"}
# "FVC 3.21 L 85 %", "FVC: 3,21 l (85 % Soll)", "FEV1/FVC = 78 %": label, value, unit, then an
# optional number followed by % (the % predicted).
_TEXT_LINE = re.compile(
    r"\s*(?P<label>[A-Za-z][A-Za-z0-9/%._-]*?)\s*(?:[:=]\s*|\s+)(?P<value>[0-9]+(?:[.,][0-9]+)?)\s*"
    r"(?P<unit>[A-Za-z/%]+(?:\s?\(?BTPS\)?)?)?"
    r"(?:[\s,;(]+(?P<pct>[0-9]+(?:[.,][0-9]+)?)\s*%[^0-9]*)?\s*")
_TRIAL_SUFFIX = re.compile(r"[0-9]{1,3}")  # ASCII digits only: str.isdigit() also takes superscripts


def decode_text(raw: bytes, charset_code: str) -> str:
    cs = CHARSETS.get(charset_code, "cp437")
    if cs == "din66003":
        return raw.decode("ascii", errors="replace").translate(_DIN66003_DEC)
    return raw.decode(cs, errors="replace")


def encode_text(text: str, charset_code: str) -> bytes:
    cs = CHARSETS.get(charset_code, "cp437")
    if cs == "din66003":
        return "".join(_DIN66003_ENC.get(c, c) for c in text).encode("ascii")
    return text.encode(cs)


def encode_line(fid: str, content: str, charset_code: str = "3") -> bytes:
    """One GDT line; LLL counts encoded bytes including CR LF."""
    body = encode_text(content, charset_code)
    n = len(body) + 9
    if n > MAX_LINE or not re.fullmatch(r"\d{4}", fid):
        raise ValueError(f"GDT field {fid} content too long ({n} bytes) or bad field id")
    return f"{n:03d}{fid}".encode("ascii") + body + b"\r\n"


def _gdt_date(s: str) -> str | None:
    m = re.fullmatch(r"(\d{2})(\d{2})(\d{4})", s.strip())
    if not m:
        return None
    dd, mm, yyyy = (int(g) for g in m.groups())
    if not (1 <= mm <= 12 and 1 <= dd <= 31):
        return None
    return f"{yyyy:04d}-{mm:02d}-{dd:02d}"


def _gdt_time(s: str) -> str | None:
    m = re.fullmatch(r"(\d{2})(\d{2})(\d{2})?", s.strip())
    if not m:
        return None
    hh, mi, ss = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if hh > 23 or mi > 59 or ss > 59:
        return None
    return f"{hh:02d}:{mi:02d}:{ss:02d}"


@dataclass
class _Trial:
    """What one trial's test ids carried: numbers by parameter (with phase) and texts."""

    values: dict[str, tuple[float, Bronchodilator | None]] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)


@dataclass
class _Record:
    lines: list[tuple[str, bytes]] = field(default_factory=list)
    nbytes: int = 0
    declared: int | None = None
    corrupt: str | None = None
    first_line_no: int = 0


class GdtStreamParser:
    """Stream parser: ``feed(bytes) -> [DecodedMessage | DecodeError]``; never raises.

    ``test_map`` maps the device's test ids (field 8410) to parameters (see
    results.KNOWN_PARAMS) or CodeMapEntry (with ``trial``).  When a test id is not
    in the map and ``trial_separator`` is set, ``FVC_2`` is read as test ``FVC``
    of trial 2.  Values without a trial are the device's session summary when
    ``untrialled_is_summary`` (the usual GDT export: best values only).
    """

    def __init__(
        self,
        test_map: Mapping[str, str | CodeMapEntry],
        trial_separator: str | None = "_",
        default_charset: str = "2",
        untrialled_is_summary: bool = True,
        text_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.test_map = {k.upper(): (v if isinstance(v, CodeMapEntry) else CodeMapEntry(v)) for k, v in test_map.items()}
        self.text_labels = {k.upper(): v for k, v in (text_labels if text_labels else DEFAULT_TEXT_LABELS).items()}
        self.trial_separator = trial_separator
        self.default_charset = default_charset
        self.untrialled_is_summary = untrialled_is_summary
        self.stats = ParserStats()
        self._buf = bytearray()
        self._rec: _Record | None = None
        self._line_no = 0

    # public ----------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[SpiroEvent]:
        out: list[SpiroEvent] = []
        self._buf += data
        while True:
            i = self._buf.find(b"\r\n")
            if i < 0:
                if len(self._buf) > MAX_LINE:  # no line can be this long: drop, keep a tail for resync
                    keep = bytes(self._buf[-12:])
                    self._garbage(len(self._buf) - len(keep), out, "line longer than 999 bytes")
                    self._buf[:] = keep
                return out
            line = bytes(self._buf[:i])
            del self._buf[: i + 2]
            self._line(line, out)

    def end_of_input(self) -> list[SpiroEvent]:
        out: list[SpiroEvent] = []
        if self._buf:
            rest = bytes(self._buf)
            self._buf.clear()
            if self._rec is not None:
                self._rec.corrupt = self._rec.corrupt or "record ends in a line without CR LF"
            else:
                self._garbage(len(rest), out, "bytes outside a GDT record")
        self._finish(out, end_of_input=True)
        return out

    # framing ---------------------------------------------------------------------------
    def _garbage(self, n: int, out: list[SpiroEvent], why: str) -> None:
        if n > 0:
            self.stats.error(why, n)
            out.append(DecodeError("gdt", why))

    def _line(self, line: bytes, out: list[SpiroEvent]) -> None:
        self._line_no += 1
        full = len(line) + 2
        m = _LINE.fullmatch(line)
        valid = m is not None and int(m.group(1)) == full
        fid = m.group(2).decode() if m else ""
        if valid and fid == "8000":
            self._finish(out, next_record=True)
            self._rec = _Record(first_line_no=self._line_no)
        elif not valid or self._rec is None:
            s = _START.search(line, 1)
            while s is not None:  # an 8000 line glued to the end of garbage
                cand = line[s.start():]
                if int(s.group(1)) == len(cand) + 2:
                    self._bad_line(line[: s.start()], out, valid)
                    self._line(cand, out)
                    return
                s = _START.search(line, s.start() + 1)
            self._bad_line(line + b"\r\n", out, valid)
            return
        assert self._rec is not None and m is not None
        rec = self._rec
        rec.lines.append((fid, m.group(3)))
        rec.nbytes += full
        if fid == "8100":
            n = parse_number(m.group(3).decode("ascii", "replace"))
            if n is None or n != int(n):
                rec.corrupt = "field 8100 record length is not a number"
            else:
                rec.declared = int(n)
        if fid == "8001" or (rec.declared is not None and rec.nbytes >= rec.declared):
            self._finish(out)

    def _bad_line(self, raw: bytes, out: list[SpiroEvent], parsed: bool) -> None:
        if not raw:
            return
        if self._rec is not None:
            self._rec.nbytes += len(raw)
            self._rec.corrupt = self._rec.corrupt or f"line {self._line_no - self._rec.first_line_no + 1}: length prefix does not match the line"
        else:
            self._garbage(len(raw), out, "bytes outside a GDT record")

    def _finish(self, out: list[SpiroEvent], next_record: bool = False, end_of_input: bool = False) -> None:
        rec, self._rec = self._rec, None
        if rec is None:
            return
        why = rec.corrupt
        if rec.declared is not None and rec.nbytes < rec.declared and (next_record or end_of_input):
            why = None  # a cut-short record explains its broken last line: say that
        if why is None and rec.declared is not None and rec.nbytes != rec.declared:
            short = rec.nbytes < rec.declared
            why = (f"record cut short: {rec.nbytes} of {rec.declared} bytes (field 8100) before "
                   + ("the next record" if next_record else "the line went idle")) if short else \
                f"record longer than its field 8100 length ({rec.nbytes} > {rec.declared} bytes)"
        if why is not None:
            self.stats.error(why, rec.nbytes)
            out.append(DecodeError("gdt", why))
            return
        out.append(self._decode(rec))

    # record decoding ---------------------------------------------------------------------
    def _decode(self, rec: _Record) -> SpiroEvent:
        masked = mask_record(rec.lines)
        try:
            ev = self._decode_inner(rec)
        except Exception as exc:  # a decoder bug must not kill the daemon
            self.stats.error(f"internal decoder error: {type(exc).__name__}")
            ev = DecodeError("gdt", f"internal decoder error ({type(exc).__name__}); record not accepted")
        return replace(ev, masked_raw=masked)

    def _refuse(self, why: str, location: str | None = None, mid: str | None = None) -> DecodeError:
        self.stats.error(why)
        return DecodeError("gdt", why, mid, location)

    def _decode_inner(self, rec: _Record) -> SpiroEvent:
        charset = next((c.decode("ascii", "replace").strip() for f, c in rec.lines if f == "9206"), self.default_charset)
        if charset not in CHARSETS:
            return self._refuse(f"field 9206 character set {charset!r} is not 1, 2 or 3", "9206")
        fields = [(f, decode_text(c, charset)) for f, c in rec.lines]
        rtype = fields[0][1].strip()
        if rtype != RECORD_EXAM_DATA:
            return self._refuse(f"record type {rtype!r} is not examination data (6310)", "8000")
        warnings: list[str] = []
        subj: dict[str, object] = {}
        unknown: list[RawField] = []
        groups: list[dict[str, str]] = []
        text_lines: list[tuple[str, str]] = []
        date = time = None
        dropped = 0
        for fid, text in fields[1:]:
            if fid in TEXT_RESULT_FIELDS:
                text_lines.append((fid, text))
            elif fid.startswith("3") and fid not in SUBJECT_FIELDS_READ:
                dropped += 1
            elif fid == "8410":
                groups.append({"8410": text.strip()})
            elif fid in _GROUP_FIELDS and groups:
                groups[-1].setdefault(fid, text.strip())
            elif fid in ("8100", "9206", "8001", "8315", "8316"):
                continue
            elif fid == "9218":
                if text.strip() not in GDT_VERSIONS:
                    warnings.append(f"GDT version {text.strip()!r} (read as 2.1 / 3.0)")
            elif fid == "3000":
                subj["patient_id"] = text.strip()
            elif fid == "3103":
                iso = _gdt_date(text)
                if iso is None:
                    return self._refuse("field 3103 birth date is not DDMMYYYY", "3103")
                subj["birth_date"] = iso
            elif fid == "3110":
                raw = text.strip().upper()
                subj["sex_raw"] = raw
                subj["sex"] = {"1": "male", "2": "female", "M": "male", "W": "female"}.get(raw)
            elif fid in ("3622", "3623"):
                v = parse_number(text)
                if v is None:
                    return self._refuse(f"field {fid} is not a number", fid)
                subj["height_cm" if fid == "3622" else "weight_kg"] = v
            elif fid == "6200":
                date = _gdt_date(text)
                if date is None:
                    return self._refuse("field 6200 exam date is not DDMMYYYY", "6200")
            elif fid == "6201":
                time = _gdt_time(text)
                if time is None:
                    return self._refuse("field 6201 exam time is not HHMM[SS]", "6201")
            else:
                unknown.append(RawField(fid, text))
        if dropped:
            warnings.append(f"{dropped} identifying field(s) (name, address, insurance) dropped")
        subject = SubjectData(**subj) if subj else None  # type: ignore[arg-type]
        if subject is not None and (why := check_subject(subject)):
            return self._refuse(why, "3622/3623")
        when = f"{date}T{time}" if date and time else date
        mid = f"gdt-{when}" if when else None  # never the patient number: ids end up in logs
        trials: dict[int | None, _Trial] = {}
        loose: list[Observation] = []
        for gi, g in enumerate(groups, 1):
            tid = g["8410"]
            entry = self._lookup(tid)
            obs = Observation(gi, tid, g.get("8420", ""), g.get("8411") or None, "GDT-8410", None, g.get("8421") or None,
                              parse_reference_range(g.get("8460", "")), g.get("8422") or None, None, g.get("8470") or None,
                              entry.param if entry else None)
            if entry is None:
                unknown.append(RawField(tid, g.get("8420", ""), g.get("8421") or None, g.get("8411") or None, "GDT-8410"))
                loose.append(obs)
                continue
            bucket = trials.setdefault(entry.trial, _Trial())
            bucket.observations.append(obs)
            p, value_text, unit = entry.param, g.get("8420", ""), g.get("8421")
            if p in ("quality", "posture", "manoeuvre_type", "time"):
                bucket.texts.setdefault(p, []).append(value_text or g.get("8480", ""))
                continue
            v = parse_number(value_text)
            if v is None:
                if not value_text:
                    warnings.append(f"test {tid} has no value")
                    continue
                return self._refuse(f"test {tid} value is not a number", f"8410 group {gi}", mid)
            conv, why = convert_unit(p, v, unit)
            if conv is None:
                return self._refuse(f"test {tid}: {why}", f"8410 group {gi}", mid)
            prev = bucket.values.get(p)
            if prev is not None and abs(prev[0] - conv) > 1e-9:
                return self._refuse(f"{p} reported twice with different values for one trial", f"8410 group {gi}", mid)
            bucket.values[p] = (conv, entry.bronchodilator)
            ref = parse_number(g.get("8460", ""))  # reference (predicted) value, same unit
            if ref is not None and p in _PRED:
                pred, _ = convert_unit(p, ref, unit)
                if pred is not None:
                    bucket.values.setdefault(_PRED[p], (pred, entry.bronchodilator))
        for li, (fid, line) in enumerate(text_lines, 1):
            why = self._text_line(fid, li, line, trials, loose)
            if why:
                return self._refuse(why, f"field {fid} line {li}", mid)
        results: list[ManoeuvreResult] = []
        for trial in sorted(trials, key=lambda t: (t is None, t or 0)):
            vals, texts = trials[trial].values, trials[trial].texts
            if not any(k in vals for k in MEASURED_PARAMS):
                continue
            phases = {ph for _, ph in vals.values() if ph}
            if len(phases) > 1:
                return self._refuse("trial mixes pre- and post-bronchodilator values", f"trial {trial}", mid)
            mtxt = " ".join(texts.get("manoeuvre_type", [])).upper()
            mtype: ManoeuvreType | None = "SVC" if ("SVC" in mtxt or "SLOW" in mtxt) else "FVC" if mtxt else ("FVC" if "fvc" in vals else "SVC" if "vc" in vals else None)
            r = ManoeuvreResult(
                source="gdt", number=trial, time=when, manoeuvre_type=mtype,
                posture=next(iter(texts.get("posture", ())), None),
                bronchodilator=next(iter(phases), None),
                fvc_l=vals.get("fvc", (None,))[0], fev1_l=vals.get("fev1", (None,))[0],
                fev1_fvc=vals.get("fev1_fvc", (None,))[0], pef_l_s=vals.get("pef", (None,))[0],
                bev_l=vals.get("bev", (None,))[0], fet_s=vals.get("fet", (None,))[0], vc_l=vals.get("vc", (None,))[0],
                device_quality=tuple(texts.get("quality", [])),
                device_derived=tuple((k, v) for k, (v, _) in vals.items() if k not in MEASURED_PARAMS),
                subject=subject, summary=trial is None and self.untrialled_is_summary, message_id=mid,
                observations=tuple(trials[trial].observations),
            )
            if why := check_result(r):
                return self._refuse(why, f"trial {trial}" if trial is not None else "untrialled values", mid)
            results.append(r)
        warnings.extend(f"device summary: {w}" for r in results if r.summary and (w := ratio_contradiction(r)))
        if not results:
            warnings.append("record carried no mapped spirometry values")
        self.stats.frames += 1
        return DecodedMessage("gdt", mid, tuple(results), subject, None, tuple(unknown), tuple(warnings), tuple(loose))

    def _text_line(self, fid: str, li: int, line: str, trials: dict[int | None, _Trial], loose: list[Observation]) -> str | None:
        """One free-text result line: ``label value [unit] [pct %]`` into the untrialled (summary) values."""
        m = _TEXT_LINE.fullmatch(line)
        param = self.text_labels.get(m.group("label").upper()) if m else None
        if m is None or param is None:
            loose.append(Observation(0, fid, line.strip(), system="GDT-text", sub_id=str(li)))
            return None
        value = parse_number(m.group("value"))
        unit = (m.group("unit") or "").replace("(", " ").replace(")", "").strip() or None
        if value is None:
            return f"{param} value is not a number"
        if param == "fev1_fvc" and unit is None and value > 1:
            unit = "%"
        conv, why = convert_unit(param, value, unit)
        if conv is None:
            return str(why)
        bucket = trials.setdefault(None, _Trial())
        prev = bucket.values.get(param)
        if prev is not None and abs(prev[0] - conv) > 1e-9:
            return f"{param} reported twice with different values"
        bucket.values[param] = (conv, None)
        pct = parse_number(m.group("pct") or "")
        if pct is not None and param in _PCT_PRED:
            bucket.values[_PCT_PRED[param]] = (pct, None)
        bucket.observations.append(Observation(0, fid, line.strip(), m.group("label"), "GDT-text", None, unit, None, None, None,
                                               str(li), param))
        return None

    def _lookup(self, tid: str) -> CodeMapEntry | None:
        e = self.test_map.get(tid.upper())
        if e is not None:
            return e
        if self.trial_separator and self.trial_separator in tid:
            base, _, suffix = tid.rpartition(self.trial_separator)
            if _TRIAL_SUFFIX.fullmatch(suffix) and (b := self.test_map.get(base.upper())) is not None:
                return CodeMapEntry(b.param, b.bronchodilator, int(suffix))
        return None


def mask_record(lines: Iterable[tuple[str, bytes]]) -> bytes:
    """The record re-encoded line for line with patient fields 3xxx (but sex, height, weight) as ``*``.

    Each masked content keeps its byte length, so line lengths and field 8100 still match and the
    audit copy frames like the original (its masked birth date no longer reads as a date)."""
    out: list[bytes] = []
    for fid, content in lines:
        if fid.startswith("3") and fid not in SUBJECT_FIELDS_SHOWN:
            content = b"*" * len(content)
        out.append(f"{len(content) + 9:03d}{fid}".encode("ascii") + content + b"\r\n")
    return b"".join(out)


def parse_gdt_file(data: bytes, test_map: Mapping[str, str | CodeMapEntry], **kw: object) -> list[SpiroEvent]:
    """Whole-file parser (a .gdt file usually holds one record)."""
    p = GdtStreamParser(test_map, **kw)  # type: ignore[arg-type]
    return p.feed(data) + p.end_of_input()


def encode_gdt(
    results: Iterable[ManoeuvreResult],
    subject: SubjectData | None,
    test_ids: Mapping[str, str],
    exam_time: str | None = None,
    charset: str = "3",
    trial_separator: str = "_",
    extra_fields: Iterable[tuple[str, str]] = (),
) -> bytes:
    """Build one 6310 record as a device would (simulator).  ``test_ids``: param -> test id.

    Each trial's values are sent as ``<id><sep><trial>``; results without a
    number are sent under the bare test id.  Field 8100 holds the total length.
    """
    body: list[bytes] = [encode_line("9218", GDT_VERSION, charset), encode_line("9206", charset, charset)]
    if subject is not None:
        if subject.patient_id:
            body.append(encode_line("3000", subject.patient_id, charset))
        if subject.birth_date:
            y, m, d = subject.birth_date.split("-")
            body.append(encode_line("3103", f"{d}{m}{y}", charset))
        if subject.sex:
            body.append(encode_line("3110", "1" if subject.sex == "male" else "2", charset))
        if subject.height_cm is not None:
            body.append(encode_line("3622", f"{subject.height_cm:g}", charset))
        if subject.weight_kg is not None:
            body.append(encode_line("3623", f"{subject.weight_kg:g}", charset))
    if exam_time:
        date, _, t = exam_time.partition("T")
        y, m, d = date.split("-")
        body.append(encode_line("6200", f"{d}{m}{y}", charset))
        if t:
            body.append(encode_line("6201", t.replace(":", "")[:6], charset))
    for fid, content in extra_fields:
        body.append(encode_line(fid, content, charset))
    for r in results:
        suffix = f"{trial_separator}{r.number}" if r.number is not None else ""
        items: list[tuple[str, str, str]] = []
        for p, v, unit in (("fvc", r.fvc_l, "L"), ("fev1", r.fev1_l, "L"), ("fev1_fvc", r.fev1_fvc, "%"), ("pef", r.pef_l_s, "L/s"),
                           ("bev", r.bev_l, "L"), ("fet", r.fet_s, "s"), ("vc", r.vc_l, "L")):
            if v is not None and p in test_ids:
                shown = v * 100 if p == "fev1_fvc" else v
                items.append((p, f"{shown:.2f}", unit))
        if r.posture and "posture" in test_ids:
            items.append(("posture", r.posture, ""))
        if r.manoeuvre_type and "manoeuvre_type" in test_ids:
            items.append(("manoeuvre_type", r.manoeuvre_type, ""))
        for q in r.device_quality:
            if "quality" in test_ids:
                items.append(("quality", q, ""))
        for p, value, unit in items:
            body.append(encode_line("8410", test_ids[p] + suffix, charset))
            body.append(encode_line("8411", p.upper(), charset))
            body.append(encode_line("8420", value, charset))
            if unit:
                body.append(encode_line("8421", unit, charset))
    head = encode_line("8000", RECORD_EXAM_DATA, charset)
    total = len(head) + 14 + sum(len(b) for b in body)  # the 8100 line is 14 bytes (5-digit length)
    if total > 99999:
        raise ValueError("GDT record longer than 99999 bytes")
    return head + encode_line("8100", f"{total:05d}", charset) + b"".join(body)


#: GDT versions a request record can be written in (field 9218).
REQUEST_VERSIONS = ("02.10", "03.00")


def encode_request(
    patient_id: str,
    *,
    receiver_id: str,
    sender_id: str,
    version: str = GDT_VERSION,
    charset: str = "3",
    sex: str | None = None,
    height_cm: float | None = None,
    weight_kg: float | None = None,
    birth_date: str | None = None,
    software: str = "als-screening-collector",
) -> bytes:
    """A request record (6302, "new examination") for the device's software.

    Only what a device needs to run the test is written: the patient number (3000, the screening
    pseudonym, also as the name 3101 because device software refuses an empty name), and when
    known sex (3110), height (3622) and weight (3623); the birth date (3103) only when the caller
    passes one (a site setting).  GDT 2.1 records carry their length in 8100; GDT 3.0 dropped the
    record length and names the sending software (0103) instead.
    """
    if version not in REQUEST_VERSIONS:
        raise ValueError(f"GDT request version {version!r}: use one of {', '.join(REQUEST_VERSIONS)}")
    body: list[bytes] = [encode_line("8315", receiver_id, charset), encode_line("8316", sender_id, charset)]
    if version == "03.00":
        body.append(encode_line("0103", software, charset))
    body += [encode_line("9206", charset, charset), encode_line("9218", version, charset),
             encode_line("3000", patient_id, charset), encode_line("3101", patient_id, charset)]
    if birth_date:
        y, m, d = birth_date.split("-")
        body.append(encode_line("3103", f"{d}{m}{y}", charset))
    if sex in ("male", "female"):
        body.append(encode_line("3110", "1" if sex == "male" else "2", charset))
    if height_cm is not None:
        body.append(encode_line("3622", f"{height_cm:g}", charset))
    if weight_kg is not None:
        body.append(encode_line("3623", f"{weight_kg:g}", charset))
    head = encode_line("8000", RECORD_REQUEST, charset)
    if version == "03.00":
        return head + b"".join(body)
    total = len(head) + 14 + sum(len(b) for b in body)
    return head + encode_line("8100", f"{total:05d}", charset) + b"".join(body)


def parse_request(data: bytes) -> dict[str, str]:
    """The fields of a 6302 request record (the simulated device reads it); {} when it is not one."""
    out: dict[str, str] = {}
    for line in data.split(b"\r\n"):
        m = _LINE.fullmatch(line)
        if m is None or int(m.group(1)) != len(line) + 2:
            continue
        out.setdefault(m.group(2).decode(), m.group(3).decode("latin-1"))
    return out if out.get("8000") == RECORD_REQUEST else {}


def declared_record_length(head: bytes) -> int | None:
    """The 8100 record length a file's first record declares (None when it declares none).

    A GDT 2.x writer states the whole record's byte count up front: a file still shorter than that
    is being written (the exchange-folder watcher waits for it)."""
    lines = head.split(b"\r\n", 3)[:3]
    if not lines or not _START.match(lines[0]):
        return None
    for line in lines[1:]:
        m = _LINE.fullmatch(line)
        if m is not None and m.group(2) == b"8100" and int(m.group(1)) == len(line) + 2:
            n = parse_number(m.group(3).decode("ascii", "replace"))
            return int(n) if n is not None and n == int(n) and n > 0 else None
    return None

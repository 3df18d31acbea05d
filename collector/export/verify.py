"""Check a bundle with nothing but the bundle: fixity, every file parses, audit extract, figures, protocol.

Run by the central team, without any database.  Every problem names the file it is
about.  The night figures are recomputed from ``samples_<s>.csv`` (and
``gaps_<s>.csv`` as hold breaks) with the same analysis code and must equal the
report in ``night_<s>.json``; the EDF must hold the same valid values in the same
order as the CSV.  Definitions, thresholds and the decision are held to the protocol's own
values (:mod:`.protocol_check`), never to what the bundle says of itself.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from collector.oximetry.analysis.report import AnalysisConfig, NightData, night_report
from collector.storage.audit import GENESIS, row_hash
from drivers.protocols.common import Flag

from . import bag, csvs, edf, protocol_check, signature

# Figures recomputed from the CSV and compared with the exported report.
CHECKED_FIGURES = ("n_samples", "n_usable_samples", "recording_s", "analysed_s", "t90_s", "t90_pct", "t90_s_inclusive",
                   "night_valid", "meets_t90_criterion", "decision", "borderline")
SIGNATURES = "data/signatures.json"
_SESSION_FILE = re.compile(r"^data/(samples|gaps|events|notes|night|spirometry)_(\d+)(\.discontinuous)?\.(csv|json|edf|png)$")


@dataclass
class VerifyResult:
    bundle: str
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: int = 0
    signatures: list[dict[str, Any]] = field(default_factory=list)  # each person's signature: valid or why not

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "ok": self.ok, "files": self.files,
                "problems": [{"file": f, "problem": p} for f, p in self.problems], "notes": self.notes,
                "signatures": self.signatures}


def config_from_report(report: dict[str, Any]) -> AnalysisConfig:
    d = report["definitions"]
    return AnalysisConfig(max_hold_s=float(d["max_hold_s"]), threshold_pct=float(d["threshold_pct"]),
                          min_analysed_h=float(d["min_analysed_h"]), min_analysed_pct=float(d["min_analysed_pct"]))


def night_from_csv(samples: list[dict[str, str]], gaps: list[dict[str, str]]) -> NightData:
    """NightData exactly as the site loaded it (collector.oximetry.store.load_night), from the CSV text.

    Records from device memory on time already covered (flag BACKFILL_OVERLAP) are in the file, not in the night.
    """
    samples = [r for r in samples if not int(r["flags"]) & int(Flag.BACKFILL_OVERLAP)]
    t = np.array([csvs.parse_iso_ms(r["host_utc"]) for r in samples], dtype=np.int64)
    f = lambda k: np.array([np.nan if r[k] == "" else float(r[k]) for r in samples], dtype=np.float64)  # noqa: E731
    breaks = []
    for g in gaps:
        if g["breaks_hold"] == "1":
            s = csvs.parse_iso_ms(g["start_utc"])
            e = csvs.parse_iso_ms(g["end_utc"]) if g["end_utc"] else s
            breaks.append((s / 1000.0, e / 1000.0, g["cause"]))
    return NightData(
        t_s=t / 1000.0, spo2=f("spo2_pct"), pulse=f("pulse_bpm"),
        valid=np.array([r["valid"] == "1" for r in samples], dtype=bool),
        pulse_valid=np.array([r["pulse_valid"] == "1" for r in samples], dtype=bool),
        breaks=breaks, flags=np.array([int(r["flags"]) for r in samples], dtype=np.int64),
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


class _Checker:
    def __init__(self, b: bag.Bag, result: VerifyResult) -> None:
        self.protocol = protocol_check.protocol()
        self.recomputed_nights: list[dict[str, Any]] = []
        self.files = b.files
        self.r = result
        self.parsed: dict[str, Any] = {}

    def bad(self, name: str, problem: str) -> None:
        self.r.problems.append((name, problem))

    # -- parse every payload file ------------------------------------------------------------
    def parse_all(self) -> None:
        columns = {"samples": csvs.SAMPLE_COLUMNS, "gaps": csvs.GAP_COLUMNS, "events": csvs.EVENT_COLUMNS,
                   "notes": csvs.NOTE_COLUMNS, "alerts": csvs.ALERT_COLUMNS, "spirometry": csvs.MANOEUVRE_COLUMNS, "audit": csvs.AUDIT_COLUMNS}
        for name, data in sorted(self.files.items()):
            if not name.startswith("data/"):
                continue
            stem = Path(name).name.split("_")[0].split(".")[0]
            try:
                if name.endswith(".csv"):
                    self.parsed[name] = csvs.read_csv(data, columns[stem])
                elif name.endswith(".json"):
                    self.parsed[name] = json.loads(data.decode("utf-8"))
                elif name.endswith(".edf"):
                    self.parsed[name] = edf.read_signals(data)
                elif name.endswith(".png"):
                    from PIL import Image

                    with Image.open(io.BytesIO(data)) as im:
                        im.verify()
                elif name.endswith(".pdf"):
                    self._pdf(name, data)
                else:
                    self.bad(name, "unexpected kind of file in the payload")
            except KeyError:
                self.bad(name, "unexpected CSV file in the payload")
            except Exception as exc:  # any parser failure is a finding about this file
                self.bad(name, f"does not parse ({type(exc).__name__}: {str(exc)[:200]})")

    def _pdf(self, name: str, data: bytes) -> None:
        if not data.startswith(b"%PDF-") or b"%%EOF" not in data[-1024:]:
            raise ValueError("not a complete PDF (header or %%EOF trailer missing)")
        pages = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
        if pages < 1:
            raise ValueError("has no pages")
        info = bag.parse_info(self.files.get(bag.BAG_INFO, b""))
        printed = next(iter(info.get("Payload-SHA256-Without-Report") or []), None)
        if printed is not None:
            payload = {k: v for k, v in self.files.items() if k.startswith("data/") and k != name and k != SIGNATURES}
            if printed != bag.sha256(bag.manifest_text(payload)):
                raise ValueError("the payload hash in bag-info.txt does not match the payload without report.pdf")
            if printed.encode() not in data:
                raise ValueError("does not carry the bundle's payload hash (a report from another bundle?)")

    # -- cross-file checks -------------------------------------------------------------------
    def expected_files(self) -> None:
        subject = self.parsed.get("data/subject.json")
        for required in ("data/subject.json", "data/eligibility.json", "data/audit.csv", "data/report.pdf"):
            if required not in self.files:
                self.bad(required, "is missing from the payload")
        if not isinstance(subject, dict):
            return
        for s in subject.get("sessions", []):
            sid = s["id"]
            names = ([f"samples_{sid}.csv", f"gaps_{sid}.csv", f"events_{sid}.csv", f"night_{sid}.json",
                      f"night_{sid}.edf", f"night_{sid}.discontinuous.edf", f"night_{sid}.png"] if s["kind"] == "night"
                     else [f"spirometry_{sid}.csv", f"spirometry_{sid}.json"])
            for n in names:
                if f"data/{n}" not in self.files:
                    self.bad(f"data/{n}", f"is missing (subject.json lists {s['kind']} session {sid})")
        for name in self.files:
            m = _SESSION_FILE.match(name)
            if m and int(m.group(2)) not in {s["id"] for s in subject.get("sessions", [])}:
                self.bad(name, "belongs to a session that subject.json does not list")

    def eligibility(self) -> None:
        """The decision against the protocol's thresholds, its own criteria and the recomputed nights."""
        e = self.parsed.get("data/eligibility.json")
        if e is None:
            return
        if not isinstance(e, dict) or "decision" not in e:
            self.bad("data/eligibility.json", "has no 'decision'")
            return
        for problem in protocol_check.threshold_problems(e, self.protocol):
            self.bad("data/eligibility.json", problem + " (a protocol deviation, or an edited bundle)")
        for problem in protocol_check.decision_problems(e, self.recomputed_nights, self.protocol):
            self.bad("data/eligibility.json", problem)

    def nights(self) -> None:
        for name in sorted(self.files):
            m = re.match(r"^data/night_(\d+)\.json$", name)
            if not m or name not in self.parsed:
                continue
            sid = m.group(1)
            samples = self.parsed.get(f"data/samples_{sid}.csv")
            gaps = self.parsed.get(f"data/gaps_{sid}.csv")
            if samples is None or gaps is None:
                continue  # already reported as missing or unparsable
            try:
                report = self.parsed[name]["report"]
                for problem in protocol_check.night_definition_problems(report, self.protocol):
                    self.bad(name, problem + " (a protocol deviation, or an edited bundle)")
                data = night_from_csv(samples, gaps)
                again = night_report(data, config_from_report(report))
                self.recomputed_nights.append({"session_id": sid, **night_report(data, self.protocol.analysis)})
            except Exception as exc:
                self.bad(f"data/samples_{sid}.csv", f"cannot be analysed with night_{sid}.json's definitions ({type(exc).__name__}: {exc})")
                continue
            for k in CHECKED_FIGURES:
                if not _same(report.get(k), again.get(k)):
                    self.bad(name, f"{k} = {report.get(k)!r} but the samples CSV gives {again.get(k)!r} "
                                   f"(samples_{sid}.csv / gaps_{sid}.csv disagree with the report)")
            self._edf(sid, data)

    def _edf(self, sid: str, data: NightData) -> None:
        """Both EDF files hold the CSV's valid values, in order, each at its own second on the grid."""
        g = edf.grid(np.rint(data.t_s * 1000.0).astype(np.int64))
        for name in (f"data/night_{sid}.edf", f"data/night_{sid}.discontinuous.edf"):
            sig = self.parsed.get(name)
            if sig is None:
                continue
            for label, values, ok, rng in ((edf.SPO2_LABEL, data.spo2, data.valid, edf.SPO2_RANGE),
                                           (edf.PULSE_LABEL, data.pulse, data.pulse_valid, edf.PULSE_RANGE)):
                if label not in sig:
                    self.bad(name, f"has no {label} signal")
                    continue
                present = sig[label]["digital"] != rng[1][0]
                got = sig[label]["data"][present]
                with np.errstate(invalid="ignore"):
                    use = ok & np.isfinite(values)
                want = np.clip(values[use], 0.0, rng[0][1])
                if got.size != want.size or not np.allclose(got, want, atol=0.051):
                    self.bad(name, f"{label} holds {got.size} valid values but samples_{sid}.csv has {want.size}, "
                                   "or they differ")
                    continue
                starts = sig["record_starts_s"]
                fs = int(sig[label]["fs"])
                spr = present.size // max(1, starts.size)
                at = (np.repeat(starts, spr) * fs + np.tile(np.arange(spr), starts.size))[present]
                if not np.array_equal(np.rint(at).astype(np.int64), g.cells[use]):
                    self.bad(name, f"{label} values are not at the seconds of samples_{sid}.csv's host times")

    def audit(self) -> None:
        rows = self.parsed.get("data/audit.csv")
        if rows is None:
            return
        prev: dict[str, Any] | None = None
        withheld = 0
        for rec in rows:
            try:
                row = csvs.audit_row_in(rec)
            except (ValueError, KeyError) as exc:
                self.bad("data/audit.csv", f"row {rec.get('id')!r} is malformed ({exc})")
                return
            if prev is not None and row["id"] <= prev["id"]:
                self.bad("data/audit.csv", f"row {row['id']} is out of order (ids must increase)")
            if row["id"] == 1 and row["prev_hash"] != GENESIS:
                self.bad("data/audit.csv", "row 1 does not start from the genesis hash")
            if prev is not None and row["id"] == prev["id"] + 1 and row["prev_hash"] != prev["row_hash"]:
                self.bad("data/audit.csv", f"row {row['id']} does not chain to row {prev['id']} (a row was changed)")
            if row["withheld"]:
                withheld += 1
            elif row_hash(row["prev_hash"], row) != row["row_hash"]:
                self.bad("data/audit.csv", f"row {row['id']}: content does not match its hash (row edited)")
            prev = row
        self.r.notes.append(f"audit extract: {len(rows)} rows checked against their own hashes"
                            + (f", {withheld} with personal data withheld (hash not recomputable)" if withheld else ""))

    def signatures(self) -> None:
        """Each signature's content against its hash, and against the record in this bundle it signs."""
        if SIGNATURES not in self.files:
            self.r.notes.append("no signatures.json: a bundle from before electronic signatures, or none were recorded")
            return
        if SIGNATURES not in self.parsed:
            return  # reported as unparsable
        files = {k: bag.sha256(v) for k, v in self.files.items() if k.startswith("data/") and k != SIGNATURES}
        problems, entries, notes = check_signatures(self.parsed[SIGNATURES], self.parsed.get("data/eligibility.json"), files)
        for p in problems:
            self.bad(SIGNATURES, p)
        self.r.signatures.extend(entries)
        self.r.notes.extend(notes)


def check_signatures(doc: Any, eligibility: Any, files: dict[str, str]) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """signatures.json against itself and the bundle: (problems, one entry per signature, notes).  Never raises."""
    from collector.signatures.content import content_hash, decision_content

    problems: list[str] = []
    entries: list[dict[str, Any]] = []
    notes: list[str] = []
    sigs = doc.get("signatures") if isinstance(doc, dict) else None
    if not isinstance(sigs, list):
        return ["has no list of 'signatures'"], entries, notes
    for sig in sigs:
        if not (isinstance(sig, dict) and isinstance(sig.get("uuid"), str) and isinstance(sig.get("record_type"), str)
                and isinstance(sig.get("content_sha256"), str) and "content" in sig):
            problems.append("holds an entry that is not a signature (uuid, record_type, content, content_sha256)")
            continue
        kind = sig["record_type"]
        label = f"signature {sig['uuid']} ({sig.get('meaning')} by {sig.get('full_name')}, {sig.get('signed_local')}, {kind.replace('_', ' ')})"
        try:
            digest = content_hash(sig["content"])
        except (TypeError, ValueError, OverflowError) as exc:
            problems.append(f"{label}: its content cannot be canonicalised ({type(exc).__name__})")
            continue
        if digest != sig["content_sha256"]:
            problems.append(f"{label}: its content does not match its SHA-256 (altered after signing)")
            entries.append({"uuid": sig["uuid"], "record_type": kind, "valid": False, "why": "content altered"})
            continue
        why = ""
        if kind == "eligibility_decision":
            try:
                same = isinstance(eligibility, dict) and content_hash(decision_content(eligibility)) == digest
            except (TypeError, ValueError, OverflowError):
                same = False
            if not same:
                why = "the eligibility decision in this bundle is not the one signed (it changed after signing)"
        elif kind == "export":
            signed = sig["content"].get("files") if isinstance(sig["content"], dict) else None
            if signed != files:
                signed_files = signed if isinstance(signed, dict) else {}
                changed = sorted(str(k) for k in set(files) | set(signed_files) if signed_files.get(k) != files.get(k))
                why = f"the bundle's files are not the ones signed ({', '.join(changed[:5]) or 'no file list'})"
        elif kind != "review_resolution":
            why = f"unknown record type {kind!r}"
        valid = not why
        if not valid and sig.get("valid") is not False:
            problems.append(f"{label}: NOT VALID: {why}")
        entries.append({"uuid": sig["uuid"], "record_type": kind, "meaning": sig.get("meaning"), "full_name": sig.get("full_name"),
                        "signed_local": sig.get("signed_local"), "valid": valid, "why": why or None})
        notes.append(f"{label}: " + ("valid" if valid else f"NO LONGER VALID: {why}"))
    return problems, entries, notes


def verify_bundle(path: Path | str, *, site_keys: dict[str, Ed25519PublicKey] | None = None,
                  earlier: list[bytes] | None = None) -> VerifyResult:
    """All problems of a bundle (folder or zip); ``result.ok`` when there are none.

    ``site_keys``: the registered public keys (by fingerprint) the site signature must be made with;
    ``earlier``: signature documents of the site's earlier bundles or uploads, whose chain heads
    this bundle must agree with (:mod:`.signature`).
    """
    path = Path(path)
    result = VerifyResult(path.name)
    try:
        b = bag.read_bag(path)
    except bag.BagError as exc:
        result.problems.append((path.name, str(exc)))
        return result
    result.files = len(b.files)
    result.problems.extend(bag.check_bag(b))
    c = _Checker(b, result)
    c.parse_all()
    c.expected_files()
    c.nights()  # first: the decision is checked against the nights recomputed here
    c.eligibility()
    c.audit()
    sig_problems, sig_notes = signature.check(b.files, site_keys, earlier or [])
    result.problems.extend(sig_problems)
    result.notes.extend(sig_notes)
    c.signatures()
    return result

"""``collector export --format odm``: the subjects' ODM 1.3.2 file and results.csv, from their bundles.

The bundles are built in memory exactly as ``collector export`` builds them (scrubbed,
checked for personal data) and only their files feed the ODM, so both formats always
agree.  The export is recorded in the audit trail like a bundle export.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from collector import __version__
from collector.clock import utc_iso
from collector.errors import Conflict, InvalidInput
from collector.storage import audit
from collector.storage.db import transaction

from . import bag
from .bundle import build_subject_bag, site_name
from .odm import Signature, odm_document, results_csv, results_of


@dataclass
class OdmExport:
    odm: Path
    results: Path
    subjects: list[str]
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256

    def as_dict(self) -> dict[str, Any]:
        return {"odm": str(self.odm), "results": str(self.results), "subjects": self.subjects, "files": self.files}


_PREFERENCE = {"eligibility_decision": 0, "review_resolution": 1, "export": 2}


def signatures_for(conn: sqlite3.Connection, subjects: list[str], bags: list[dict[str, bytes]] | None = None) -> list[Signature]:
    """The people's valid signatures each bundle holds (data/signatures.json), the decision's approval first.

    ODM carries one Signature per SubjectData, so the first of a subject is the one written: the newest valid
    signature of the eligibility decision, else of a review resolution, else of the export.
    """
    import json

    out: list[Signature] = []
    for files in bags or []:
        raw = files.get("data/signatures.json")
        if raw is None:
            continue
        sigs = [s for s in json.loads(raw).get("signatures", []) if s.get("valid")]
        sigs.sort(key=lambda s: (_PREFERENCE.get(s["record_type"], 9), s["signed_utc"]), reverse=False)
        best: dict[str, list[dict[str, Any]]] = {}
        for s in sigs:
            best.setdefault(s["record_type"], []).append(s)
        ordered = [x for t in sorted(best, key=lambda t: _PREFERENCE.get(t, 9)) for x in reversed(best[t])]
        out.extend(Signature(subject=s["subject_id"], user=s["signer"], meaning=s["meaning"], legal_reason=s["legal_reason"],
                             at_utc=s["signed_utc"], full_name=s["full_name"]) for s in ordered)
    return out


def export_odm(conn: sqlite3.Connection, subjects: list[str], out_dir: Path, *, config: dict[str, Any], by: str, now: float,
               session_ids: list[int] | None = None, signatures: Iterable[Signature] | None = None) -> OdmExport:
    site_name(config)  # refuses the default site name before any work
    bags = [build_subject_bag(conn, s, config=config, by=by, now=now, session_ids=session_ids)[1] for s in subjects]
    odm_cfg = config["export"]["odm"]
    stamp = datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    created = utc_iso(now)
    sigs = list(signatures) if signatures is not None else signatures_for(conn, subjects, bags)
    odm_bytes = odm_document(bags, odm_cfg, file_oid=f"ODM.{odm_cfg['study_oid']}.{stamp}", created_utc=created,
                             software=f"collector {__version__}", exported_by=by, signatures=sigs)
    csv_bytes = results_csv([r for b in bags for r in results_of(b)], odm_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = subjects[0] if len(subjects) == 1 else f"{len(subjects)}-subjects"
    odm_path, csv_path = out_dir / f"{name}_{stamp}.odm.xml", out_dir / f"{name}_{stamp}.results.csv"
    for p in (odm_path, csv_path):
        if p.exists():
            raise Conflict(f"{p} already exists; export into another --out folder or move it away")
    result = OdmExport(odm_path, csv_path, subjects, {odm_path.name: bag.sha256(odm_bytes), csv_path.name: bag.sha256(csv_bytes)})
    try:
        with transaction(conn):
            for s in subjects:
                audit.append(conn, at=now, actor=by, action="export_made", subject_id=s,
                             new={"format": "odm", "files": result.files})
            try:
                odm_path.write_bytes(odm_bytes)
                csv_path.write_bytes(csv_bytes)
            except OSError as exc:
                raise InvalidInput(f"cannot write the ODM export to {out_dir}: {exc.strerror or exc}") from None
    except BaseException:
        for p in (odm_path, csv_path):
            p.unlink(missing_ok=True)
        raise
    return result

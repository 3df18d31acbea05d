"""Load many verified bundles (many sites) into one DuckDB file for study-wide analysis.

Rows are keyed by where and what they were recorded in: ``site_uuid`` (made when the
site's database was created) and ``session_uuid`` (a session's UUID, the same on every
export of it).  ``sessions`` records, per (site, session), which bundle's copy is loaded:
the newest export (``export_utc``, then the bundle hash to break a tie), so merging the
bundles of a study in any order, or the same bundle twice, gives the same tables.
Subject-level rows (``criteria``, ``decisions``) follow the newest export of the subject.
A bundle that fails verification is refused and nothing at all is loaded.

DuckDB reads the CSV files itself (no pandas: it is not a runtime dependency).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from collector.errors import InvalidInput

from . import bag
from .verify import verify_bundle

_KEY = "bundle_id TEXT, site_uuid TEXT, site TEXT, subject TEXT"
TABLES = {
    "bundles": "bundle_id TEXT PRIMARY KEY, bundle TEXT, site_uuid TEXT, site TEXT, subject TEXT, export_utc TEXT, software TEXT",
    "sessions": "site_uuid TEXT, session_uuid TEXT, site TEXT, subject TEXT, session_id BIGINT, kind TEXT, started_utc TEXT,"
                " bundle_id TEXT, export_utc TEXT",  # one row per (site_uuid, session_uuid)
    "samples": f"{_KEY}, session_uuid TEXT, session_id BIGINT, host_utc TIMESTAMPTZ, device_time TEXT,"
               " spo2_pct DOUBLE, pulse_bpm DOUBLE, pai_pct DOUBLE, valid BOOLEAN, pulse_valid BOOLEAN, flags BIGINT,"
               " flag_names TEXT, status_raw BIGINT, counter BIGINT",
    "nights": f"{_KEY}, session_uuid TEXT, session_id BIGINT, definition TEXT, start_s DOUBLE,"
              " recording_s DOUBLE, analysed_s DOUBLE, analysed_pct DOUBLE, t90_s DOUBLE, t90_pct DOUBLE,"
              " night_valid BOOLEAN, meets_t90_criterion BOOLEAN, decision TEXT, borderline BOOLEAN,"
              " needs_review BOOLEAN, nadir_spo2 DOUBLE, odi3_per_h DOUBLE, odi4_per_h DOUBLE, report_json TEXT",
    "spirometry": f"{_KEY}, session_uuid TEXT, session_id BIGINT, n_manoeuvres BIGINT, valid BOOLEAN,"
                  " equation TEXT, fvc_l DOUBLE, fev1_l DOUBLE, predicted_fvc_l DOUBLE, lln_fvc_l DOUBLE, z_fvc DOUBLE,"
                  " fvc_pct_predicted DOUBLE, other_equation TEXT, other_fvc_pct_predicted DOUBLE, grade_fvc TEXT,"
                  " result_json TEXT",
    "criteria": f"{_KEY}, criterion TEXT, state TEXT, reason TEXT, value_json TEXT",
    "decisions": f"{_KEY}, export_utc TEXT, decision TEXT, evaluated_at TEXT, age_at_screening_years BIGINT, summary_json TEXT",
}
SESSION_TABLES = ("samples", "nights", "spirometry")
SUBJECT_TABLES = ("criteria", "decisions")
_RESULT_KEYS = ("valid", "equation", "fvc_l", "fev1_l", "predicted_fvc_l", "lln_fvc_l", "z_fvc", "fvc_pct_predicted",
                "other_equation", "other_fvc_pct_predicted", "grade_fvc")
_NIGHT_KEYS = ("start_s", "recording_s", "analysed_s", "analysed_pct", "t90_s", "t90_pct", "night_valid",
               "meets_t90_criterion", "decision", "borderline", "needs_review", "nadir_spo2", "odi3_per_h", "odi4_per_h")
_SAMPLE_SELECT = (
    "CAST(host_utc AS TIMESTAMPTZ), device_time, CAST(spo2_pct AS DOUBLE), CAST(pulse_bpm AS DOUBLE),"
    " CAST(pai_pct AS DOUBLE), valid = '1', pulse_valid = '1', CAST(flags AS BIGINT), flag_names,"
    " CAST(status_raw AS BIGINT), CAST(counter AS BIGINT)")
_SAMPLE_COLS = ("host_utc, device_time, spo2_pct, pulse_bpm, pai_pct, valid, pulse_valid, flags, flag_names,"
                " status_raw, counter")


def _insert(con: Any, table: str, row: dict[str, Any]) -> None:
    cols = list(row)
    con.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [row[c] for c in cols])


def _newer(export_utc: str, bundle_id: str, held: tuple[str, str] | None) -> bool:
    """Does this export replace the one held?  Newest export time wins; the bundle hash breaks a tie."""
    return held is None or (export_utc, bundle_id) > (held[0], held[1])


class _Loader:
    def __init__(self, con: Any, tmp: Path) -> None:
        self.con = con
        self.tmp = tmp
        self.added = {k: 0 for k in TABLES}
        self.replaced = 0
        self.older = 0

    def _count(self, sql: str, params: list[Any]) -> int:
        return int(self.con.execute(sql, params).fetchone()[0])

    def bundle(self, b: bag.Bag, bundle_id: str) -> None:
        files = b.files
        subject = json.loads(files["data/subject.json"])
        site_uuid = subject.get("site_uuid")
        if not site_uuid:
            raise InvalidInput(f"{b.name} has no site UUID (exported by an older collector); ask the site to export it again")
        site, pseudonym, export_utc = subject["site"], subject["pseudonym"], subject["export_utc"]
        key = {"bundle_id": bundle_id, "site_uuid": site_uuid, "site": site, "subject": pseudonym}
        _insert(self.con, "bundles", {**key, "bundle": b.name, "export_utc": export_utc, "software": subject["software"]})
        self.added["bundles"] += 1
        for s in subject["sessions"]:
            held = self.con.execute("SELECT export_utc, bundle_id FROM sessions WHERE site_uuid = ? AND session_uuid = ?",
                                    [site_uuid, s["session_uuid"]]).fetchone()
            if not _newer(export_utc, bundle_id, held):
                self.older += 1
                continue
            if held is not None:
                self.replaced += 1
                for t in SESSION_TABLES:
                    self.con.execute(f"DELETE FROM {t} WHERE site_uuid = ? AND session_uuid = ?", [site_uuid, s["session_uuid"]])
                self.con.execute("DELETE FROM sessions WHERE site_uuid = ? AND session_uuid = ?", [site_uuid, s["session_uuid"]])
            _insert(self.con, "sessions", {"site_uuid": site_uuid, "session_uuid": s["session_uuid"], "site": site,
                                           "subject": pseudonym, "session_id": s["id"], "kind": s["kind"],
                                           "started_utc": s.get("started_utc"), "bundle_id": bundle_id, "export_utc": export_utc})
            self.added["sessions"] += 1
            self._session(files, key, s)
        held_subject = self.con.execute(
            "SELECT export_utc, bundle_id FROM decisions WHERE site_uuid = ? AND subject = ?", [site_uuid, pseudonym]).fetchone()
        if _newer(export_utc, bundle_id, held_subject):
            for t in SUBJECT_TABLES:
                self.con.execute(f"DELETE FROM {t} WHERE site_uuid = ? AND subject = ?", [site_uuid, pseudonym])
            self._subject(files, key, subject)

    def _session(self, files: dict[str, bytes], key: dict[str, Any], s: dict[str, Any]) -> None:
        sid, suuid = s["id"], s["session_uuid"]
        if s["kind"] == "night":
            path = self.tmp / f"samples_{key['bundle_id']}_{sid}.csv"
            path.write_bytes(files[f"data/samples_{sid}.csv"])
            before = self._count("SELECT COUNT(*) FROM samples", [])
            self.con.execute(
                f"INSERT INTO samples (bundle_id, site_uuid, site, subject, session_uuid, session_id, {_SAMPLE_COLS})"
                f" SELECT ?, ?, ?, ?, session_uuid, ?, {_SAMPLE_SELECT}"
                " FROM read_csv(?, header = true, all_varchar = true, quote = '\"', escape = '\"', delim = ',')",
                [key["bundle_id"], key["site_uuid"], key["site"], key["subject"], sid, str(path)])
            self.added["samples"] += self._count("SELECT COUNT(*) FROM samples", []) - before
            path.unlink()
            rep = json.loads(files[f"data/night_{sid}.json"])["report"]
            _insert(self.con, "nights", {**key, "session_uuid": suuid, "session_id": sid, "definition": rep["definitions"]["t90"],
                                         **{k: rep.get(k) for k in _NIGHT_KEYS}, "report_json": json.dumps(rep, sort_keys=True)})
            self.added["nights"] += 1
        else:
            sp = json.loads(files[f"data/spirometry_{sid}.json"])
            res = sp.get("result") or {}
            _insert(self.con, "spirometry", {**key, "session_uuid": suuid, "session_id": sid,
                                             "n_manoeuvres": len(sp.get("manoeuvres") or []),
                                             **{k: res.get(k) for k in _RESULT_KEYS},
                                             "result_json": json.dumps(res, sort_keys=True, default=str) if res else None})
            self.added["spirometry"] += 1

    def _subject(self, files: dict[str, bytes], key: dict[str, Any], subject: dict[str, Any]) -> None:
        elig = json.loads(files["data/eligibility.json"])
        for c in elig.get("criteria") or []:
            _insert(self.con, "criteria", {**key, "criterion": c.get("id"), "state": c.get("state"), "reason": c.get("reason"),
                                           "value_json": json.dumps(c.get("value"), sort_keys=True, default=str)})
            self.added["criteria"] += 1
        _insert(self.con, "decisions", {**key, "export_utc": subject["export_utc"], "decision": elig.get("decision"),
                                        "evaluated_at": elig.get("evaluated_at"),
                                        "age_at_screening_years": subject.get("age_at_screening_years"),
                                        "summary_json": json.dumps(elig.get("summary"), default=str)})
        self.added["decisions"] += 1


def merge_bundles(paths: list[Path], out: Path) -> dict[str, Any]:
    """Verify every bundle, then load them all in one transaction; returns rows added per table."""
    import duckdb

    failed = [r for r in (verify_bundle(p) for p in paths) if not r.ok]
    if failed:
        first = failed[0]
        raise InvalidInput(
            f"refusing to merge: {len(failed)} bundle(s) fail verification, first {first.bundle}: "
            f"{first.problems[0][0]}: {first.problems[0][1]}; run collector verify on each and ask the site to re-export")
    con = duckdb.connect(str(out))
    skipped: list[str] = []
    for name, cols in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({cols})")
    # A DuckDB file, not the collector's SQLite database: collector.storage.db.transaction() does not apply.
    con.execute("BEGIN TRANSACTION")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            loader = _Loader(con, Path(tmp))
            for p in paths:
                b = bag.read_bag(Path(p))
                bundle_id = bag.sha256(b.files[bag.TAGMANIFEST])
                if con.execute("SELECT 1 FROM bundles WHERE bundle_id = ?", [bundle_id]).fetchone():
                    skipped.append(b.name)
                    continue
                loader.bundle(b, bundle_id)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    return {"out": str(out), "bundles": len(paths) - len(skipped), "already_merged": skipped, "rows_added": loader.added,
            "sessions_replaced": loader.replaced, "sessions_older_than_loaded": loader.older}


def stage_bundle(b: bag.Bag, bundle_id: str) -> Any:
    """One verified bundle's rows in an in-memory DuckDB with the merge tables (the warehouse writes them to Parquet)."""
    import duckdb

    con = duckdb.connect(":memory:")
    for name, cols in TABLES.items():
        con.execute(f"CREATE TABLE {name} ({cols})")
    with tempfile.TemporaryDirectory() as tmp:
        _Loader(con, Path(tmp)).bundle(b, bundle_id)
    return con


def columns(table: str) -> list[tuple[str, str]]:
    """(name, type) of a merge table's columns, in order."""
    out = []
    for part in TABLES[table].split(","):
        name, kind = part.split()[:2]
        out.append((name, kind))
    return out

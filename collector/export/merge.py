"""Load many verified bundles (many sites) into one DuckDB file for study-wide analysis.

One table per kind (samples, nights, spirometry, criteria, decisions) plus
``bundles`` (one row per merged bundle, keyed by the sha256 of its tag manifest, so
merging the same bundle twice adds nothing).  A bundle that fails verification is
refused and nothing at all is loaded.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from collector.errors import InvalidInput

from . import bag
from .verify import verify_bundle

TABLES = {
    "bundles": "bundle_id TEXT PRIMARY KEY, bundle TEXT, site TEXT, subject TEXT, export_utc TEXT, software TEXT",
    "samples": "bundle_id TEXT, site TEXT, subject TEXT, session_id BIGINT, host_utc TIMESTAMPTZ, device_time TEXT,"
               " spo2_pct DOUBLE, pulse_bpm DOUBLE, pai_pct DOUBLE, valid BOOLEAN, pulse_valid BOOLEAN, flags BIGINT,"
               " flag_names TEXT, status_raw BIGINT, counter BIGINT",
    "nights": "bundle_id TEXT, site TEXT, subject TEXT, session_id BIGINT, definition TEXT, start_s DOUBLE,"
              " recording_s DOUBLE, analysed_s DOUBLE, analysed_pct DOUBLE, t90_s DOUBLE, t90_pct DOUBLE,"
              " night_valid BOOLEAN, meets_t90_criterion BOOLEAN, decision TEXT, borderline BOOLEAN,"
              " needs_review BOOLEAN, nadir_spo2 DOUBLE, odi3_per_h DOUBLE, odi4_per_h DOUBLE, report_json TEXT",
    "spirometry": "bundle_id TEXT, site TEXT, subject TEXT, session_id BIGINT, n_manoeuvres BIGINT, valid BOOLEAN,"
                  " equation TEXT, fvc_l DOUBLE, fev1_l DOUBLE, predicted_fvc_l DOUBLE, lln_fvc_l DOUBLE, z_fvc DOUBLE,"
                  " fvc_pct_predicted DOUBLE, other_equation TEXT, other_fvc_pct_predicted DOUBLE, grade_fvc TEXT,"
                  " result_json TEXT",
    "criteria": "bundle_id TEXT, site TEXT, subject TEXT, criterion TEXT, state TEXT, reason TEXT, value_json TEXT",
    "decisions": "bundle_id TEXT, site TEXT, subject TEXT, export_utc TEXT, decision TEXT, evaluated_at TEXT,"
                 " age_at_screening_years BIGINT, summary_json TEXT",
}
_RESULT_KEYS = ("valid", "equation", "fvc_l", "fev1_l", "predicted_fvc_l", "lln_fvc_l", "z_fvc", "fvc_pct_predicted",
                "other_equation", "other_fvc_pct_predicted", "grade_fvc")
_NIGHT_KEYS = ("start_s", "recording_s", "analysed_s", "analysed_pct", "t90_s", "t90_pct", "night_valid",
               "meets_t90_criterion", "decision", "borderline", "needs_review", "nadir_spo2", "odi3_per_h", "odi4_per_h")


def _rows_of(b: bag.Bag, bundle_id: str) -> dict[str, list[dict[str, Any]] | Any]:
    import pandas as pd

    files = b.files
    subject = json.loads(files["data/subject.json"])
    site, pseudonym = subject["site"], subject["pseudonym"]
    key = {"bundle_id": bundle_id, "site": site, "subject": pseudonym}
    out: dict[str, Any] = {k: [] for k in TABLES}
    out["bundles"].append({"bundle_id": bundle_id, "bundle": b.name, "site": site, "subject": pseudonym,
                           "export_utc": subject["export_utc"], "software": subject["software"]})
    frames = []
    for s in subject["sessions"]:
        sid = s["id"]
        if s["kind"] == "night":
            df = pd.read_csv(io.BytesIO(files[f"data/samples_{sid}.csv"]), dtype={"device_time": "string", "flag_names": "string"},
                             keep_default_na=False, na_values={c: [""] for c in ("spo2_pct", "pulse_bpm", "pai_pct", "status_raw", "counter")})
            df["host_utc"] = pd.to_datetime(df["host_utc"], utc=True, format="ISO8601")
            df["valid"] = df["valid"].astype(bool)
            df["pulse_valid"] = df["pulse_valid"].astype(bool)
            for k, v in reversed(list({**key, "session_id": sid}.items())):
                df.insert(0, k, v)
            frames.append(df)
            night = json.loads(files[f"data/night_{sid}.json"])
            rep = night["report"]
            out["nights"].append({**key, "session_id": sid, "definition": rep["definitions"]["t90"],
                                  **{k: rep.get(k) for k in _NIGHT_KEYS}, "report_json": json.dumps(rep, sort_keys=True)})
        else:
            sp = json.loads(files[f"data/spirometry_{sid}.json"])
            res = sp.get("result") or {}
            out["spirometry"].append({**key, "session_id": sid, "n_manoeuvres": len(sp.get("manoeuvres") or []),
                                      **{k: res.get(k) for k in _RESULT_KEYS},
                                      "result_json": json.dumps(res, sort_keys=True, default=str) if res else None})
    out["samples"] = frames
    elig = json.loads(files["data/eligibility.json"])
    for c in elig.get("criteria") or []:
        out["criteria"].append({**key, "criterion": c.get("id"), "state": c.get("state"), "reason": c.get("reason"),
                                "value_json": json.dumps(c.get("value"), sort_keys=True, default=str)})
    out["decisions"].append({**key, "export_utc": subject["export_utc"], "decision": elig.get("decision"),
                             "evaluated_at": elig.get("evaluated_at"), "age_at_screening_years": subject.get("age_at_screening_years"),
                             "summary_json": json.dumps(elig.get("summary"), default=str)})
    return out


def merge_bundles(paths: list[Path], out: Path) -> dict[str, Any]:
    """Verify every bundle, then load them all in one transaction; returns rows added per table."""
    import duckdb
    import pandas as pd

    failed = [r for r in (verify_bundle(p) for p in paths) if not r.ok]
    if failed:
        first = failed[0]
        raise InvalidInput(
            f"refusing to merge: {len(failed)} bundle(s) fail verification, first {first.bundle}: "
            f"{first.problems[0][0]}: {first.problems[0][1]}; run collector verify on each and ask the site to re-export")
    con = duckdb.connect(str(out))
    added = {k: 0 for k in TABLES}
    skipped: list[str] = []
    for name, cols in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({cols})")
    # A DuckDB file, not the collector's SQLite database: collector.storage.db.transaction() does not apply.
    con.execute("BEGIN TRANSACTION")
    try:
        for p in paths:
            b = bag.read_bag(Path(p))
            bundle_id = bag.sha256(b.files[bag.TAGMANIFEST])
            if con.execute("SELECT 1 FROM bundles WHERE bundle_id = ?", [bundle_id]).fetchone():
                skipped.append(b.name)
                continue
            rows = _rows_of(b, bundle_id)
            for table in TABLES:
                if table == "samples":
                    frames = [f for f in rows["samples"] if len(f)]
                    df = pd.concat(frames, ignore_index=True) if frames else None
                else:
                    df = pd.DataFrame(rows[table]) if rows[table] else None
                if df is None:
                    continue
                con.register("incoming", df)
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
                con.unregister("incoming")
                added[table] += len(df)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    return {"out": str(out), "bundles": len(paths) - len(skipped), "already_merged": skipped, "rows_added": added}

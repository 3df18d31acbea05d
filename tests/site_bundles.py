"""Sites and bundles for the upload and warehouse tests: nights stored straight into a site's database.

Each night is a whole 8 h night at 1 Hz with host jitter, disconnect gaps and finger-out runs,
stored through the oximetry store and finalised (report and seals) like a recorded one; simulating
the BLE traffic would test the recorder, not the export.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from collector.config import load_config
from collector.export.bundle import export_subject
from collector.oximetry import store as oximetry_store
from collector.storage import repo
from collector.storage.db import open_db, transaction

T0 = 1_767_000_000.0


def store_night(conn: Any, subject: str, start: float, *, hours: float = 8.0, gaps: int = 150, seed: int = 0,
                desat: float = 0.0) -> int:
    """One night; ``desat`` is the share of samples with SpO2 in the 80s (T90 follows it)."""
    rng = np.random.default_rng(seed)
    n = int(hours * 3600)
    t = (start * 1000 + np.arange(n) * 1000 + rng.integers(-40, 40, n)).astype(np.int64)
    keep = np.ones(n, dtype=bool)
    spans = []
    gaps = min(gaps, (n - 400) // 60)  # short nights hold fewer gaps
    step = (n - 400) // max(1, gaps)
    for s in (60 + np.arange(gaps) * step)[:gaps]:
        k = int(rng.integers(3, 40))
        keep[s:s + k] = False
        spans.append((int(t[s - 1]) + 500, int(t[s + k]) - 500))
    t = t[keep]
    m = t.size
    spo2 = np.clip(np.rint(rng.normal(95, 1.5, m)), 70, 100)
    low = rng.random(m) < desat
    spo2[low] = rng.integers(82, 89, int(low.sum()))
    pulse = np.rint(rng.normal(64, 5, m))
    valid = np.ones(m, dtype=bool)
    for s in rng.choice(m - 100, 10, replace=False):
        valid[s:s + int(rng.integers(2, 30))] = False
    rows = [(0, int(t[i]), None, float(spo2[i]), float(pulse[i]), None, int(valid[i]), int(valid[i]), 0 if valid[i] else 4,
             None, None) for i in range(m)]
    with transaction(conn):
        sid = repo.add_recorded_session(conn, subject_id=subject, kind="night", origin="simulated", started_at=start,
                                        stopped_at=start + n, by="tester", settings={})
        oximetry_store.insert_samples(conn, [(sid, *r[1:]) for r in rows], at=start + n)
        for a, b in spans:
            repo.add_gap(conn, sid, start_ms=a, end_ms=b, cause="device_disconnected")
        oximetry_store.finalise(conn, sid, load_config(None), at=start + n, actor="tester", reason="night ended")
    return int(sid)


class Site:
    """A laptop: its own database (own site UUID) and site config."""

    def __init__(self, root: Path, name: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.db = root / "site.sqlite"
        self.config_path = root / "site.toml"
        self.config_path.write_text(f'[site]\nname = "{name}"\n')
        self.conn = open_db(self.db).conn
        self.uuid = repo.site_uuid(self.conn)

    def subject(self, subject: str, nights: int = 1, **night: Any) -> list[int]:
        with transaction(self.conn):
            if subject not in {s["id"] for s in repo.list_subjects(self.conn)}:
                repo.add_subject(self.conn, subject, by="tester", at=T0)
        base = len(repo.list_sessions(self.conn, subject))
        return [store_night(self.conn, subject, T0 + (base + k) * 86400, seed=zlib.crc32(f"{subject}/{base + k}".encode()), **night)
                for k in range(nights)]

    def export(self, subject: str, out: Path, *, at: float) -> Path:
        """A bundle zip exported at ``at`` (the export time names the bundle)."""
        cfg = load_config(self.config_path)
        return export_subject(self.conn, subject, out, config=cfg, by="tester", now=at, as_zip=True).path

    def close(self) -> None:
        self.conn.close()

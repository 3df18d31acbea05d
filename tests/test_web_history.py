"""One subject's history through the real API: two whole nights recorded by the daemon (one with
link drops), every night with its T90, validity, review state and its gaps in the site's local
time with durations; a spirometry session beside them; open spirometry sessions in the page's
live picture; an unknown subject is a 404 with one line."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.features import build_daemon
from conftest import T0, fast_config, run_night, scenario
from simulators.scenario import Interval

TOKEN = "test-token-0123456789"
H = {"Authorization": f"Bearer {TOKEN}"}
DROPS = [Interval(1800 + 1500 * i, 120 + 30 * i) for i in range(6)]  # six link drops in a 4 h night


@pytest.fixture(scope="module")
def nights_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("history") / "collector.sqlite"
    asyncio.run(run_night(db, [scenario(duration_s=4 * 3600, disconnects=DROPS),
                               scenario(address="SIM-TEST-02")], subjects=["SCR-0001", "SCR-0002"]))
    return db


def test_history_lists_every_night_with_t90_validity_review_and_local_gaps(nights_db: Path) -> None:
    daemon = build_daemon(nights_db, config=fast_config())
    try:
        with TestClient(create_app(daemon, TOKEN)) as client:
            r = client.get("/api/v1/subjects/SCR-0001/history", headers=H)
            assert r.status_code == 200, r.text
            h = r.json()
            assert h["subject_id"] == "SCR-0001" and h["spirometry"] == []
            (night,) = h["nights"]
            assert night["state"] == "stopped" and night["t90_pct"] is not None and night["night_valid"] is not None
            assert night["review_state"] in ("not_needed", "needs_review", "resolved", "reopened")
            assert night["started_local"].endswith("+08:00") and night["duration_s"] >= 4 * 3600 - 5
            gaps = night["gaps"]
            assert gaps["count"] >= len(DROPS), gaps
            # Each drop as people read it: a local start time with the zone and a duration, never epoch ms.
            starts = [g["start_local"] for g in gaps["listed"]]
            assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+08:00", s) for s in starts), starts
            assert not re.search(r"\d{12,}", r.text.replace(str(int(T0)), "")), "an epoch number reached the history"
            longest = max(g["duration_s"] for g in gaps["listed"])
            assert 240 <= longest <= 400, gaps  # the 270 s drop (plus the reconnect)
            assert gaps["total_s"] == pytest.approx(sum(g["duration_s"] for g in gaps["listed"]), abs=1)

            other = client.get("/api/v1/subjects/SCR-0002/history", headers=H).json()
            assert [n["id"] for n in other["nights"]] != [night["id"]]

            missing = client.get("/api/v1/subjects/SCR-9999/history", headers=H)
            assert missing.status_code == 404 and "SCR-9999" in missing.json()["error"]

            pic = client.get("/api/v1/web/status", headers=H).json()
            assert pic["spirometry"] == []  # none open
    finally:
        daemon.writer.close()

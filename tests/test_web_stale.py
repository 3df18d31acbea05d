"""The page never shows stale data as live: the daemon killed under an open page, in real headless Chromium.

Within 5 s of the kill every bed card is greyed out with "NO DATA FROM COLLECTOR since
hh:mm <zone>", a banner says so and the alert sound runs; when the daemon is back the page
takes its picture from the API again.  Also: the three looks of alerts, and a night note
typed on the card.  Screenshots go to tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from test_web_browser import CHROMIUM, CHROMIUM_ARGS, ENGLISH, _screenshot

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
    pytest.mark.timeout(300),
]
playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright missing: pip install playwright (no browser download needed)")

PASSWORD = "night-shift-42"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_killed_daemon_greys_every_card_within_5_s_and_the_page_resyncs(tmp_path: Path) -> None:
    from collector.web.demo import collector_cmd, launch

    expect = playwright_sync.expect
    ward = launch(tmp_path / "ward", speed=30.0, operators={"alice": PASSWORD}, port=_free_port(), extra_config=ENGLISH)
    try:
        h = {"Authorization": f"Bearer {ward.token}"}
        for subject, device in (("SCR-0201", "SIM-WARD-01"), ("SCR-0202", "SIM-WARD-02")):
            httpx.post(ward.base_url + "/api/v1/subjects", json={"id": subject}, headers=h).raise_for_status()
            httpx.post(ward.base_url + "/api/v1/sessions", json={"subject_id": subject, "oximeter": device},
                       headers=h, timeout=60).raise_for_status()
        with playwright_sync.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(ward.base_url + "/")
            page.fill("#login-name", "alice")
            page.fill("#login-password", PASSWORD)
            page.click("#login-submit")
            expect(page.locator("#stream-state")).to_have_text("live", timeout=15_000)
            beds = page.locator(".bed")
            expect(beds).to_have_count(2, timeout=15_000)
            for i in range(2):
                expect(beds.nth(i).locator(".spo2 .value")).to_have_text(re.compile(r"^\d+$"), timeout=20_000)
            # The clock and alert times are the site's local time with the zone, not UTC.
            expect(page.locator("#clock")).to_have_text(re.compile(r"\+08:00$"))

            # A night note typed on the card: stored, audited, listed on the card with its local time.
            first = beds.nth(0)
            first.locator(".note-text").fill("probe re-taped")
            first.locator(".note-add").click()
            expect(first.locator(".notes li")).to_contain_text("alice: probe re-taped", timeout=10_000)
            expect(first.locator(".notes li")).to_contain_text("+08:00")
            _screenshot(page, "stale_before_kill.png")

            # A hung daemon (SIGSTOP): the connection stays open but the heartbeats stop.
            stopped_at = time.monotonic()
            os.kill(ward.proc.pid, signal.SIGSTOP)
            try:
                expect(page.locator(".bed.nodata")).to_have_count(2, timeout=6_000)
                hung_after_s = time.monotonic() - stopped_at
            finally:
                os.kill(ward.proc.pid, signal.SIGCONT)
            assert hung_after_s <= 6.5, hung_after_s  # two heartbeats (4 s) missed, checked twice a second
            _screenshot(page, "stale_hung_daemon.png")
            expect(page.locator("#nodata-banner")).to_be_hidden(timeout=15_000)  # it answers again: live again
            expect(beds.nth(1).locator(".link")).to_have_text("connected", timeout=10_000)
            print(f"every card greyed {hung_after_s:.2f} s after SIGSTOP")

            # Kill -9 the daemon under the live page.
            killed_at = time.monotonic()
            ward.kill()
            expect(page.locator(".bed.nodata")).to_have_count(2, timeout=5_000)
            for i in range(2):
                expect(beds.nth(i).locator(".link")).to_have_text("no data")
            banner = page.locator("#nodata-banner")
            expect(banner).to_be_visible(timeout=5_000)
            expect(banner).to_contain_text(re.compile(r"NO DATA FROM COLLECTOR since \d\d:\d\d \+08:00"))
            for i in range(2):
                expect(beds.nth(i).locator(".nodata-text")).to_contain_text("NO DATA FROM COLLECTOR since")
                expect(beds.nth(i).locator(".spo2 .value")).to_have_text("–")
            expect(page.locator("body")).to_have_attribute("data-beeping", "on", timeout=5_000)
            greyed_after_s = time.monotonic() - killed_at
            assert greyed_after_s <= 5.0, greyed_after_s
            _screenshot(page, "stale_no_data.png")
            print(f"every card greyed {greyed_after_s:.2f} s after kill -9")

            # Back: the same daemon resumes the nights; the page clears the banner and takes the picture again.
            ward.restart()
            expect(page.locator("#nodata-banner")).to_be_hidden(timeout=30_000)
            expect(page.locator(".bed.nodata")).to_have_count(0)
            expect(beds).to_have_count(2, timeout=15_000)
            expect(beds.nth(0).locator(".spo2 .value")).to_have_text(re.compile(r"^\d+$"), timeout=30_000)
            expect(first.locator(".notes li")).to_contain_text("probe re-taped")
            _screenshot(page, "stale_reconnected.png")
            # `collector status` against the same daemon: local times with the offset, and the alerts line.
            st = subprocess.run(collector_cmd() + ["--db", str(ward.db_path), "status"], capture_output=True, text=True, timeout=60)
            assert st.returncode == 0, st.stderr
            assert "+08:00" in st.stdout and re.search(r"^(alerts: \d+ to acknowledge|警报：\d+ 条待确认)", st.stdout, flags=re.M), st.stdout
            assert not errors, errors
            browser.close()
        conn = sqlite3.connect(str(ward.db_path))
        try:
            assert conn.execute("SELECT actor FROM audit WHERE action = 'note_added'").fetchall() == [("alice",)]
        finally:
            conn.close()
    finally:
        ward.stop()

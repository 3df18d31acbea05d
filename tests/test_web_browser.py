"""End to end in real headless Chromium: the page against the daemon recording simulated beds.

Needs Debian's chromium (/usr/bin/chromium) and the Playwright Python package (which drives
the system browser; it never downloads one).  Skipped with a reason when either is missing.
The screenshot of the main screen is saved to tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = os.environ.get("COLLECTOR_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
    pytest.mark.timeout(240),
]
playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright missing: pip install playwright (no browser download needed)")

PASSWORD = "night-shift-42"
# The site reads English in these tests (the default site language is zh-CN; tests/test_i18n.py covers Chinese).
ENGLISH = '[site]\nlanguage = "en"\n'


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory):
    from collector.web.demo import launch

    daemon = launch(tmp_path_factory.mktemp("ward"), speed=60.0, operators={"alice": PASSWORD}, extra_config=ENGLISH)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _audit(db_path: Path, action: str) -> list[tuple]:
    conn = sqlite3.connect(str(db_path))
    try:
        return conn.execute("SELECT actor, subject_id, session_id, new_value FROM audit WHERE action = ? ORDER BY id", (action,)).fetchall()
    finally:
        conn.close()


def _screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n", encoding="utf-8")
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def test_technician_night_in_the_browser(ward, browser) -> None:
    expect = playwright_sync.expect
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    page.on("response", lambda r: console_errors.append(f"{r.status} {r.url}") if r.status >= 400 and r.status != 401 else None)
    try:
        page.goto(ward.base_url + "/")

        # Not logged in: the login form, and a wrong password is refused with a message.
        expect(page.locator("#login-view")).to_be_visible()
        page.fill("#login-name", "alice")
        page.fill("#login-password", "wrong-password")
        page.press("#login-password", "Enter")
        expect(page.locator("#login-error")).to_contain_text("wrong operator name or password")
        page.fill("#login-password", PASSWORD)
        page.click("#login-submit")
        expect(page.locator("#app-view")).to_be_visible()
        expect(page.locator("#operator")).to_have_text("alice")
        expect(page.locator("#stream-state")).to_have_text("live", timeout=10_000)

        # Add a subject, scan, start a night on the first simulated oximeter.
        page.keyboard.press("s")
        page.fill("#subject-id", "SCR-0101")
        page.press("#subject-id", "Enter")
        expect(page.locator("#subject-result")).to_have_text("Subject SCR-0101 added.")
        page.click("#scan-button")
        expect(page.locator("#start-device option[value='SIM-WARD-01']")).to_have_count(1, timeout=15_000)
        page.select_option("#start-subject", "SCR-0101")
        page.select_option("#start-device", "SIM-WARD-01")
        page.click("#start-submit")
        expect(page.locator("#start-result")).to_contain_text("recording for SCR-0101", timeout=30_000)
        bed = page.locator(".bed", has=page.locator(".subject", has_text="SCR-0101"))
        expect(bed).to_have_count(1, timeout=10_000)
        session_id = int(bed.get_attribute("data-session"))

        # A second bed, started through the same API by the CLI's token, to fill the ward.
        h = {"Authorization": f"Bearer {ward.token}"}
        httpx.post(ward.base_url + "/api/v1/subjects", json={"id": "SCR-0102"}, headers=h).raise_for_status()
        httpx.post(ward.base_url + "/api/v1/sessions", json={"subject_id": "SCR-0102", "oximeter": "SIM-WARD-02"},
                   headers=h, timeout=60).raise_for_status()

        # The live SpO2 changes without a reload.
        spo2 = bed.locator(".spo2 .value")
        expect(spo2).to_have_text(re.compile(r"^\d+$"), timeout=15_000)
        seen = {spo2.text_content()}
        deadline = time.monotonic() + 30
        while len(seen) < 3 and time.monotonic() < deadline:
            page.wait_for_timeout(500)
            seen.add(spo2.text_content())
        assert len({v for v in seen if v.isdigit()}) >= 2, f"SpO2 did not change: {seen}"
        expect(bed.locator(".chart-30 path.line-mean")).to_have_count(1, timeout=15_000)

        # The simulated oximeter goes out of range: an alert appears, beeps, and is acknowledged.
        alert = page.locator(".alert.pending[data-kind='device_disconnected']", has_text="SCR-0101")
        expect(alert).to_be_visible(timeout=90_000)
        expect(page).to_have_title(re.compile(r"^\(\d+!\)"))
        page.wait_for_timeout(1500)  # let the trends catch up for the screenshot
        shot = _screenshot(page, "web_main_screen.png")
        assert shot.stat().st_size > 10_000
        alert.locator("button.ack").click()
        expect(page.locator(".alert.pending[data-kind='device_disconnected']", has_text="SCR-0101")).to_have_count(0, timeout=10_000)
        acks = _audit(ward.db_path, "alert_acknowledged")
        assert any(a[0] == "alice" and a[2] == session_id and "device_disconnected" in a[3] for a in acks), acks

        # Stop with confirmation: cancelling keeps recording; confirming shows the report and the decision.
        bed.locator("button.stop").click()
        expect(page.locator("#stop-dialog")).to_be_visible()
        page.click("#stop-cancel")
        expect(bed).to_have_count(1)
        bed.locator("button.stop").click()
        page.fill("#stop-reason", "end of the e2e night")
        page.click("#stop-confirm")
        expect(page.locator("#report .report-verdict")).to_contain_text(f"Night #{session_id}", timeout=30_000)
        expect(page.locator("#report .decision-box .decision-value, #report .decision-box .decision-error")).to_have_count(1, timeout=15_000)
        expect(bed).to_have_count(0, timeout=10_000)
        _screenshot(page, "web_after_stop.png")

        # Every action is attributed to the logged-in operator.
        assert ("alice", "SCR-0101") in [(a[0], a[1]) for a in _audit(ward.db_path, "subject_created")]
        assert ("alice", session_id) in [(a[0], a[2]) for a in _audit(ward.db_path, "session_started")]
        assert ("alice", session_id) in [(a[0], a[2]) for a in _audit(ward.db_path, "session_stopped")]
        assert not [e for e in console_errors if "status of 401" not in e], console_errors
    finally:
        context.close()


def test_keyboard_login_and_logout(ward, browser) -> None:
    """The login works from the keyboard alone, and logging out returns to the login form."""
    expect = playwright_sync.expect
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    try:
        page.goto(ward.base_url + "/")
        expect(page.locator("#login-name")).to_be_focused()
        page.keyboard.type("alice")
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        expect(page.locator("#app-view")).to_be_visible()
        page.reload()
        expect(page.locator("#operator")).to_have_text("alice")  # the cookie survives a reload
        page.click("#logout")
        expect(page.locator("#login-view")).to_be_visible()
        status = page.evaluate("fetch('/api/v1/web/status').then(r => r.status)")
        assert status == 401
    finally:
        context.close()

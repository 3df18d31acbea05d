"""The page for a whole ward, in real headless Chromium against the real daemon (simulated beds).

- Eight beds at 1366x768: the cards go compact by themselves and every card's SpO2, T90 and link
  state is inside the screen without scrolling; the compact toggle is remembered across reloads.
- A scan marks the oximeters already recording a bed as busy; they cannot be chosen and the free
  one is preselected.
- Chart labels are at least 11 px on screen, compact or not.
- An open spirometry session shows above the beds and is stopped there (same stop route, CSRF).
- A subject's history: the night with T90, validity, review state and its gaps as local times
  with durations (no epoch numbers); its spirometry session.
- Compact cards: T90 with its limit ("T90 0.00 % · ≤ 2 %") and a "provisional" badge, never cut; a Note button
  opens the note field in place (Enter saves through the notes route, Esc closes); in Chinese too, nothing
  on a card overflows.
Screenshots (tests/artifacts/, gitignored): ward_8_beds_compact.png, ward_8_beds_compact_alert.png, ward_compact_note.png,
ward_8_beds_compact_zh.png, ward_not_compact.png, ward_scan_busy.png, ward_spirometry_open.png, ward_history.png.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import threading
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
VIEW = {"width": 1366, "height": 768}
MIN_LABEL_PX = 11.0


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _login(page, base_url: str) -> None:
    page.goto(base_url + "/")
    page.fill("#login-name", "alice")
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    playwright_sync.expect(page.locator("#stream-state")).to_have_text("live", timeout=15_000)


def _start(base_url: str, token: str, subject: str, device: str) -> int:
    h = {"Authorization": f"Bearer {token}"}
    httpx.post(base_url + "/api/v1/subjects", json={"id": subject}, headers=h).raise_for_status()
    r = httpx.post(base_url + "/api/v1/sessions", json={"subject_id": subject, "oximeter": device}, headers=h, timeout=60)
    r.raise_for_status()
    return int(r.json()["id"])


def _label_sizes(page) -> list[float]:
    """On-screen size (px) of every visible chart label: the font size times the SVG's scale."""
    return page.evaluate("""() => [...document.querySelectorAll('svg.chart text')]
        .filter((t) => t.getBoundingClientRect().width > 0)
        .map((t) => parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().d)""")


def _inside(box: dict | None, view: dict) -> bool:
    return box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= view["width"] \
        and box["y"] + box["height"] <= view["height"]


# The parts of a card whose text must stay inside it (nothing cut, nothing spilling over the card's edge).
CARD_PARTS = ".bed-head, .subject, .session, .link, .vitals, .vital .label, .state-flag, .t90-text, .t90-value, " \
    ".t90-limit-text, .t90-prov, .meta dt, .meta dd, .bed-foot, .bed-foot button, .note-form, .note-result"


def _overflows(page) -> list:
    """Every visible key part of a card whose text is wider than its box or whose box leaves its card."""
    return page.evaluate("""(sel) => { const out = [];
        document.querySelectorAll('.bed').forEach((bed, i) => {
          const card = bed.getBoundingClientRect();
          if (bed.scrollWidth > bed.clientWidth) out.push([i, 'card', bed.scrollWidth, bed.clientWidth]);
          bed.querySelectorAll(sel).forEach((e) => {
            const r = e.getBoundingClientRect();
            if (r.width === 0) return;
            if (e.scrollWidth > e.clientWidth || r.left < card.left - 0.5 || r.right > card.right + 0.5)
              out.push([i, e.className, e.textContent, e.scrollWidth, e.clientWidth, r.right, card.right]);
          });
        });
        return out; }""", CARD_PARTS)


def _overflows_worst_case(page) -> list:
    """_overflows with every card in its widest state: a state flag (NO LINK / FINGER OUT, in the page's language)
    sharing the SpO2 row, and the widest T90 ("T90 100.00 %") beside its limit and badge. The next update from
    the stream writes the real texts back."""
    return page.evaluate("""(sel) => {
        const words = [t("NO LINK"), t("FINGER OUT")];
        const out = [];
        document.querySelectorAll('.bed .t90-value').forEach((v) => { v.textContent = "T90 100.00 %"; });
        for (const w of words) {
          document.querySelectorAll('.bed .state-flag').forEach((f) => { f.hidden = false; f.textContent = w; });
          document.querySelectorAll('.bed').forEach((bed, i) => {
            const card = bed.getBoundingClientRect();
            bed.querySelectorAll(sel).forEach((e) => {
              const r = e.getBoundingClientRect();
              if (r.width === 0) return;
              if (e.scrollWidth > e.clientWidth || r.left < card.left - 0.5 || r.right > card.right + 0.5)
                out.push([w, i, e.className, e.textContent, e.scrollWidth, e.clientWidth]);
            });
          });
        }
        return out; }""", CARD_PARTS)


def _notes(ward, sid: int) -> list[tuple[str, str]]:
    r = httpx.get(ward.base_url + f"/api/v1/sessions/{sid}/notes", headers={"Authorization": f"Bearer {ward.token}"})
    r.raise_for_status()
    return [(n["text"], n["noted_by"]) for n in r.json()]


def test_eight_beds_fit_one_screen_busy_oximeters_and_legible_charts(tmp_path: Path, browser) -> None:
    from collector.web.demo import launch

    expect = playwright_sync.expect
    ward = launch(tmp_path / "ward", speed=10.0, operators={"alice": PASSWORD}, extra_config=ENGLISH, beds=8)
    context = browser.new_context(viewport=VIEW)
    try:
        sessions = [_start(ward.base_url, ward.token, f"SCR-05{i:02d}", f"SIM-WARD-{i:02d}") for i in range(1, 8)]
        httpx.post(ward.base_url + "/api/v1/subjects", json={"id": "SCR-0508"},
                   headers={"Authorization": f"Bearer {ward.token}"}).raise_for_status()
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        _login(page, ward.base_url)
        expect(page.locator(".bed")).to_have_count(7, timeout=15_000)

        # The scan: seven oximeters record a bed; each is marked busy, cannot be chosen, and the free one is preselected.
        page.click("#scan-button")
        expect(page.locator("#start-device option")).to_have_count(8, timeout=20_000)
        busy = page.locator("#start-device option[data-busy]")
        expect(busy).to_have_count(7)
        for i, sid in enumerate(sessions, start=1):
            opt = page.locator(f"#start-device option[value='SIM-WARD-{i:02d}']")
            expect(opt).to_be_disabled()
            expect(opt).to_contain_text(f"BUSY: night #{sid} (SCR-05{i:02d})")
        expect(page.locator("#start-device")).to_have_value("SIM-WARD-08")
        expect(page.locator("#start-result")).to_contain_text("7 already recording a bed")
        page.evaluate("document.querySelector('#start-device').size = 9")  # the list open, for the screenshot
        _screenshot(page, "ward_scan_busy.png")
        page.evaluate("document.querySelector('#start-device').size = 0")
        page.select_option("#start-subject", "SCR-0508")
        page.click("#start-submit")
        expect(page.locator("#start-result")).to_contain_text("recording for SCR-0508", timeout=30_000)

        # Eight beds: compact by itself; every card's SpO2, T90 and state on the screen without scrolling.
        beds = page.locator(".bed")
        expect(beds).to_have_count(8, timeout=15_000)
        expect(page.locator("body")).to_have_class(re.compile(r"\bcompact\b"))
        expect(page.locator("#compact-toggle")).to_have_attribute("data-mode", "auto")
        for i in range(8):
            expect(beds.nth(i).locator(".spo2 .value")).to_have_text(re.compile(r"^\d+$"), timeout=30_000)
            expect(beds.nth(i).locator(".t90-value")).to_have_text(re.compile(r"^T90 \d+\.\d\d %$"), timeout=30_000)
            expect(beds.nth(i).locator(".chart-all path.line-mean")).to_have_count(1, timeout=30_000)
        page.wait_for_timeout(1000)
        assert page.evaluate("document.querySelector('#beds').scrollHeight <= document.querySelector('#beds').clientHeight + 1"), \
            "the bed list scrolls in compact mode"
        for i in range(8):
            bed = beds.nth(i)
            for what in (".spo2 .value", ".t90-value", ".link", ".stop"):
                box = bed.locator(what).bounding_box()
                assert _inside(box, VIEW), (i, what, box)
            assert _inside(bed.bounding_box(), VIEW), (i, bed.bounding_box())
        sizes = _label_sizes(page)
        assert sizes and min(sizes) >= MIN_LABEL_PX, sizes
        _screenshot(page, "ward_8_beds_compact.png")

        # An alert row above the cards (bed 2's finger-out spell at 15 min virtual) still leaves every card on the screen.
        expect(page.locator(".alert[data-kind='finger_out']")).to_have_count(1, timeout=150_000)
        for i in range(8):
            assert _inside(beds.nth(i).bounding_box(), VIEW), (i, beds.nth(i).bounding_box())
        _screenshot(page, "ward_8_beds_compact_alert.png")

        # The compact T90 line keeps its limit (from the data) next to the value; "provisional" is a badge whose
        # tooltip is the full text; nothing on the card is cut or spills over.
        status = httpx.get(ward.base_url + "/api/v1/web/status", headers={"Authorization": f"Bearer {ward.token}"}).json()
        limit = f"{float(status['beds'][0]['t90_threshold_pct']):g}"
        for i in range(8):
            bed = beds.nth(i)
            expect(bed.locator(".t90-limit-text")).to_have_text(f"· ≤ {limit} %")
            expect(bed.locator(".t90-limit-text")).to_be_visible()
            expect(bed.locator(".t90-prov")).to_have_text("provisional")
            expect(bed.locator(".t90-prov")).to_have_attribute("title", f"provisional · criterion ≤ {limit} %")
            expect(bed.locator(".t90-note")).to_be_hidden()
        assert not _overflows(page), _overflows(page)
        assert not _overflows_worst_case(page), _overflows_worst_case(page)

        # A note from a compact card: the Note button opens the field in place, Enter saves it, Esc closes.
        card = beds.nth(0)
        sid0 = int(card.get_attribute("data-session"))
        before = _notes(ward, sid0)
        expect(card.locator(".note-form")).to_be_hidden()
        card.locator(".note-open").click()
        expect(card.locator(".note-text")).to_be_focused()
        page.keyboard.type("probe re-taped")
        for i in range(8):
            assert _inside(beds.nth(i).bounding_box(), VIEW), (i, beds.nth(i).bounding_box())
        assert not _overflows(page), _overflows(page)
        _screenshot(page, "ward_compact_note.png")
        page.keyboard.press("Enter")
        expect(card.locator(".note-form")).to_be_hidden(timeout=10_000)
        expect(card.locator(".note-open")).to_have_text("Noted.")
        assert _notes(ward, sid0) == before + [("probe re-taped", "alice")]
        card.locator(".note-open").click()
        expect(card.locator(".note-text")).to_be_focused()
        page.keyboard.type("not this one")
        page.keyboard.press("Escape")
        expect(card.locator(".note-form")).to_be_hidden()
        expect(card.locator(".note-open")).to_be_focused()
        assert _notes(ward, sid0) == before + [("probe re-taped", "alice")]  # Esc saves nothing
        expect(page.locator("#stop-dialog")).to_be_hidden()

        # The same eight compact cards in Chinese: every card on the screen, nothing cut or spilling over.
        page.select_option("#language", "zh-CN")
        expect(beds.nth(0).locator(".note-open")).to_have_text("备注", timeout=15_000)
        expect(beds.nth(0).locator(".t90-prov")).to_have_text("临时值")
        expect(beds.nth(0).locator(".t90-prov")).to_have_attribute("title", f"临时值 · 标准 ≤ {limit} %")
        page.wait_for_timeout(500)
        for i in range(8):
            bed = beds.nth(i)
            assert _inside(bed.bounding_box(), VIEW), (i, bed.bounding_box())
            for what in (".spo2 .value", ".t90-value", ".t90-limit-text", ".link", ".stop", ".note-open"):
                assert _inside(bed.locator(what).bounding_box(), VIEW), (i, what)
        assert not _overflows(page), _overflows(page)
        _screenshot(page, "ward_8_beds_compact_zh.png")
        assert not _overflows_worst_case(page), _overflows_worst_case(page)
        page.select_option("#language", "en")
        expect(beds.nth(0).locator(".note-open")).to_have_text("Note", timeout=15_000)

        # The toggle: off (full cards, labels still legible), remembered over a reload, then back to automatic.
        page.click("#compact-toggle")  # auto -> on
        page.click("#compact-toggle")  # on -> off
        expect(page.locator("#compact-toggle")).to_have_attribute("data-mode", "off")
        expect(page.locator("body")).not_to_have_class(re.compile(r"\bcompact\b"))
        page.reload()
        expect(page.locator("#stream-state")).to_have_text("live", timeout=15_000)
        expect(page.locator("#compact-toggle")).to_have_attribute("data-mode", "off")
        expect(page.locator(".bed")).to_have_count(8, timeout=15_000)
        expect(page.locator("body")).not_to_have_class(re.compile(r"\bcompact\b"))
        expect(beds.nth(0).locator(".chart-30 path.line-mean")).to_have_count(1, timeout=30_000)
        sizes = _label_sizes(page)
        assert sizes and min(sizes) >= MIN_LABEL_PX, sizes
        _screenshot(page, "ward_not_compact.png")
        page.click("#compact-toggle")  # off -> auto
        expect(page.locator("body")).to_have_class(re.compile(r"\bcompact\b"))
        assert page.evaluate("localStorage.getItem('collector.compact')") == "auto"
        assert not errors, errors
    finally:
        context.close()
        ward.stop()
    conn = sqlite3.connect(str(ward.db_path))
    try:
        stored = conn.execute("SELECT text, noted_by FROM night_notes WHERE session_id = ?", (sid0,)).fetchall()
    finally:
        conn.close()
    assert stored == before + [("probe re-taped", "alice")], stored  # in the database, and only the note Enter saved


class Listener:
    """A TCP port that accepts and holds connections: the spirometer's serial-over-IP adapter, silent."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        try:
            while True:
                conn, _ = self.sock.accept()
                self.held.append(conn)
        except OSError:
            return

    def close(self) -> None:
        for c in self.held:
            c.close()
        self.sock.close()


def test_spirometry_open_and_stopped_on_the_page_and_the_subject_history(tmp_path: Path, browser) -> None:
    from collector.web.demo import launch

    expect = playwright_sync.expect
    ward = launch(tmp_path / "ward", speed=120.0, operators={"alice": PASSWORD}, extra_config=ENGLISH)
    spirometer = Listener()
    context = browser.new_context(viewport=VIEW)
    try:
        night = _start(ward.base_url, ward.token, "SCR-0601", "SIM-WARD-01")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        _login(page, ward.base_url)
        expect(page.locator(".bed")).to_have_count(1, timeout=15_000)

        # A spirometry session started from the page's form shows above the beds, with its stop button.
        page.click("#panel-spiro summary")
        page.select_option("#spiro-subject", "SCR-0601")
        page.fill("#spiro-port", f"socket://127.0.0.1:{spirometer.port}")
        page.select_option("#spiro-protocol", "hl7")
        page.click("#spiro-form button[type=submit]")
        expect(page.locator("#spiro-result")).to_contain_text("open for SCR-0601", timeout=15_000)
        item = page.locator("#spiro-open .spiro-item")
        expect(item).to_have_count(1, timeout=10_000)
        spiro_id = int(item.get_attribute("data-session"))
        expect(item).to_contain_text(f"Spirometry · SCR-0601 · session #{spiro_id}")
        expect(item.locator(".spiro-link")).to_have_text("connected", timeout=15_000)
        expect(item).to_contain_text("+08:00")
        _screenshot(page, "ward_spirometry_open.png")

        # Stopped there: confirmation first, then the same stop route as the CLI, attributed to alice.
        item.locator(".spiro-stop").click()
        expect(page.locator("#stop-text")).to_contain_text(f"Stop spirometry session #{spiro_id} of subject SCR-0601")
        page.fill("#stop-reason", "patient tired")
        page.click("#stop-confirm")
        expect(page.locator("#spiro-open .spiro-item")).to_have_count(0, timeout=15_000)
        expect(page.locator("#spiro-open")).to_be_hidden()
        expect(page.locator("#spiro-result")).to_contain_text(f"Spirometry session #{spiro_id} of SCR-0601 stopped.")
        expect(page.locator(".bed")).to_have_count(1)  # the night goes on

        # The night drops its link at 30 min (virtual) for 5 min: wait for the gap to close, then stop the night.
        h = {"Authorization": f"Bearer {ward.token}"}
        deadline = time.monotonic() + 120
        while True:
            hist = httpx.get(ward.base_url + "/api/v1/subjects/SCR-0601/history", headers=h).json()
            gaps = hist["nights"][0]["gaps"]
            if gaps["count"] and not any(g["open"] for g in gaps["listed"]):
                break
            assert time.monotonic() < deadline, hist
            time.sleep(0.5)
        httpx.post(ward.base_url + f"/api/v1/sessions/{night}/stop", json={"reason": "end"}, headers=h, timeout=60).raise_for_status()
        expect(page.locator(".bed")).to_have_count(0, timeout=15_000)

        # The history: key H, choose the subject, show.
        page.keyboard.press("h")
        page.select_option("#history-subject", "SCR-0601")
        page.click("#history-button")
        dialog = page.locator("#history-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#history-title")).to_have_text("History of SCR-0601")
        row = dialog.locator(f"tr.history-night[data-session='{night}']")
        expect(row).to_have_count(1)
        expect(row.locator("td.t90")).to_have_text(re.compile(r"^\d+\.\d\d %$"))
        expect(row.locator("td.review")).to_have_text(re.compile(r"^(not needed|needs review|resolved|re-opened)"))
        expect(row).to_contain_text("+08:00")
        gap = dialog.locator("li.gap").first
        expect(gap).to_have_text(re.compile(r"^\d\d:\d\d \+08:00 for (\d+ min( \d+ s)?|\d+ s) · "))
        text = dialog.inner_text()
        assert not re.search(r"\d{10,}", text), text  # no epoch seconds or milliseconds anywhere
        spiro_row = dialog.locator(f"tr.history-spiro[data-session='{spiro_id}']")
        expect(spiro_row).to_contain_text("stopped")
        _screenshot(page, "ward_history.png")
        page.click("#history-close")
        expect(dialog).to_be_hidden()
        assert not errors, errors
    finally:
        context.close()
        spirometer.close()
        ward.stop()
    conn = sqlite3.connect(str(ward.db_path))
    try:
        stops = conn.execute("SELECT actor, session_id, reason FROM audit WHERE action = 'session_stopped'").fetchall()
    finally:
        conn.close()
    assert ("alice", spiro_id, "patient tired") in stops, stops

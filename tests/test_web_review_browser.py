"""The investigator's review on the page, in real headless Chromium against the real daemon."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from conftest import TEST_PASSWORD, invoke, operator_token
from test_web_browser import CHROMIUM, CHROMIUM_ARGS, ENGLISH

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
    pytest.mark.timeout(240),
]
playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright missing: pip install playwright (no browser download needed)")


def test_an_investigator_resolves_a_review_on_the_page_with_the_password_again(tmp_path: Path) -> None:
    from collector.web.demo import launch

    ward = launch(tmp_path / "ward", speed=60.0, operators={}, extra_config=ENGLISH)
    try:
        db = ward.db_path
        token = operator_token(db, "dr.web", "investigator")
        assert invoke(db, "user", "full-name", "dr.web", "Wang Fang", operator="adm").exit_code == 0
        h = {"Authorization": f"Bearer {token}"}
        httpx.post(ward.base_url + "/api/v1/subjects", json={"id": "SCR-0201"}, headers=h).raise_for_status()
        for fact, value in (("height_cm", "170"), ("weight_kg", "53.45"), ("nutrition_good", "yes")):
            httpx.post(ward.base_url + "/api/v1/subjects/SCR-0201/facts", json={"fact": fact, "value": value},
                       headers=h).raise_for_status()

        expect = playwright_sync.expect
        with playwright_sync.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(ward.base_url + "/")
            page.fill("#login-name", "dr.web")
            page.fill("#login-password", TEST_PASSWORD)
            page.click("#login-submit")
            expect(page.locator("#operator")).to_have_text("dr.web")
            page.click("#panel-review summary")
            page.select_option("#review-subject", "SCR-0201")
            page.click("#review-button")
            item = page.locator(".review-item[data-criterion='bmi']")
            expect(item.locator(".review-head")).to_have_text("BMI: open")
            expect(item.locator(".evidence")).to_contain_text("weight_kg: 53.45")

            item.locator(".resolve-decision").select_option("not_met")
            item.locator(".resolve-reason").fill("BMI 18.495 is below 18.5")
            item.locator(".resolve-password").fill("not the password")
            item.locator("button[type=submit]").click()
            expect(item.locator(".resolve-result")).to_contain_text("wrong password")

            item.locator(".resolve-password").fill(TEST_PASSWORD)
            item.locator("button[type=submit]").click()
            expect(page.locator(".review-item[data-criterion='bmi'] .review-head")).to_have_text("BMI: resolved (not met)")
            expect(page.locator(".review-item[data-criterion='bmi'] .review-by")).to_contain_text("by dr.web")
            expect(page.locator("#signatures .signature.ok")).to_contain_text("Signed electronically by Wang Fang (investigator")
            browser.close()
        assert not errors, errors
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT resolved_by, decision FROM review_resolutions").fetchall() == [("dr.web", "not_met")]
        assert conn.execute("SELECT count(*) FROM audit WHERE action = 'signature_refused'").fetchone()[0] == 1
    finally:
        ward.stop()

"""Chinese and English: every marked string has a translation, report.pdf prints Chinese with an
embedded CJK font, and each operator reads in the language they chose."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_file

from collector.i18n import LANGUAGES, catalogue, check_language, fonts, translator
from conftest import invoke, operator_env

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"\{[a-z_0-9]*\}")


def python_msgids() -> dict[str, str]:
    """msgid -> where, for every ``_("...")`` and ``N_("...")`` in the collector's Python code."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "collector").rglob("*.py")):
        for lineno, msg, _comments, _ctx in extract_from_file("python", str(path), keywords={"_": None, "N_": None}):
            if isinstance(msg, str) and msg:
                found.setdefault(msg, f"{path.relative_to(ROOT)}:{lineno}")
    return found


def test_every_marked_string_has_a_chinese_and_an_english_entry():
    ids = python_msgids()
    assert len(ids) > 50
    zh, en = catalogue("zh-CN"), catalogue("en")
    missing = {m: where for m, where in ids.items() if not zh.get(m)}
    assert not missing, f"untranslated (add them to collector/locale/zh_CN/LC_MESSAGES/collector.po): {missing}"
    assert not [m for m in ids if m not in en], "every msgid is in the English catalogue too"


def test_translations_keep_their_placeholders_and_are_chinese():
    zh = catalogue("zh-CN")
    for msgid, text in zh.items():
        assert sorted(PLACEHOLDER.findall(msgid)) == sorted(PLACEHOLDER.findall(text)), msgid
    chinese = [t for t in zh.values() if re.search(r"[\u4e00-\u9fff]", t)]
    assert len(chinese) > 0.8 * len(zh)  # units and abbreviations (T90 %, ODI4/h) may stay as they are


def test_languages_and_fallbacks():
    assert set(LANGUAGES) == {"zh-CN", "en"}
    assert check_language("zh_cn") == "zh-CN"
    with pytest.raises(ValueError):
        check_language("fr")
    assert translator("zh-CN")("Pulse (bpm)") == "脉率（次/分）"
    assert translator("en")("Pulse (bpm)") == "Pulse (bpm)"
    assert translator("zh-CN")("a string nobody marked") == "a string nobody marked"


def _pdf(lang: str) -> bytes:
    from collector.export.pdf import summary_pdf

    crit = [{"id": "fvc", "state": "needs_review", "reason": "FVC 49.96 % < 50 %"},
            {"id": "nocturnal_spo2", "state": "met", "reason": "T90 1.20 % <= 2 %"}]
    return summary_pdf(pseudonym="SCR-0001", site="Test Hospital 1", site_uuid="00000000-0000-4000-8000-000000000000",
                       timezone="Asia/Shanghai", export_utc="2025-07-01T10:00:00.000Z", software="collector 0",
                       age_years=50, eligibility={"decision": "incomplete", "summary": [], "criteria": crit},
                       nights=[], spirometry=[], payload_hash="ab" * 32, lang=lang)


def test_report_pdf_in_chinese_embeds_a_cjk_font_and_its_text_reads_back():
    import pypdf

    family = fonts.cjk_family()
    assert family is not None, "no CJK font installed: apt-get install fonts-droid-fallback (.ci/run does)"
    reader = pypdf.PdfReader(io.BytesIO(_pdf("zh-CN")))
    text = "".join(p.extract_text() for p in reader.pages)
    squashed = "".join(text.split())
    for phrase in ("筛选汇总", "资料不完整", "需复核", "夜间血氧饱和度", "第1页，共1页"):
        assert phrase in squashed, phrase
    embedded = set()
    for page in reader.pages:
        for font in page["/Resources"]["/Font"].values():
            embedded.add(str(font.get_object()["/BaseFont"]))
    assert any(family.replace(" ", "") in name.replace(" ", "") for name in embedded), embedded
    assert any("DejaVu" in name for name in embedded)  # Latin text keeps its own font


def test_report_pdf_in_english_has_no_chinese():
    import pypdf

    reader = pypdf.PdfReader(io.BytesIO(_pdf("en")))
    text = "".join(p.extract_text() for p in reader.pages)
    assert "screening summary" in text and not re.search(r"[\u4e00-\u9fff]", text)


def test_each_operator_reads_in_the_language_they_chose(db_path, tmp_path):
    import json

    import pypdf

    assert invoke(db_path, "subject", "add", "SCR-0042").exit_code == 0
    res = invoke(db_path, "user", "language", "en")
    assert res.exit_code == 0 and "English" in res.output, res.output
    out = tmp_path / "out"
    res = invoke(db_path, "export", "SCR-0042", "--out", str(out), "--json",
                 config=_named_site(tmp_path))
    assert res.exit_code == 0, res.output
    bundle = Path(json.loads(res.output)[0]["path"])
    text = "".join(p.extract_text() for p in pypdf.PdfReader(bundle / "data" / "report.pdf").pages)
    assert "screening summary" in text
    res = invoke(db_path, "user", "language", "site")
    assert res.exit_code == 0 and "简体中文" in res.output, res.output
    res = invoke(db_path, "export", "SCR-0042", "--out", str(tmp_path / "out2"), "--json", config=_named_site(tmp_path))
    bundle = Path(json.loads(res.output)[0]["path"])
    text = "".join("".join(p.extract_text().split()) for p in pypdf.PdfReader(bundle / "data" / "report.pdf").pages)
    assert "筛选汇总" in text


def test_only_an_admin_sets_another_operators_language(db_path):
    from conftest import operator_token

    operator_token(db_path, "tina", role="technician")
    res = invoke(db_path, "user", "language", "en", "--user", "tester", operator="tina")
    assert res.exit_code == 10 and "only an admin" in res.output


def _named_site(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text('[site]\nname = "Test Hospital 1"\n', encoding="utf-8")
    return path


# -- the page ------------------------------------------------------------------------------------
STATIC = ROOT / "collector" / "web" / "static"
PAGE_ATTR = re.compile(r'data-i18n(?:-placeholder|-title)?="([^"]+)"')


def page_msgids() -> dict[str, str]:
    """msgid -> where, for every ``t("...")`` in the page's scripts and every data-i18n* in index.html."""
    import html

    found: dict[str, str] = {}
    for path in sorted(STATIC.glob("*.js")):
        for lineno, msg, _comments, _ctx in extract_from_file("javascript", str(path), keywords={"t": None}):
            if isinstance(msg, str) and msg:
                found.setdefault(msg, f"{path.relative_to(ROOT)}:{lineno}")
    for path in sorted(STATIC.glob("*.html")):
        for msg in PAGE_ATTR.findall(path.read_text(encoding="utf-8")):
            found.setdefault(html.unescape(msg), str(path.relative_to(ROOT)))
    return found


def test_every_string_of_the_page_has_a_chinese_translation():
    ids = page_msgids()
    assert len(ids) > 100
    assert "Stop night…" in ids and "NO DATA FROM COLLECTOR since {time}" in ids
    zh, en = catalogue("zh-CN"), catalogue("en")
    missing = {m: where for m, where in ids.items() if not zh.get(m)}
    assert not missing, f"untranslated page strings (add them to collector/locale/zh_CN/LC_MESSAGES/collector.po): {missing}"
    assert not [m for m in ids if m not in en]


# Text a person does not read as language: numbers, symbols, key names in <kbd>, commands in <code>.
NOT_WORDS = re.compile(r"^[\s\d\-–—%·/:.,()+]*$|^T90 --$")


def bare_texts(source: str) -> list[str]:
    """Text nodes of index.html outside <script>/<style>, <kbd>, <code>, translate="no" (language names, protocol
    names) and any element carrying data-i18n."""
    from html.parser import HTMLParser

    void = {"meta", "link", "input", "br", "img", "hr", "source", "area", "base", "col", "embed", "wbr", "track"}

    class Walk(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.stack: list[tuple[str, bool]] = []
            self.bare: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag in void:
                return
            marked = (any(k == "data-i18n" or (k, v) == ("translate", "no") for k, v in attrs)
                      or tag in {"script", "style", "kbd", "code"})
            self.stack.append((tag, marked))

        def handle_endtag(self, tag: str) -> None:
            if tag in void:
                return
            while self.stack:
                if self.stack.pop()[0] == tag:
                    break

        def handle_data(self, data: str) -> None:
            text = data.strip()
            if not text or NOT_WORDS.match(text) or any(m for _, m in self.stack):
                return
            self.bare.append(text)

    walk = Walk()
    walk.feed(source)
    return walk.bare


def test_index_html_has_no_bare_text():
    assert bare_texts('<p>Beds <span data-i18n="x">x</span></p>') == ["Beds"]  # the check itself finds bare text
    assert bare_texts('<p data-i18n="Beds">Beds <kbd>N</kbd></p><span>--</span><span>%</span>') == []
    assert bare_texts((STATIC / "index.html").read_text(encoding="utf-8")) == []


def test_app_js_builds_no_sentences_outside_t():
    """Every string literal with letters that app.js writes as text goes through t(): a rough but useful guard."""
    source = (STATIC / "app.js").read_text(encoding="utf-8")
    assert "loadLanguage(" in source and '"/me/language"' in source
    for needle in ('setResult($("start-result"), "', 'textContent = "', 'textContent = `'):
        hits = [line.strip() for line in source.splitlines() if needle in line and 't("' not in line and not re.search(r'textContent = "[^A-Za-z"]*"', line)]
        assert not hits, hits


@pytest.mark.browser
@pytest.mark.timeout(240)
def test_the_page_switches_between_chinese_and_english_in_chromium(tmp_path):
    """Real daemon, real Chromium: the operator switches to 简体中文, the header and the bed card read
    Chinese (and stay so after a reload: the choice is stored), then back to English."""
    playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright missing: pip install playwright")
    import httpx

    from collector.web.demo import launch
    from test_web_browser import CHROMIUM, CHROMIUM_ARGS, ENGLISH, _screenshot

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    expect = playwright_sync.expect
    password = "night-shift-42"
    ward = launch(tmp_path / "ward", speed=60.0, operators={"alice": password}, extra_config=ENGLISH)
    try:
        h = {"Authorization": f"Bearer {ward.token}"}
        httpx.post(ward.base_url + "/api/v1/subjects", json={"id": "SCR-0201"}, headers=h).raise_for_status()
        httpx.post(ward.base_url + "/api/v1/sessions", json={"subject_id": "SCR-0201", "oximeter": "SIM-WARD-01"},
                   headers=h, timeout=60).raise_for_status()
        with playwright_sync.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(ward.base_url + "/")
            page.fill("#login-name", "alice")
            page.fill("#login-password", password)
            page.click("#login-submit")
            expect(page.locator("#app-view")).to_be_visible()
            bed = page.locator(".bed", has=page.locator(".subject", has_text="SCR-0201"))
            expect(bed).to_have_count(1, timeout=15_000)
            expect(page.locator(".topbar h1")).to_have_text("Beds")
            expect(page.locator("#language")).to_have_value("en")

            page.select_option("#language", "zh-CN")
            expect(page.locator(".topbar h1")).to_have_text("床位", timeout=10_000)
            expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
            expect(bed.locator(".spo2 .label")).to_have_text("血氧饱和度 SpO₂ %")
            expect(bed.locator(".pulse .label")).to_have_text("脉率 次/分")
            expect(bed.locator(".stop")).to_have_text("停止夜间监测…")
            expect(bed.locator(".session")).to_have_text("夜间监测 #1")
            expect(bed.locator(".link")).to_have_text(re.compile("已连接|连接中|搜索中|重新连接中"), timeout=15_000)
            expect(page.locator("#stream-state")).to_have_text("实时", timeout=10_000)
            expect(page.locator("#logout")).to_have_text("退出登录")
            expect(page.locator("#panel-start summary span")).to_have_text("开始夜间监测")
            expect(bed.locator(".note-text")).to_have_attribute("placeholder", "备注，例如：患者起床 / 探头重新固定")
            expect(page.locator("#start-subject option").first).to_have_text("— 请选择 —")
            _screenshot(page, "i18n-zh-CN.png")
            # an alert arrives as message id + parameters and reads in Chinese; a row from before ids as stored
            from collector.ward import messages

            shown = page.evaluate("(a) => alertText(a)", {"message_id": messages.NO_LINK, "message": "x",
                                                          "params": {"seconds": "45", "state_text": "reconnecting"}})
            assert shown == "与血氧仪的连接已中断 45 秒（当前：重新连接中）：请检查设备是否开机、在有效距离内且电量充足"
            assert page.evaluate("(a) => alertText(a)", {"message_id": None, "message": "old English text"}) == "old English text"
            # the decision table: each reason from its message tree, in Chinese
            from conftest import operator_token

            hi = {"Authorization": f"Bearer {operator_token(ward.db_path, 'dr.zh', 'investigator')}"}
            for fact, value in (("consent_signed_on", "no"), ("height_cm", "175"), ("weight_kg", "50")):
                httpx.post(ward.base_url + "/api/v1/subjects/SCR-0201/facts", json={"fact": fact, "value": value},
                           headers=hi).raise_for_status()
            page.locator("#panel-criteria summary").click()
            page.select_option("#fact-subject", "SCR-0201")
            page.click("#decision-button")
            rows = page.locator("#decision table.criteria tr")
            expect(rows.first).to_be_visible(timeout=10_000)
            expect(page.locator("#decision td[data-criterion='consent'] + td + td")).to_have_text("未签署知情同意书")
            expect(page.locator("#decision td[data-criterion='bmi'] + td + td")).to_have_text(
                "BMI 16.33 kg/m2（50 kg，175 cm） < 18.5")
            expect(page.locator("#decision td[data-criterion='fvc'] + td + td")).to_have_text("没有有效的 FVC 检测（尚无肺功能检测）")
            page.locator("#decision").scroll_into_view_if_needed()
            _screenshot(page, "i18n-zh-CN-decision.png")

            page.reload()  # the choice is the operator's, stored on the collector
            expect(page.locator(".topbar h1")).to_have_text("床位", timeout=10_000)
            expect(page.locator("#language")).to_have_value("zh-CN")

            page.select_option("#language", "en")
            expect(page.locator(".topbar h1")).to_have_text("Beds", timeout=10_000)
            expect(bed.locator(".pulse .label")).to_have_text("Pulse /min")
            expect(bed.locator(".session")).to_have_text("night #1")
            expect(page.locator("#stream-state")).to_have_text("live", timeout=10_000)
            expect(page.locator("#start-subject option").first).to_have_text("— choose —")
            _screenshot(page, "i18n-en.png")
            if not page.locator("#panel-criteria").evaluate("d => d.open"):
                page.locator("#panel-criteria summary").click()
            page.select_option("#fact-subject", "SCR-0201")
            page.click("#decision-button")
            decided = httpx.get(ward.base_url + "/api/v1/subjects/SCR-0201/eligibility", headers=h).json()
            stored = {c["id"]: c["reason"] for c in decided["criteria"]}
            expect(page.locator("#decision td[data-criterion='consent'] + td + td")).to_have_text(stored["consent"], timeout=10_000)
            expect(page.locator("#decision td[data-criterion='nocturnal_spo2'] + td + td")).to_have_text(stored["nocturnal_spo2"])
            assert stored["consent"] == "ICF not signed"
            browser.close()
            assert not errors, errors
    finally:
        ward.stop()


@pytest.mark.browser
@pytest.mark.timeout(240)
def test_the_login_screen_reads_the_sites_language_and_its_switch_in_chromium(tmp_path):
    """Before anyone logs in: the site's [site] language (zh-CN by default), errors from the server in it too;
    the switch on the login screen changes it and this browser remembers the pick; after login the operator's
    own language (here none: the site's) applies."""
    playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright missing: pip install playwright")

    from collector.web.demo import launch
    from test_web_browser import CHROMIUM, CHROMIUM_ARGS, _screenshot

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    expect = playwright_sync.expect
    password = "night-shift-42"
    ward = launch(tmp_path / "ward", speed=60.0, operators={"alice": password})  # the default site language: zh-CN
    try:
        with playwright_sync.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            # the browser asks for English: the site's language still wins on the ward laptop
            page = browser.new_context(viewport={"width": 1366, "height": 768}, locale="en-US").new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(ward.base_url + "/")
            login = page.locator("#login-view")
            expect(login).to_be_visible()
            expect(login.locator("h1")).to_have_text("ALS 筛选数据采集", timeout=10_000)
            expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
            expect(page.locator("label[for=login-name]")).to_have_text("操作员")
            expect(page.locator("label[for=login-password]")).to_have_text("密码或本地令牌")
            expect(page.locator("#login-submit")).to_have_text("登录")
            expect(page.locator("#login-language")).to_have_value("zh-CN")
            expect(page).to_have_title("采集程序 · 床位")
            page.fill("#login-name", "alice")
            page.fill("#login-password", "not-the-password")
            page.click("#login-submit")
            expect(page.locator("#login-error")).to_contain_text("操作员名称或密码错误", timeout=10_000)
            _screenshot(page, "login-zh-CN.png")

            page.select_option("#login-language", "en")
            expect(login.locator("h1")).to_have_text("ALS screening collector", timeout=10_000)
            expect(page.locator("#login-submit")).to_have_text("Log in")
            expect(page.locator("html")).to_have_attribute("lang", "en")
            page.reload()  # the pick is this browser's
            expect(login.locator("h1")).to_have_text("ALS screening collector", timeout=10_000)
            expect(page.locator("#login-language")).to_have_value("en")
            page.fill("#login-name", "alice")
            page.fill("#login-password", "wrong-again")
            page.click("#login-submit")
            expect(page.locator("#login-error")).to_contain_text("wrong operator name or password", timeout=10_000)
            _screenshot(page, "login-en.png")

            page.fill("#login-name", "alice")
            page.fill("#login-password", password)
            page.click("#login-submit")
            expect(page.locator("#app-view")).to_be_visible(timeout=15_000)
            expect(page.locator(".topbar h1")).to_have_text("床位", timeout=10_000)  # alice chose nothing: the site's
            page.click("#logout")
            expect(login).to_be_visible()
            expect(page.locator("#login-error")).to_have_text("已退出登录。")
            browser.close()
            assert not errors, errors
    finally:
        ward.stop()


def test_the_fact_forms_names_and_help_are_translated():
    """The page shows each staff fact as t(name with spaces) and t(help): both need a Chinese entry."""
    from collector.eligibility.facts import FACTS

    zh, en = catalogue("zh-CN"), catalogue("en")
    for f in FACTS.values():
        for msgid in (f.name.replace("_", " "), f.help):
            assert zh.get(msgid) and msgid in en, msgid
    source = (STATIC / "app.js").read_text(encoding="utf-8")
    assert 't(f.help)' in source and 't(f.name.replaceAll("_", " "))' in source


def test_criteria_have_one_table_of_names_read_by_the_pdf_and_the_page():
    from collector.eligibility.labels import CRITERIA
    from collector.export import pdf

    assert pdf.CRITERIA is CRITERIA
    zh = catalogue("zh-CN")
    assert all(zh.get(label) for label in CRITERIA.values())
    assert "criterionLabel(c.id)" in (STATIC / "app.js").read_text(encoding="utf-8")


def test_every_gap_cause_the_page_shows_is_translated():
    """The page writes a gap's cause as t(cause with spaces); every cause that breaks a hold has its msgid there."""
    from collector.oximetry.causes import BREAKING_CAUSES, CAUSE_TEXT

    assert BREAKING_CAUSES <= set(CAUSE_TEXT)
    assert all(text == cause.replace("_", " ") for cause, text in CAUSE_TEXT.items())
    zh = catalogue("zh-CN")
    assert all(zh.get(text) for text in CAUSE_TEXT.values())


# ----------------------------------------------------------------------- eligibility reasons

ENGLISH_PHRASE = re.compile(r"[A-Za-z]{2,} [A-Za-z]{2,}")
# Notes other modules hand the engine as English text (a spirometry session's validity note and grade review, a
# night's review note): they are shown as written inside the translated reason (not yet message ids of their own).
OTHER_MODULES_NOTES = {"not repeatable", "grade D accepted by the site rule", "host clock stepped"}


def _check_tree(node, english_text: str) -> None:
    """A reason's tree: its English is the stored text, every msgid is translated, no literal reads as English."""
    from collector.eligibility import messages

    zh = catalogue("zh-CN")
    assert node is not None, f"a reason without a message tree: {english_text!r}"
    assert messages.english(node) == english_text
    untranslated = [m for m in messages.msgids(node) if re.search("[A-Za-z]", m) and not zh.get(m)]
    assert not untranslated, f"untranslated reason msgids (add them to the zh_CN catalogue): {untranslated}"

    def leaves(n):
        if isinstance(n, str):
            yield n
        elif "join" in n:
            for p in n["parts"]:
                yield from leaves(p)
        else:
            for p in (n.get("params") or {}).values():
                yield from leaves(p)

    english_leaves = [s for s in leaves(node) if ENGLISH_PHRASE.search(s) and s not in OTHER_MODULES_NOTES]
    assert not english_leaves, f"English text passed as a literal, not a msgid: {english_leaves}"
    chinese = messages.render(node, translator("zh-CN"))
    assert not PLACEHOLDER.search(chinese), chinese


def _scenarios():
    """Decisions reaching each branch of the engine (the boundaries of test_eligibility_engine, and more)."""
    from datetime import date

    from collector.eligibility.engine import NightResult as N, SpirometryResult as S, Thresholds
    from test_eligibility_engine import run

    sp = lambda pct, **kw: S("sp9", True, pct, "gli-global-2022", "gli-2012", kw.pop("other", pct), fvc_l=3.0, grade=kw.pop("grade", "A"),  # noqa: E731
                             sex=kw.pop("sex", "male"), height_cm=kw.pop("height", 175.0), **kw)
    yield run()
    yield run(drop=tuple(["consent_signed_on", "birth_date", "screening_date", "diagnosis_date", "wfn_category",
                          "prior_treatment_failed", "height_cm", "weight_kg", "nutrition_good", "contraception", "cooperation"]),
              spiro=[], nights=[], first_session_on=None)
    yield run({"consent_signed_on": "no", "cooperation": "no", "nutrition_good": "no", "prior_treatment_failed": "no",
               "contraception": "no", "wfn_category": "possible"}, th=Thresholds(accepted_wfn_categories=("definite", "probable")))
    yield run({"consent_signed_on": "2024-06-20"})
    yield run({"consent_signed_on": "2024-06-15"})
    yield run(drop=("screening_date",), first_session_on=None)
    yield run({"birth_date": "2025-01-01"}, first_session_on=date(2024, 6, 15))
    yield run({"birth_date": "1964-06-16"})
    yield run({"birth_date": "1964-02-29", "screening_date": "2025-02-28"}, first_session_on=date(2025, 2, 28),
              th=Thresholds(age_max=60))
    yield run({"diagnosis_date": "2024-07-01"})
    yield run({"diagnosis_date": "2024-05-01"})
    yield run({"diagnosis_date": "2023-12-31", "screening_date": "2024-06-30"}, first_session_on=date(2024, 6, 30))
    yield run({"diagnosis_date": "2022-06-14"})
    yield run({"prior_treatments": ""}, drop=("prior_treatments",))
    yield run({"contraception": "not_applicable: post-menopausal"})
    yield run(spiro=[S("sp1", False, None, "gli-global-2022", note="not repeatable"), S("sp2", False, None, "gli-global-2022"),
                     S("sp3", True, 60.0, "gli-global-2022", manoeuvre="SVC"), S("sp4", True, float("nan"), "gli-global-2022")])
    yield run(spiro=[S("sp5", True, None, "gli-2012", other_equation=None)])
    yield run(spiro=[sp(49.96, other=50.4, lower_row_fvc_pct_predicted=50.2, sex="female", height=160.0)])
    yield run(spiro=[sp(50.04, other=49.0, grade=None, review="grade D accepted by the site rule")], th=Thresholds(crf_decimals=0))
    yield run(spiro=[sp(42.0)])
    yield run(nights=[N("n1", 3.5, True), N("n2", None, False, note="too short")])
    yield run(nights=[N("n1", 2.01, True, borderline=True), N("n2", 1.99, True, borderline=True), N("n3", None, True),
                      N("n4", 1.0, True, review="host clock stepped"), N("n5", 1.0, False)])
    yield run(nights=[N("n1", 1.0, False)])
    yield run(nights=[])
    yield run({"height_cm": "175", "weight_kg": "56.6"})
    yield run({"height_cm": "175", "weight_kg": "56.7"})
    yield run({"height_cm": "175", "weight_kg": "50"})
    yield run(drop=("weight_kg",))


def test_every_eligibility_reason_has_a_message_tree_that_is_translated():
    from collector.eligibility import messages
    from collector.eligibility.engine import summary_messages

    seen_states: set[tuple[str, str]] = set()
    zh = catalogue("zh-CN")
    for d in _scenarios():
        for c in d.criteria:
            _check_tree(c.message, c.reason)
            seen_states.add((c.id, c.state))
        for line in summary_messages(d.criteria):
            assert all(zh.get(m) for m in messages.msgids(line) if re.search("[A-Za-z]", m)), line
    # every criterion was reached in more than one state, so the check saw most branches
    assert all(len({s for cid, s in seen_states if cid == crit}) >= 2 for crit, _ in seen_states), seen_states


def test_reasons_are_built_only_from_message_trees():
    """A reason written as a plain or f-string sentence (no message id) fails here: the engine's _result calls
    and parts, and every place that rewrites a criterion's reason, take a tree (``set_reason``)."""
    import ast

    bad = []
    for rel in ("collector/eligibility/engine.py", "collector/eligibility/service.py", "collector/eligibility/review.py"):
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_result" and len(node.args) >= 3:
                if isinstance(node.args[2], (ast.Constant, ast.JoinedStr, ast.BinOp)):
                    bad.append(f"{rel}:{node.lineno} _result with a plain reason")
            if isinstance(node, ast.Tuple) and len(node.elts) == 2 and isinstance(node.elts[0], ast.Constant) \
                    and node.elts[0].value in ("met", "not_met", "pending", "needs_review") \
                    and isinstance(node.elts[1], (ast.Constant, ast.JoinedStr, ast.BinOp)) \
                    and getattr(node.elts[1], "value", None) not in ("met", "not_met", "pending", "needs_review"):
                bad.append(f"{rel}:{node.lineno} a part with a plain reason")
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for x in ast.walk(t):
                        if isinstance(x, ast.Attribute) and x.attr == "reason" and not (rel.endswith("engine.py")):
                            bad.append(f"{rel}:{node.lineno} assigns .reason (use set_reason with a tree)")
    assert not bad, bad


def test_report_pdf_reads_the_reasons_in_its_language_and_english_as_stored():
    import pypdf

    from collector.eligibility.engine import summary_messages
    from collector.export.pdf import summary_pdf
    from test_eligibility_engine import run

    d = run({"consent_signed_on": "no"}, nights=[])
    elig = {"decision": d.decision, "summary": d.summary, "criteria": [c.as_dict() for c in d.criteria]}
    trees = {"criteria": {c.id: c.message for c in d.criteria}, "summary": summary_messages(d.criteria)}

    def text(lang: str) -> str:
        pdf = summary_pdf(pseudonym="SCR-0001", site="Test Hospital 1", site_uuid="00000000-0000-4000-8000-000000000000",
                          timezone="Asia/Shanghai", export_utc="2025-07-01T10:00:00.000Z", software="collector 0",
                          age_years=50, eligibility=elig, nights=[], spirometry=[], payload_hash="ab" * 32, lang=lang,
                          messages=trees)
        return "".join("".join(p.extract_text().split()) for p in pypdf.PdfReader(io.BytesIO(pdf)).pages)

    zh = text("zh-CN")
    for phrase in ("未签署知情同意书", "知情同意：未签署知情同意书", "尚未记录筛选夜", "最佳FVC为预计值的72.0%"):
        assert phrase in zh, phrase
    en = text("en")
    assert "consent:ICFnotsigned" in en and "noscreeningnightrecordedyet" in en and not re.search(r"[\u4e00-\u9fff]", en)


def test_reasons_the_service_adds_are_message_trees_too():
    """A live T90 alert on a night in progress, a host clock step and a report made with another limit."""
    from collector.eligibility import service
    from collector.eligibility.engine import NightResult, Thresholds
    from test_eligibility_engine import run

    review = service._night_review({"clock_steps": [{"step_s": 14400.0, "t_utc": "2024-06-20T01:00:00.000Z"}]})
    stale = service._night_stale({"definitions": {"threshold_pct": 3.0}, "session_id": 7}, 2.0)
    assert review is not None and stale is not None
    from collector.eligibility.messages import english

    night = NightResult("n1", 1.0, True, review=english(review), stale=english(stale), review_message=review, stale_message=stale)
    d = run(nights=[night])
    alerts = {3: {"t_utc": "2024-06-20T01:00:00.000Z", "t90_pct": 2.345}, 5: {"t_utc": "2024-06-20T02:00:00.000Z"}}
    service._apply_live_alerts(d.criteria, [{"session_id": 3}], alerts, Thresholds())
    crit = d.criterion("nocturnal_spo2")
    assert crit.state == "needs_review" and "host clock stepped" in crit.reason and "live T90 2.35 %" in crit.reason
    _check_tree(crit.message, crit.reason)


def test_review_items_and_resolved_reasons_carry_their_trees(tmp_path):
    """The page's review list reads the reason that needed review in the reader's language, before and after a resolution."""
    import sqlite3

    from collector.eligibility.service import evaluate_subject, review_items
    from test_review_signatures import PW

    db = tmp_path / "r.sqlite"
    assert invoke(db, "subject", "add", "SCR-0001", operator="dr.a").exit_code == 0
    assert invoke(db, "user", "full-name", "dr.a", "Li Wei", operator="adm").exit_code == 0
    for fact, value in (("height_cm", "170"), ("weight_kg", "53.45"), ("nutrition_good", "yes")):
        assert invoke(db, "criteria", "set", "SCR-0001", fact, value, operator="dr.a").exit_code == 0

    def bmi_item():
        conn = sqlite3.connect(db)
        try:
            items = review_items(conn, "SCR-0001", now=1.8e9, messages=True)
            return next(i for i in items if i["criterion"] == "bmi"), evaluate_subject(conn, "SCR-0001", now=1.8e9, messages=True)
        finally:
            conn.close()

    item, _ = bmi_item()
    assert item["status"] == "open"
    _check_tree(item["reason_message"], item["reason"])
    r = invoke(db, "review", "resolve", "SCR-0001", "bmi", "--decision", "not_met", "--reason", "18.495 is below 18.5",
               "--password-stdin", operator="dr.a", input=PW)
    assert r.exit_code == 0, r.output
    item, decision = bmi_item()
    assert item["status"] == "resolved"
    _check_tree(item["reason_message"], item["reason"])
    crit = next(c for c in decision["criteria"] if c["id"] == "bmi")
    assert crit["reason"].startswith("resolved not_met by dr.a")
    tree = decision["messages"]["criteria"]["bmi"]
    from collector.eligibility import messages

    assert messages.english(tree) == crit["reason"]
    assert messages.render(tree, translator("zh-CN")).startswith("已由 dr.a 于")

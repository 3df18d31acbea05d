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

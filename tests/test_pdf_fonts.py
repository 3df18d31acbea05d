"""report.pdf's embedded font subsets: every character printed is the original font's own outline.

The subsets are HarfBuzz's, without the tables a viewer never reads (collector/export/pdf_fonts.py); this
reads the PDF back the way a viewer does (character code -> glyph through CIDToGIDMap, the outline and
advance from the embedded font program) and compares each with the installed font's glyph for the same
character.
"""

from __future__ import annotations

import io

import pypdf
import pytest
from fontTools.pens.recordingPen import DecomposingRecordingPen
from fontTools.ttLib import TTFont

from collector.export import pdf_fonts
from collector.i18n import fonts


def _pdf(lang: str) -> bytes:
    from collector.export.pdf import summary_pdf

    crit = [{"id": "fvc", "state": "needs_review", "reason": "FVC 49.96 % < 50 % (GLI-2012) · 第二次复核"},
            {"id": "nocturnal_spo2", "state": "met", "reason": "T90 1.20 % <= 2 %"}]
    return summary_pdf(pseudonym="SCR-0001", site="Test Hospital 1", site_uuid="00000000-0000-4000-8000-000000000000",
                       timezone="Asia/Shanghai", export_utc="2025-07-01T10:00:00.000Z", software="collector 0",
                       age_years=50, eligibility={"decision": "incomplete", "summary": ["夜间血氧 T90 ≤ 2 %"],
                                                  "criteria": crit},
                       nights=[], spirometry=[], payload_hash="ab" * 32, lang=lang)


def _to_unicode(cmap: bytes) -> dict[int, str]:
    """The bfrange entries matplotlib writes (``<lo> <hi> <u>`` and ``<lo> <hi> [<u> ...]``): code -> text."""
    import re

    def text(h: bytes) -> str:
        return bytes.fromhex(h.decode()).decode("utf-16-be")

    out: dict[int, str] = {}
    body = cmap.split(b"beginbfrange", 1)[1].split(b"endbfrange", 1)[0]
    for a, b, arr, u in re.findall(rb"<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>\s*(?:\[([^\]]*)\]|<([0-9a-fA-F]+)>)", body):
        lo, hi = int(a, 16), int(b, 16)
        if arr:
            for k, h in enumerate(re.findall(rb"<([0-9a-fA-F]+)>", arr)):
                out[lo + k] = text(h)
        else:
            start = text(u)
            for k in range(hi - lo + 1):
                out[lo + k] = start[:-1] + chr(ord(start[-1]) + k)
    return out


def _outline(font: TTFont, glyph: str) -> list[tuple[str, tuple]]:
    pen = DecomposingRecordingPen(font.getGlyphSet())
    font.getGlyphSet()[glyph].draw(pen)
    return pen.value


def _installed(basefont: str) -> TTFont:
    from matplotlib import font_manager

    name = basefont.split("+", 1)[1]
    for entry in font_manager.fontManager.ttflist:
        f = TTFont(entry.fname, lazy=True, fontNumber=0)
        if f["name"].getDebugName(6) == name:
            return f
    raise AssertionError(f"{name} not installed")


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_every_embedded_glyph_is_the_installed_fonts_outline(lang):
    assert pdf_fonts.install(), "matplotlib's subset hook changed: update collector/export/pdf_fonts.py"
    if lang == "zh-CN":
        assert fonts.cjk_family() is not None, "no CJK font installed: apt-get install fonts-droid-fallback"
    reader = pypdf.PdfReader(io.BytesIO(_pdf(lang)))
    checked = 0
    seen = set()
    for page in reader.pages:
        for ref in page["/Resources"]["/Font"].values():
            type0 = ref.get_object()
            if type0["/BaseFont"] in seen:
                continue
            seen.add(type0["/BaseFont"])
            cid = type0["/DescendantFonts"][0].get_object()
            program = cid["/FontDescriptor"]["/FontFile2"].get_object().get_data()
            embedded = TTFont(io.BytesIO(program))
            assert not {"GSUB", "GPOS", "GDEF", "kern"} & set(embedded.keys())
            assert {"glyf", "loca", "head", "hhea", "hmtx", "maxp"} <= set(embedded.keys())
            gid_map = cid["/CIDToGIDMap"].get_object().get_data()
            original = _installed(str(type0["/BaseFont"]))
            ocmap = original.getBestCmap()
            for code, text in _to_unicode(type0["/ToUnicode"].get_object().get_data()).items():
                gid = int.from_bytes(gid_map[2 * code:2 * code + 2], "big")
                assert 0 < gid < len(embedded.getGlyphOrder()), (type0["/BaseFont"], text)
                if len(text) != 1:  # a ligature (matplotlib shapes text): one code for several characters
                    continue
                name, want = embedded.getGlyphOrder()[gid], ocmap[ord(text)]
                assert _outline(embedded, name) == _outline(original, want), (type0["/BaseFont"], text)
                assert embedded["hmtx"][name][0] == original["hmtx"][want][0]
                assert embedded.getBestCmap()[ord(text)] == name  # a cmap like matplotlib's own subsets keep
                checked += 1
    assert checked > 40


def test_the_subsetter_is_harfbuzz_and_fonttools_subset_loads_only_when_used():
    import subprocess
    import sys

    code = ("import sys; import collector.export.pdf as p; from matplotlib.backends import _backend_pdf_ps as b; "
            "assert b.get_glyphs_subset is p.pdf_fonts.glyphs_subset; "
            "print(type(sys.modules['fontTools.subset']).__name__, 'fontTools.varLib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["_LazyModule", "False"], out

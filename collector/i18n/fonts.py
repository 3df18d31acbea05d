"""Fonts for pictures and PDFs: DejaVu Sans (matplotlib's own) with a CJK fallback for Chinese.

matplotlib draws each character with the first family in the list that has it, so Latin text
keeps DejaVu Sans and Chinese comes from a system CJK font (Debian: ``fonts-droid-fallback``,
``fonts-noto-cjk`` or ``fonts-wqy-microhei``).  Without one, Chinese would print as empty boxes:
:func:`cjk_family` says which one is used, and the PDF test fails when none is installed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

LATIN = "DejaVu Sans"
CJK_FILES = ("notosanscjk", "droidsansfallback", "wqy-microhei", "wqy-zenhei", "sourcehansans")
CJK_CANDIDATES = ("Noto Sans CJK SC", "Droid Sans Fallback", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Source Han Sans SC")


@lru_cache(maxsize=1)
def cjk_family() -> str | None:
    """The first installed CJK family matplotlib can use, or None."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    found = next((name for name in CJK_CANDIDATES if name in names), None)
    if found is None:  # installed after matplotlib cached its font list: add the files now
        for path in font_manager.findSystemFonts():
            if any(key in Path(path).name.lower() for key in CJK_FILES):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        names = {f.name for f in font_manager.fontManager.ttflist}
        found = next((name for name in CJK_CANDIDATES if name in names), None)
    return found


def families() -> list[str]:
    """``font.family`` for text that may be Chinese: Latin first, then the CJK fallback if any."""
    import logging

    # CJK fallback fonts often have no bold face; matplotlib says so once per text: expected, not news.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    cjk = cjk_family()
    return [LATIN, cjk] if cjk else [LATIN]

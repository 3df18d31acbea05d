"""What people read, in their language: gettext catalogues (``locale/<lang>/LC_MESSAGES/collector.po``).

Technicians at the trial's sites read Chinese; the study team reads English.  Source strings are
English msgids; ``zh-CN`` has a complete catalogue and ``en`` one whose translations equal their
ids (so an English wording can change without touching code).  The ``.po`` files are read with
Babel's PO reader, the Python ecosystem's standard for gettext catalogues, so there is no compiled
``.mo`` file to fall out of date.  Strings are marked in Python with ``_("...")`` (where ``_`` is
:func:`translator`'s result) or :func:`N_` for tables built at import, and in the page with
``t("...")``/``data-i18n``; a test extracts every marked string and fails on one without a
translation.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable

#: The languages a person may choose, with their names as speakers write them.
LANGUAGES: dict[str, str] = {"zh-CN": "简体中文", "en": "English"}
DEFAULT_LANGUAGE = "zh-CN"
LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
DOMAIN = "collector"


def po_path(lang: str) -> Path:
    return LOCALE_DIR / lang.replace("-", "_") / "LC_MESSAGES" / f"{DOMAIN}.po"


def check_language(lang: str) -> str:
    """The language code if known (``zh-cn`` and ``zh_CN`` are accepted spellings), else ValueError."""
    for code in LANGUAGES:
        if lang.replace("_", "-").lower() == code.lower():
            return code
    raise ValueError(f"unknown language {lang!r}; choose one of {', '.join(LANGUAGES)}")


@lru_cache(maxsize=None)
def catalogue(lang: str) -> dict[str, str]:
    """msgid -> translation for ``lang`` (empty translations left out: they fall back to the msgid)."""
    from babel.messages.pofile import read_po  # only when a translation is needed: the CLI starts without it

    with po_path(check_language(lang)).open("rb") as fh:
        cat = read_po(fh)
    return {str(m.id): str(m.string) for m in cat if m.id and isinstance(m.id, str) and m.string}


def translator(lang: str | None) -> Callable[[str], str]:
    """``_`` for one language; unknown or missing language: the site default."""
    try:
        code = check_language(lang or DEFAULT_LANGUAGE)
    except ValueError:
        code = DEFAULT_LANGUAGE
    table = catalogue(code)

    def _(msgid: str) -> str:
        return table.get(msgid, msgid)

    return _


def N_(msgid: str) -> str:
    """Marks a string for translation where it is defined; it is translated where it is shown."""
    return msgid

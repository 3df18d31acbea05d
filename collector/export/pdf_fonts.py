"""The fonts report.pdf embeds: subset by HarfBuzz to the glyphs drawn, without the tables no viewer reads.

matplotlib embeds each TrueType font as a Type 42 (CIDFontType2) subset made by fontTools.  fontTools
decompiles whole tables in Python: for the Chinese fallback font (Droid Sans Fallback, 4 MB, 49 000
glyphs) that is 0.3-0.45 s per PDF, and importing ``fontTools.subset`` (which matplotlib does when its
PDF backend loads) costs another 0.1-0.3 s.  HarfBuzz's subsetter (``hb-subset``, through uharfbuzz, the
HarfBuzz project's own Python binding) makes the same subset in about 3 ms.

What is kept: the outlines, metrics, hinting and names of exactly the glyphs matplotlib placed.  What is
dropped: the OpenType layout and kerning tables (matplotlib has shaped and positioned the text before the
PDF is written; a viewer draws CIDFontType2 glyphs by their IDs) and vertical metrics (horizontal text
only).  The text a reader copies comes from matplotlib's ToUnicode map, written from its own glyph map.

:func:`install` replaces matplotlib's subsetter for the process and defers the ``fontTools.subset`` import
until something uses it; without uharfbuzz, or if matplotlib's hook is not the one this was written for,
nothing is replaced (the tests fail then).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import sys
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

#: Tables a PDF viewer never reads from an embedded CIDFontType2 program: glyph substitution and
#: positioning, kerning (both done by matplotlib before the PDF is written) and vertical metrics.
UNREAD_TABLES = ("GSUB", "GPOS", "GDEF", "BASE", "JSTF", "MATH", "kern", "kerx", "morx", "mort", "vhea", "vmtx",
                 "VORG", "feat", "trak", "just", "prop", "opbd", "lcar", "ltag", "meta", "FFTM", "PfEd", "BDF ",
                 "MERG", "TSIV", "Zapf", "bdat", "bloc", "cidg", "fdsc", "fmtx", "fond", "xref", "DSIG")


class SubsetFont:
    """The subset font program as matplotlib uses it (``save`` into a file, ``close``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def save(self, file: io.BytesIO, reorderTables: bool = False) -> None:  # noqa: N803 (fontTools' name)
        file.write(self.data)

    def close(self) -> None:
        pass


@lru_cache(maxsize=8)
def _face(path: str, index: int) -> tuple[Any, dict[int, list[int]]]:
    """One parsed face per font file and process (the Latin font is subset twice in a report), with its
    characters by glyph (15 ms for the CJK font): the subset keeps a cmap for the glyphs it keeps, as
    matplotlib's own subsets do, although a viewer draws a CID font by glyph ID."""
    import uharfbuzz as hb

    face = hb.Face(hb.Blob.from_file_path(path), index)
    font = hb.Font(face)
    chars: dict[int, list[int]] = {}
    for u in face.unicodes:
        gid = font.get_nominal_glyph(u)
        if gid:
            chars.setdefault(gid, []).append(u)
    return face, chars


def subset_font(path: str, index: int, glyphs: Iterable[int]) -> tuple[bytes, dict[int, int]]:
    """The TrueType program with only ``glyphs`` (and .notdef), and the map old glyph ID -> new glyph ID."""
    import uharfbuzz as hb

    face, chars = _face(path, index)
    wanted = {int(gid) for gid in glyphs}
    inp = hb.SubsetInput()
    inp.glyph_set.update(wanted)
    inp.unicode_set.update(u for gid in wanted for u in chars.get(gid, ()))  # maps only to glyphs kept
    inp.sets(hb.SubsetInputSets.DROP_TABLE_TAG).update(_tag(tag) for tag in UNREAD_TABLES)
    inp.flags = hb.SubsetFlags.GLYPH_NAMES | hb.SubsetFlags.NO_LAYOUT_CLOSURE | hb.SubsetFlags.NOTDEF_OUTLINE
    plan = hb.SubsetPlan(face, inp)
    out = plan.execute()
    if out is None:
        raise RuntimeError(f"HarfBuzz could not subset {path}")
    mapping = {int(k): int(v) for k, v in plan.old_to_new_glyph_mapping.items()}
    return bytes(out.blob.data), mapping


def _tag(tag: str) -> int:
    """An OpenType table tag as HarfBuzz's sets hold it."""
    return int.from_bytes(tag.ljust(4).encode("ascii"), "big")


@contextlib.contextmanager
def glyphs_subset(fontfile: Any, glyphs: Iterable[int]) -> Iterator[Any]:
    """matplotlib's ``get_glyphs_subset`` contract: a context manager giving ``(font, glyph_index_map)``."""
    from matplotlib.backends._backend_pdf_ps import SubsetResults

    data, mapping = subset_font(str(fontfile), int(getattr(fontfile, "face_index", 0)), glyphs)
    yield SubsetResults(SubsetFont(data), mapping)


def _defer_import(name: str) -> None:
    """Load module ``name`` only when one of its attributes is first used (importlib's LazyLoader)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)


def install() -> bool:
    """Use :func:`glyphs_subset` for every PDF matplotlib writes in this process.  False (and matplotlib's own
    subsetter stays: the same PDF, slower) when uharfbuzz is not installed or matplotlib's hook is not the one
    this was written for; the tests require True."""
    if importlib.util.find_spec("uharfbuzz") is None:  # an install without it still exports, as slowly as before
        return False
    _defer_import("fontTools.subset")  # matplotlib imports it with its PDF backend, for the subsetter replaced here
    from matplotlib.backends import _backend_pdf_ps

    current = getattr(_backend_pdf_ps, "get_glyphs_subset", None)
    if current is glyphs_subset:
        return True
    if current is None or list(inspect.signature(current).parameters) != ["fontfile", "glyphs"] or \
            not hasattr(_backend_pdf_ps, "SubsetResults"):
        return False
    _backend_pdf_ps.get_glyphs_subset = glyphs_subset
    return True

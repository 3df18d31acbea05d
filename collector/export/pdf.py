"""report.pdf: the screening summary a data manager files and the investigator signs.

Drawn with matplotlib (already a dependency).  The summary flows over as many A4
portrait pages as it needs: every reason is wrapped in full, never cut.  Each night
follows on its own A4 landscape page, drawn as vector graphics (the same figure as
the bundle's PNG, not a picture of it).  Times are shown in the site's zone with the
UTC offset (``[site] timezone``); the bundle's own files stay UTC.

Every page's footer carries the page number and the bundle's payload hash: the
SHA-256 of the payload manifest lines of every payload file except ``report.pdf``
itself (a PDF cannot contain the hash of a manifest that lists the PDF).  The same
hash is in ``bag-info.txt`` (``Payload-SHA256-Without-Report``) and in the PDF's
Keywords, so ``collector verify`` ties the paper to the bundle.
"""

from __future__ import annotations

import io
import re
import textwrap
import unicodedata
from datetime import datetime
from typing import Any, Callable
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")

from . import pdf_fonts  # noqa: E402

pdf_fonts.install()  # before matplotlib's PDF backend loads: HarfBuzz subsets the fonts

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from collector.eligibility import labels  # noqa: E402
from collector.eligibility import messages as reason_messages  # noqa: E402
from collector.i18n import N_, fonts, translator  # noqa: E402

A4_PORTRAIT_IN = (8.27, 11.69)
LEFT, RIGHT, TOP, BOTTOM = 0.07, 0.93, 0.965, 0.07
HASH_LABEL = "Payload-SHA256-Without-Report"


DECISIONS = {"eligible": N_("ELIGIBLE"), "ineligible": N_("INELIGIBLE"), "incomplete": N_("INCOMPLETE"),
             "not evaluated": N_("NOT EVALUATED")}
STATES = labels.STATES
CRITERIA = labels.CRITERIA
NIGHTS = {"pass": N_("pass"), "fail": N_("fail"), "invalid": N_("invalid")}


def _width(text: str) -> int:
    """Display width in Latin-character units: a CJK character is about two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


_TOKENS = re.compile(r"\s+|[\u2e80-\u9fff\u3000-\u303f\uff00-\uffef]|[^\s\u2e80-\u9fff\u3000-\u303f\uff00-\uffef]+")


def wrap(text: str, width: int) -> list[str]:
    """Wrap at spaces in Latin text and between any two characters of Chinese (which has no spaces)."""
    if _width(text) == len(text):
        return textwrap.wrap(text, width=width, break_long_words=True) or [""]
    lines: list[str] = []
    line = ""
    for token in _TOKENS.findall(text):
        if token.isspace():
            line += " " if line else ""
            continue
        while _width(token) > width:  # a Latin word longer than a line (a hash): cut it
            if line.strip():
                lines.append(line.rstrip())
            lines.append(token[:width])
            line, token = "", token[width:]
        if line.strip() and _width(line + token) > width:
            lines.append(line.rstrip())
            line = token
        else:
            line += token
    lines.append(line.rstrip())
    return lines


def local_time(utc_text: str | None, tz: str) -> str:
    """``2025-12-29T09:20:00.000Z`` -> ``2025-12-29 17:20 CST (UTC+08:00)`` in the site's zone."""
    if not utc_text:
        return "n/a"
    t = datetime.fromisoformat(utc_text.replace("Z", "+00:00")).astimezone(ZoneInfo(tz))
    off = t.strftime("%z")
    return f"{t:%Y-%m-%d %H:%M} {t.tzname()} (UTC{off[:3]}:{off[3:]})"


def _f(v: Any, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _chars(width_frac: float, size: float) -> int:
    """Characters of DejaVu Sans at ``size`` pt that fit a column ``width_frac`` of the page wide (kept on the safe side)."""
    return max(4, int(width_frac * A4_PORTRAIT_IN[0] * 72 / (size * 0.62)))


class _Pages:
    """A cursor over portrait summary pages: text and tables flow onto a new page when one is full."""

    def __init__(self) -> None:
        self.figs: list[Any] = []
        self.y = 0.0
        self.new()

    def new(self) -> None:
        self.figs.append(plt.figure(figsize=A4_PORTRAIT_IN))
        self.y = TOP

    @staticmethod
    def step(size: float) -> float:
        return size * 1.4 / 72 / A4_PORTRAIT_IN[1]

    def text(self, s: str, size: float = 9, gap: float = 0.004, **kw: Any) -> None:
        lines: list[str] = []
        for para in s.split("\n"):
            lines.extend(wrap(para, _chars(RIGHT - LEFT, size)))
        for line in lines:
            if self.y - self.step(size) < BOTTOM + 0.02:
                self.new()
            self.figs[-1].text(LEFT, self.y, line, fontsize=size, va="top", family=fonts.families(), **kw)
            self.y -= self.step(size)
        self.y -= gap

    def table(self, header: list[str], rows: list[list[str]], widths: list[float], size: float = 7.5) -> None:
        for r, row in enumerate([header, *rows]):
            cells = [wrap(text, _chars(w - 0.01, size)) for text, w in zip(row, widths)]
            height = max(len(c) for c in cells) * self.step(size) + 0.002
            if self.y - height < BOTTOM + 0.02:
                self.new()
                if r:
                    self.table_row(header, [[h] for h in header], widths, size, bold=True)
            self.table_row(row, cells, widths, size, bold=r == 0)
        self.y -= 0.008

    def table_row(self, row: list[str], cells: list[list[str]], widths: list[float], size: float, bold: bool) -> None:
        x = LEFT
        for lines, w in zip(cells, widths):
            self.figs[-1].text(x, self.y, "\n".join(lines), fontsize=size, va="top", linespacing=1.2,
                               fontweight="bold" if bold else "normal", family=fonts.families())
            x += w
        self.y -= max(len(c) for c in cells) * self.step(size) + 0.002


def summary_pdf(
    *,
    pseudonym: str,
    site: str,
    site_uuid: str,
    timezone: str,
    export_utc: str,
    software: str,
    age_years: int | None,
    eligibility: dict[str, Any],
    nights: list[dict[str, Any]],
    spirometry: list[dict[str, Any]],
    payload_hash: str,
    lang: str = "en",
    signatures: list[dict[str, Any]] | None = None,
    export_signed: bool = False,
    messages: dict[str, Any] | None = None,
) -> bytes:
    """``nights``: dicts with session_id, start_utc, report, data (NightData) and optionally ``figure`` (the night's
    figure drawn in ``lang``, taken over and closed here); ``spirometry``: result rows (dicts); ``messages``: the
    reasons' message trees (``evaluate_subject(..., messages=True)["messages"]``) to read them in ``lang``."""
    from collector.oximetry.analysis.plot import night_figure

    from .verify import config_from_report

    _ = translator(lang)
    p = _Pages()
    p.text(_("ALS cell-therapy trial: screening summary, subject {subject}").format(subject=pseudonym), 14, fontweight="bold")
    age = str(age_years) if age_years is not None else _("not recorded")
    p.text(_("Site {site} (site UUID {uuid})    exported {when}    {software}    age at screening {age}").format(
        site=site, uuid=site_uuid, when=local_time(export_utc, timezone), software=software, age=age), 8.5)
    p.text(_("Times are in {zone}; the bundle's files keep UTC.").format(zone=timezone), 8, color="#444444")
    p.y -= 0.006
    decision = str(eligibility.get("decision", "not evaluated"))
    p.text(_("Decision: {decision}").format(decision=_(DECISIONS.get(decision, decision.upper()))), 13, fontweight="bold")
    # Reasons in the report's language from their message trees (messages.py); the English is the stored text.
    trees = messages or {}
    summary = [str(x) for x in eligibility.get("summary") or eligibility.get("reasons") or []]
    summary_trees = trees.get("summary") or []
    for i, reason in enumerate(summary):
        p.text("• " + reason_messages.localise(summary_trees[i] if len(summary_trees) == len(summary) else None, reason, lang),
               8.5, gap=0.001)
    crit = eligibility.get("criteria") or []
    if crit:
        p.y -= 0.006
        crit_trees = trees.get("criteria") or {}
        p.table([_("criterion"), _("state"), _("reason")],
                [[_(CRITERIA.get(str(c.get("id")), str(c.get("id")))), _(STATES.get(str(c.get("state")), str(c.get("state")))),
                  reason_messages.localise(crit_trees.get(str(c.get("id"))), str(c.get("reason")), lang)] for c in crit],
                [0.17, 0.12, 0.57])
    limits = sorted({float(n["report"]["definitions"]["threshold_pct"]) for n in nights if n["report"].get("definitions")})
    p.text(_("Nights (T90 = time with SpO2 < 90 % as % of analysed time; criterion T90 <= {limit} %)").format(
        limit=" / ".join(f"{v:g}" for v in limits)) if limits else
           _("Nights (T90 = time with SpO2 < 90 % as % of analysed time)"), 10, fontweight="bold")
    rows = [[str(n["session_id"]), local_time(n.get("start_utc"), timezone),
             _f(n["report"].get("t90_pct")), f"{(n['report'].get('analysed_s') or 0) / 3600:.2f}",
             _f(n["report"].get("analysed_pct"), ".1f"), _f(n["report"].get("nadir_spo2"), ".0f"),
             _f(n["report"].get("odi4_per_h"), ".1f"), _(NIGHTS.get(str(n["report"].get("decision")), str(n["report"].get("decision")))),
             _("yes") if n["report"].get("needs_review") else ""] for n in nights]
    p.table([_("session"), _("start"), _("T90 %"), _("analysed h"), _("analysed %"), _("nadir"), _("ODI4/h"), _("night"), _("review")],
            rows or [[_("(none)")] + [""] * 8], [0.07, 0.22, 0.07, 0.09, 0.09, 0.06, 0.07, 0.07, 0.07])
    notes = [(n, note) for n in nights for note in n.get("notes") or []]
    if notes:
        p.text(_("Night notes (written by the technician during the night)"), 10, fontweight="bold")
        p.table([_("session"), _("time"), _("by"), _("note")], [[str(n["session_id"]), local_time(note["noted_utc"], timezone),
                                                                 str(note["noted_by"]), str(note["text"])] for n, note in notes],
                [0.07, 0.22, 0.1, 0.47])
    p.text(_("Spirometry (best FVC of an acceptable, repeatable session)"), 10, fontweight="bold")
    srows = [[str(s.get("session_id")), _("yes") if s.get("valid") else _("no"), str(s.get("equation")),
              _f(s.get("fvc_l")), _f(s.get("predicted_fvc_l")), _f(s.get("fvc_pct_predicted"), ".1f"),
              _f(s.get("z_fvc")), _f(s.get("lln_fvc_l")), str(s.get("grade_fvc") or "")] for s in spirometry]
    p.table([_("session"), _("valid"), _("equation"), _("FVC L"), _("pred L"), _("% pred"), "z", _("LLN L"), _("grade")],
            srows or [[_("(none)")] + [""] * 8], [0.07, 0.06, 0.2, 0.08, 0.08, 0.08, 0.07, 0.08, 0.08])
    if nights:
        p.text(_("Each night follows on its own page ({count}).").format(count=len(nights)), 8)
    p.y -= 0.006
    p.text(_("Electronic signatures"), 10, fontweight="bold")
    for sig in signatures or []:
        what = {"eligibility_decision": _("the eligibility decision"),
                "review_resolution": _("review resolution {ref}").format(ref=sig["record_ref"]),
                "export": _("this export")}.get(sig["record_type"], sig["record_type"])
        state = _("valid") if sig["valid"] else _("NO LONGER VALID: {why}").format(why=sig["invalid_reason"])
        p.text(_("{name} ({role}): {meaning}, {what}, signed {when} ({state}); signed content SHA-256 {hash}").format(
            name=sig["full_name"], role=sig["role"], meaning=sig["meaning"], what=what, when=sig["signed_local"], state=state,
            hash=sig["content_sha256"]), 8.5, gap=0.002)
    if not signatures:
        p.text(_("No electronic signature recorded yet (the investigator signs with: collector sign SUBJECT --meaning approved)."), 8.5)
    if export_signed:
        p.text(_("This export is signed (responsible for this export) in signatures.json; that signature covers this report."), 8.5)
    figs = list(p.figs)
    for n in nights:
        if n.get("figure") is not None:  # the bundle's PNG figure, its words in the report's language: not built again
            figs.append(n.pop("figure"))
            continue
        figs.append(night_figure(n["data"], n["report"], config_from_report(n["report"]),
                                 title=_("Overnight oximetry: subject {subject}, session {session}").format(
                                     subject=pseudonym, session=n["session_id"]),
                                 tz=ZoneInfo(timezone), lang=lang))
    buf = io.BytesIO()
    meta = {"Title": f"Screening summary {pseudonym}", "Creator": software, "Subject": f"site {site_uuid}",
            "Keywords": f"{HASH_LABEL} {payload_hash}"}
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(buf, metadata=meta) as pdf:  # TrueType: searchable text
        for k, fig in enumerate(figs, 1):
            fig.text(0.5, 0.018, _("Subject {subject}  ·  {site}  ·  bundle payload SHA-256 (without this report) "
                                   "{hash}  ·  page {page} of {pages}").format(
                subject=pseudonym, site=site, hash=payload_hash, page=k, pages=len(figs)), fontsize=6.5, ha="center",
                     family=fonts.families(), color="#333333")
            pdf.savefig(fig)
            plt.close(fig)
    return buf.getvalue()

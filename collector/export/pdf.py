"""report.pdf: the one-to-three page screening summary the investigator signs.

Drawn with matplotlib (already a dependency: no extra package).  Page 1 holds the
decision, every criterion, the nights and spirometry tables and the signature
lines; pages 2-3 hold the night pictures, two per page (at most four nights;
further nights are listed on page 1 and their pictures are in the bundle).
Everything shown comes from the bundle's own files, never from personal data.
"""

from __future__ import annotations

import io
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

A4_PORTRAIT_IN = (8.27, 11.69)
MAX_PICTURE_NIGHTS = 4


def _f(v: Any, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _text(fig: Any, y: float, s: str, size: float = 9, **kw: Any) -> float:
    """Write wrapped text from the top; returns the next free y (figure fraction)."""
    lines = []
    for para in s.split("\n"):
        lines.extend(textwrap.wrap(para, width=int(1000 / size)) or [""])
    fig.text(0.07, y, "\n".join(lines), fontsize=size, va="top", family="DejaVu Sans", **kw)
    return y - len(lines) * size * 1.45 / 72 / A4_PORTRAIT_IN[1] - 0.006


def _table(fig: Any, y: float, header: list[str], rows: list[list[str]], widths: list[float], size: float = 7.5) -> float:
    x0 = 0.07
    step = size * 1.5 / 72 / A4_PORTRAIT_IN[1]
    for r, row in enumerate([header, *rows]):
        x = x0
        for text, w in zip(row, widths):
            fig.text(x, y, textwrap.shorten(text, width=max(4, int(w * 170 * 7.5 / size)), placeholder="…"),
                     fontsize=size, va="top", fontweight="bold" if r == 0 else "normal")
            x += w
        y -= step
    return y - 0.008


def summary_pdf(
    *,
    pseudonym: str,
    site: str,
    export_utc: str,
    software: str,
    age_years: int | None,
    eligibility: dict[str, Any],
    nights: list[dict[str, Any]],
    spirometry: list[dict[str, Any]],
) -> bytes:
    """``nights``: dicts with session_id, start_utc, report, png (bytes); ``spirometry``: result rows (dicts)."""
    buf = io.BytesIO()
    with PdfPages(buf, metadata={"Title": f"Screening summary {pseudonym}", "Creator": software}) as pdf:
        fig = plt.figure(figsize=A4_PORTRAIT_IN)
        y = _text(fig, 0.965, f"ALS cell-therapy trial: screening summary, subject {pseudonym}", 14, fontweight="bold")
        y = _text(fig, y, f"Site {site}    exported {export_utc}    {software}    "
                          f"age at screening {age_years if age_years is not None else 'not recorded'}", 8.5)
        decision = str(eligibility.get("decision", "not evaluated")).upper()
        y = _text(fig, y - 0.01, f"Decision: {decision}", 13, fontweight="bold")
        for reason in eligibility.get("summary") or eligibility.get("reasons") or []:
            y = _text(fig, y, f"• {reason}", 8.5)
        crit = eligibility.get("criteria") or []
        if crit:
            y = _table(fig, y - 0.008, ["criterion", "state", "reason"],
                       [[str(c.get("id")), str(c.get("state")), str(c.get("reason"))] for c in crit], [0.16, 0.12, 0.6])
        y = _text(fig, y, "Nights (T90 = time with SpO2 < 90 % as % of analysed time; criterion T90 <= 2 %)", 10, fontweight="bold")
        rows = [[str(n["session_id"]), str(n.get("start_utc") or "")[:16],
                 _f(n["report"].get("t90_pct")), f"{n['report'].get('analysed_s', 0) / 3600:.2f}",
                 _f(n["report"].get("analysed_pct"), ".1f"), _f(n["report"].get("nadir_spo2"), ".0f"),
                 _f(n["report"].get("odi4_per_h"), ".1f"), str(n["report"].get("decision")),
                 "yes" if n["report"].get("needs_review") else ""] for n in nights]
        y = _table(fig, y, ["session", "start (UTC)", "T90 %", "analysed h", "analysed %", "nadir", "ODI4/h",
                            "night", "review"], rows or [["(none)"] + [""] * 8],
                   [0.07, 0.17, 0.08, 0.1, 0.1, 0.07, 0.08, 0.09, 0.08])
        y = _text(fig, y, "Spirometry (best FVC of an acceptable, repeatable session)", 10, fontweight="bold")
        srows = [[str(s.get("session_id")), "yes" if s.get("valid") else "no", str(s.get("equation")),
                  _f(s.get("fvc_l")), _f(s.get("predicted_fvc_l")), _f(s.get("fvc_pct_predicted"), ".1f"),
                  _f(s.get("z_fvc")), _f(s.get("lln_fvc_l")), str(s.get("grade_fvc") or "")] for s in spirometry]
        y = _table(fig, y, ["session", "valid", "equation", "FVC L", "pred L", "% pred", "z", "LLN L", "grade"],
                   srows or [["(none)"] + [""] * 8], [0.07, 0.06, 0.2, 0.08, 0.08, 0.08, 0.07, 0.08, 0.08])
        if len(nights) > MAX_PICTURE_NIGHTS:
            y = _text(fig, y, f"Pictures of the first {MAX_PICTURE_NIGHTS} nights follow; the others are in the bundle.", 8)
        _text(fig, 0.12, "Investigator: I have reviewed the data above.\n\n"
                         "Name: ______________________________   Signature: ______________________   Date: ____________", 10)
        pdf.savefig(fig)
        plt.close(fig)
        shown = nights[:MAX_PICTURE_NIGHTS]
        for page in range(0, len(shown), 2):
            fig = plt.figure(figsize=A4_PORTRAIT_IN)
            for k, n in enumerate(shown[page:page + 2]):
                ax = fig.add_axes((0.03, 0.52 - 0.47 * k, 0.94, 0.44))
                ax.imshow(mpimg.imread(io.BytesIO(n["png"]), format="png"))
                ax.set_axis_off()
                ax.set_title(f"Night, session {n['session_id']}", fontsize=10)
            pdf.savefig(fig)
            plt.close(fig)
    return buf.getvalue()

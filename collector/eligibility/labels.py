"""The names people read for each eligibility criterion (msgids: shown translated in report.pdf and on the page).

One table, so the PDF and the page name a criterion the same way; the ids stay the machine's.
"""

from __future__ import annotations

from collector.i18n import N_

CRITERIA: dict[str, str] = {
    "consent": N_("informed consent"), "age": N_("age 18-60"), "als_diagnosis": N_("ALS diagnosis (WFN)"),
    "prior_treatment": N_("prior treatment failed"), "fvc": N_("FVC % predicted"),
    "nocturnal_spo2": N_("nocturnal SpO2 (T90)"), "bmi": N_("BMI"), "contraception": N_("contraception"),
    "cooperation": N_("cooperation"),
}

#: The states of a criterion as people read them.
STATES: dict[str, str] = {"met": N_("met"), "not_met": N_("not met"), "pending": N_("pending"), "needs_review": N_("needs review")}

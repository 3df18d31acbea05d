"""Eligibility configuration: the shipped file equals the design defaults; bad files are refused clearly."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from collector.eligibility.engine import EligibilityConfigError, Thresholds, load_thresholds

REPO_FILE = Path(__file__).resolve().parents[1] / "config" / "eligibility.toml"


def test_shipped_defaults_match_design():
    for th in (load_thresholds(), load_thresholds(REPO_FILE)):
        assert th == Thresholds()
        assert th.fvc_pct_min == 50.0 and th.t90_pct_max == 2.0 and th.bmi_min == Decimal("18.5")
        assert (th.age_min, th.age_max) == (18, 60)
        assert (th.diagnosis_months_min, th.diagnosis_months_max) == (6, 24)
        assert th.equation == "gli-global-2022"
        assert th.accepted_wfn_categories == ("definite", "probable", "probable_lab_supported", "possible")


def test_custom_file(tmp_path):
    p = tmp_path / "e.toml"
    p.write_text('[thresholds]\naccepted_wfn_categories = ["probable", "definite"]\n'
                 '[spirometry]\nequation = "gli-2012"\n')
    th = load_thresholds(p)
    assert th.accepted_wfn_categories == ("definite", "probable") and th.equation == "gli-2012"
    assert th.age_min == 18


@pytest.mark.parametrize("text, words", [
    ("[thresholds]\nfvc_pct_min = 'fifty'\n", "must be a number"),
    ("[thresholds]\nage_min = 18.5\n", "whole number"),
    ("[thresholds]\nage_min = 70\n", "age_min <= age_max"),
    ("[thresholds]\naccepted_wfn_categories = ['suspected']\n", "accepted_wfn_categories"),
    ("[thresholds]\naccepted_wfn_categories = []\n", "accepted_wfn_categories"),
    ("[thresholds]\nfvc_min = 50\n", "unknown setting"),
    ("[spirometry]\nequation = 'nhanes3'\n", "unknown"),
    ("[thresholds\n", "not valid TOML"),
])
def test_bad_files(tmp_path, text, words):
    p = tmp_path / "e.toml"
    p.write_text(text)
    with pytest.raises(EligibilityConfigError, match=words) as exc:
        load_thresholds(p)
    assert "\n" not in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(EligibilityConfigError, match="cannot read"):
        load_thresholds(tmp_path / "nope.toml")

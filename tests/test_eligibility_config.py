"""Eligibility thresholds come from the one collector config: the shipped values equal the design
defaults, each limit is read from the key every other screen reads, bad values are refused clearly."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from collector.config import defaults, load_config
from collector.eligibility.engine import Thresholds, thresholds_from_config
from collector.eligibility.service import thresholds_for_config
from collector.errors import InvalidInput


def test_shipped_defaults_match_design() -> None:
    for th in (thresholds_from_config(defaults()), thresholds_for_config(None)):
        assert th == Thresholds()
        assert th.fvc_pct_min == 50.0 and th.t90_pct_max == 2.0 and th.bmi_min == Decimal("18.5")
        assert (th.age_min, th.age_max) == (18, 60)
        assert (th.diagnosis_months_min, th.diagnosis_months_max) == (6, 24)
        assert th.equation == "gli-global-2022"
        assert th.accepted_wfn_categories == ("definite", "probable", "probable_lab_supported", "possible")


def test_limits_come_from_the_keys_every_screen_reads(tmp_path: Path) -> None:
    p = tmp_path / "site.toml"
    p.write_text('[eligibility]\naccepted_wfn_categories = ["probable", "definite"]\nbmi_min = 20\n'
                 '[spirometry]\nequation = "gli-2012"\nfvc_threshold_pct = 60\n'
                 '[oximetry]\nt90_threshold_pct = 5\n')
    th = thresholds_for_config(load_config(p))
    assert th.accepted_wfn_categories == ("definite", "probable") and th.equation == "gli-2012"
    assert (th.fvc_pct_min, th.t90_pct_max, th.bmi_min) == (60.0, 5.0, Decimal("20.0"))
    assert th.age_min == 18


@pytest.mark.parametrize("text, words", [
    ("[eligibility]\nbmi_min = 'fifty'\n", "[eligibility] bmi_min = \"fifty\" is not allowed"),
    ("[eligibility]\nage_min = 18.5\n", "valid integer"),
    ("[eligibility]\nage_min = 70\n", "age_min must be <= age_max"),
    ("[eligibility]\ndiagnosis_months_min = 30\n", "diagnosis_months_min must be <= diagnosis_months_max"),
    ("[eligibility]\naccepted_wfn_categories = ['suspected']\n", "accepted_wfn_categories[0] = \"suspected\""),
    ("[eligibility]\naccepted_wfn_categories = []\n", "accepted_wfn_categories = []"),
    ("[eligibility]\nfvc_min = 50\n", "fvc_min is not a known key"),
    ("[spirometry]\nequation = 'nhanes3'\n", "allowed: one of 'gli-global-2022', 'gli-2012'"),
    ("[spirometry]\nfvc_threshold_pct = 0\n", "fvc_threshold_pct = 0 is not allowed"),
    ("[oximetry]\nt90_threshold_pct = 101\n", "t90_threshold_pct = 101 is not allowed"),
    ("[thresholds]\nt90_pct_max = 5\n", "t90_pct_max -> [oximetry] t90_threshold_pct"),
    ("[thresholds]\nage_min = 20\n", "age_min -> [eligibility] age_min"),
    ("[eligibility]\nfvc_pct_min = 60\n", "set [spirometry] fvc_threshold_pct instead"),
    ("[thresholds\n", "not valid TOML"),
])
def test_bad_files(tmp_path: Path, text: str, words: str) -> None:
    p = tmp_path / "e.toml"
    p.write_text(text)
    with pytest.raises(InvalidInput) as exc:
        load_config(p)
    assert words in exc.value.message and str(p) in exc.value.message
    assert "\n" not in exc.value.message and exc.value.exit_code == 2


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read config"):
        load_config(tmp_path / "nope.toml")

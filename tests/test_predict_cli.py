"""``collector predict``: the real CLI, its JSON keys, and refusals outside the equations' ranges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.spirometry import gli

KEYS = {"equation", "ethnicity", "sex", "age_years", "height_cm"} | {
    f"{prefix}_{name}{unit}"
    for name, unit in (("fvc", "_l"), ("fev1", "_l"), ("fev1_fvc", ""))
    for prefix in ("predicted", "lln", "uln")
} | {f"{p}_{n}" for n in ("fvc", "fev1", "fev1_fvc") for p in ("z", "percent_predicted")} | {"fvc_l", "fev1_l", "fev1_fvc"}


def run(tmp_path: Path, *args: str):
    return CliRunner().invoke(main, ["--db", str(tmp_path / "c.sqlite"), "predict", *args])


def test_json_keys_and_values_equal_the_equation(tmp_path: Path) -> None:
    r = run(tmp_path, "--sex", "male", "--age", "60", "--height-cm", "178", "--fvc-l", "2.20", "--fev1-l", "1.84", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert set(out) == KEYS
    p = gli.predict("male", 60, 178, fvc_l=2.20, fev1_l=1.84)
    assert out["equation"] == "gli-global-2022" and out["ethnicity"] is None
    assert out["predicted_fvc_l"] == pytest.approx(p.fvc.predicted, abs=1e-12)
    assert out["lln_fvc_l"] == pytest.approx(p.fvc.lln, abs=1e-12)
    assert out["z_fvc"] == pytest.approx(p.fvc.z, abs=1e-12)
    assert out["percent_predicted_fvc"] == pytest.approx(p.fvc.percent_predicted, abs=1e-12)
    assert out["predicted_fev1_l"] == pytest.approx(p.fev1.predicted, abs=1e-12)
    assert out["predicted_fev1_fvc"] == pytest.approx(p.fev1_fvc.predicted, abs=1e-12)
    assert out["fev1_fvc"] == pytest.approx(1.84 / 2.20)
    # The design file's example: about 50.4 % by GLI Global 2022 ...
    assert out["percent_predicted_fvc"] == pytest.approx(50.4, abs=0.05)


def test_gli_2012_with_ethnicity_and_the_configured_default(tmp_path: Path) -> None:
    r = run(tmp_path, "--sex", "male", "--age", "60", "--height-cm", "178", "--fvc-l", "2.20",
            "--equation", "gli-2012", "--ethnicity", "caucasian", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert (out["equation"], out["ethnicity"]) == ("gli-2012", "caucasian")
    assert out["percent_predicted_fvc"] == pytest.approx(47.3, abs=0.05)  # ... and about 47.3 % by GLI-2012 Caucasian
    r = run(tmp_path, "--sex", "female", "--age", "45.5", "--height-cm", "160", "--equation", "gli-2012", "--json")
    out = json.loads(r.output)
    assert out["ethnicity"] == "other"  # config [spirometry] ethnicity_2012
    assert out["predicted_fvc_l"] == pytest.approx(
        gli.predict("female", 45.5, 160, equation="gli-2012", ethnicity="other").fvc.predicted, abs=1e-12)
    assert out["z_fvc"] is None and out["percent_predicted_fvc"] is None and out["fvc_l"] is None


def test_site_config_chooses_the_equation(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[spirometry]\nequation = "gli-2012"\nethnicity_2012 = "north_east_asian"\n')
    r = CliRunner().invoke(main, ["--db", str(tmp_path / "c.sqlite"), "--config", str(site), "predict", "--sex", "male",
                                  "--age", "50", "--height-cm", "170", "--json"])
    out = json.loads(r.output)
    assert (out["equation"], out["ethnicity"]) == ("gli-2012", "north_east_asian")


@pytest.mark.parametrize("args, needle", [
    (("--age", "2.5", "--height-cm", "95"), "age 2.5 y is outside gli-global-2022's range 3-95 y"),
    (("--age", "96", "--height-cm", "170"), "age 96 y is outside"),
    (("--age", "40", "--height-cm", "1.78"), "height 1.78 cm is outside the accepted range"),
    (("--age", "40", "--height-cm", "260"), "height 260 cm is outside"),
    (("--age", "40", "--height-cm", "170", "--fvc-l", "-1"), "not a positive number"),
    (("--age", "40", "--height-cm", "170", "--ethnicity", "caucasian"), "--ethnicity applies to gli-2012 only"),
])
def test_refusals_are_one_line_and_non_zero(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    r = run(tmp_path, "--sex", "female", *args, "--json")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and needle in r.output and r.output.count("\n") == 1
    assert "{" not in r.output, "no number is printed for a refused prediction"


def test_human_output(tmp_path: Path) -> None:
    r = run(tmp_path, "--sex", "female", "--age", "30", "--height-cm", "165", "--fvc-l", "3.5")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "gli-global-2022: female, 30 y, 165 cm"
    assert lines[2].split()[0] == "FVC" and lines[2].split()[4] == "3.50"
    assert len(lines) == 5

"""Configuration files are validated at load: one line naming the file, the key and what is allowed, exit 2.

Through the real CLI (``--config``), for ordinary commands and for ``collector run`` (the daemon), and for the
data-directory ``config.toml`` read when no ``--config`` is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.config import default_config_path, defaults, load_config
from collector.config_schema import Config, validate
from conftest import invoke as cli_invoke

BAD = [
    pytest.param("[oximetry]\nmax_hold_sec = 10.0\n",
                 "[oximetry] max_hold_sec is not a known key (did you mean max_hold_s?)", id="unknown-key"),
    pytest.param('[oximetry]\nmax_hold_s = "ten"\n',
                 '[oximetry] max_hold_s = "ten" is not allowed (input should be a valid number); allowed: a number > 0',
                 id="wrong-type"),
    pytest.param("[api]\nport = 99999\n", "[api] port = 99999 is not allowed", id="port-out-of-range"),
    pytest.param("[api]\nport = 0\n", "allowed: an integer from 1 to 65535", id="port-zero"),
    pytest.param("[thresholds]\nt90_pct_max = 5.0\n", "[thresholds] is no longer read; move t90_pct_max -> [oximetry] t90_threshold_pct",
                 id="old-table"),
    pytest.param("[spirometry]\nfvc_pct_min = 60\n", "set [spirometry] fvc_threshold_pct instead", id="old-fvc-key"),
    pytest.param('[spirometry]\ndefault_equation = "gli-2012"\n', "set [spirometry] equation instead", id="old-equation-key"),
    pytest.param("[oximetry\nmax_hold_s = 10\n", "is not valid TOML", id="bad-toml"),
    pytest.param("[webb]\nsession_max_h = 8\n", "[webb] is not a known table (did you mean web?)", id="unknown-table"),
    pytest.param('[spirometry]\nfvc_grades = ["A", "G"]\n', 'fvc_grades[1] = "G" is not allowed', id="bad-grade"),
    pytest.param('[spirometry]\nsocket_hosts = "10.0.0.5"\n', "[spirometry] socket_hosts = \"10.0.0.5\" is not allowed",
                 id="hosts-not-a-list"),
    pytest.param('[spirometry.models.lab]\nprotocol = "hl7"\nport = { baudrate = 9600, parity = "X" }\n',
                 "[spirometry.models.lab.port] parity", id="model-port"),
    pytest.param('[storage]\nsynchronous = "OFF"\n', "allowed: one of 'FULL', 'NORMAL'", id="choice"),
    pytest.param("[web]\nalert_no_sample_s = -5\n", "[web] alert_no_sample_s = -5 is not allowed", id="negative-duration"),
    pytest.param("[oximetry]\nt90_threshold_pct = 150\n", "allowed: a percentage from 0 to 100", id="percent"),
    pytest.param('[eligibility]\naccepted_wfn_categories = ["suspected"]\n', "accepted_wfn_categories[0]", id="wfn"),
]


def invoke(tmp_path: Path, text: str, *args: str):
    cfg = tmp_path / "site.toml"
    cfg.write_text(text, encoding="utf-8")
    return cfg, cli_invoke(tmp_path / "c.sqlite", *args, config=cfg)


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: config ") and "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("text, words", BAD)
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str, words: str) -> None:
    cfg, r = invoke(tmp_path, text, "subject", "list")
    assert r.exit_code == 2, r.output
    line = one_error_line(r)
    assert str(cfg) in line and words in line, line
    assert not (tmp_path / "c.sqlite").exists()  # refused before anything is opened


@pytest.mark.parametrize("text, words", BAD[:5])
def test_the_daemon_refuses_a_bad_config_too(tmp_path: Path, text: str, words: str) -> None:
    cfg, r = invoke(tmp_path, text, "run", "--port", "0")
    assert r.exit_code == 2, r.output
    assert words in one_error_line(r)


def test_collector_run_process_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[api]\nport = 99999\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COLLECTOR_CONFIG", "COLLECTOR_DB")}
    p = subprocess.run([sys.executable, "-m", "collector", "--db", str(tmp_path / "c.sqlite"), "--config", str(cfg), "run"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2, p.stderr
    assert p.stdout == "" and p.stderr.count("\n") == 1 and p.stderr.startswith(f"error: config {cfg}: [api] port = 99999")


def test_packaged_defaults_validate_and_cover_every_table() -> None:
    raw = tomllib.loads(resources.files("config").joinpath("defaults.toml").read_text(encoding="utf-8"))
    assert validate(raw, source="defaults.toml") == defaults()
    assert set(raw) == set(Config.model_fields)
    for table, model in Config.model_fields.items():
        assert set(raw[table]) == set(model.annotation.model_fields), table  # every key documented there
    assert not resources.files("config").joinpath("eligibility.toml").is_file()


def test_good_site_file_is_merged_and_kept_as_plain_dicts(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text('[oximetry]\nmax_hold_s = 8\n[spirometry]\nfvc_grades = ["a", "B"]\n'
                   '[spirometry.models.lab]\nprotocol = "gdt"\nport = { baudrate = 19200 }\ncodes = { "FVC" = "fvc" }\n')
    c = load_config(cfg)
    assert c["oximetry"]["max_hold_s"] == 8.0 and c["oximetry"]["t90_threshold_pct"] == 2.0
    assert c["spirometry"]["fvc_grades"] == ["A", "B"]
    lab = c["spirometry"]["models"]["lab"]
    assert isinstance(lab, dict) and lab["port"]["baudrate"] == 19200 and lab["codes"] == {"FVC": "fvc"}
    from collector.spirometry.service import configured_models

    assert configured_models(c["spirometry"])["lab"].port.baudrate == 19200


def test_data_directory_config_is_read_without_config_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("COLLECTOR_CONFIG", raising=False)
    site = default_config_path()
    assert site.parent.parent == tmp_path / "data" and site.name == "config.toml"
    assert load_config() == defaults()  # no file there: the packaged defaults
    site.parent.mkdir(parents=True, exist_ok=True)  # the config cache may have made the data directory
    site.write_text("[eligibility]\nbmi_min = 23.0\n")
    db = str(tmp_path / "c.sqlite")
    assert cli_invoke(db, "subject", "add", "SCR-0001").exit_code == 0
    r = cli_invoke(db, "eligibility", "SCR-0001", "--json")
    assert r.exit_code == 0, r.output
    assert '"bmi_min": 23.0' in r.output
    # --config replaces it (the data-directory file is not merged in as well)
    other = tmp_path / "other.toml"
    other.write_text("[site]\nname = 'x'\n")
    r = cli_invoke(db, "eligibility", "SCR-0001", "--json", config=other)
    assert '"bmi_min": 18.5' in r.output
    site.write_text("[oximetry]\nmax_hold_sec = 10\n")
    r = cli_invoke(db, "subject", "list")
    assert r.exit_code == 2 and str(site) in one_error_line(r)

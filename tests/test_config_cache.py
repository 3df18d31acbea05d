"""The validated config is reused while its files are unchanged, and only then.

A client command (``collector status``) must not load pydantic when the config was
validated before; any change to the defaults, the site file or the schema's code is
validated again, and a bad file is refused with its one line every time, cached or not.
Fresh interpreters through the real CLI where it matters (this process has pydantic loaded).
"""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from collector import config_cache
from collector.config import load_config
from conftest import invoke

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("COLLECTOR_CONFIG", raising=False)
    return tmp_path / "data"


def entries() -> list[Path]:
    return sorted(config_cache.cache_dir().glob("*.json"))


def same(a: object, b: object) -> bool:
    """Equal with the same types all the way down (JSON must not turn 2.0 into 2 or a tuple into a list)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    return a == b


def test_schema_sources_list_every_project_module_the_schema_imports() -> None:
    tree = ast.parse((ROOT / "collector" / "config_schema.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                and n.module.split(".")[0] in ("collector", "drivers")}
    listed = {f"{pkg}.{rel[:-3].replace('/', '.')}" for pkg, rel in config_cache.SCHEMA_SOURCES if rel.endswith(".py")}
    assert imported | {"collector.config_schema"} <= listed
    for pkg, rel in config_cache.SCHEMA_SOURCES:
        if pkg in ("collector", "drivers"):
            assert (ROOT / pkg / rel).is_file(), rel
    assert {"pydantic", "pydantic_core"} <= {pkg for pkg, _ in config_cache.SCHEMA_SOURCES}


def test_second_load_is_the_same_config_and_loads_no_pydantic(data_home: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[oximetry]\nmax_hold_s = 8\n[spirometry]\nfvc_grades = ["a", "B"]\n', encoding="utf-8")
    code = ("import json, sys\nfrom collector.config import load_config\nc = load_config(sys.argv[1])\n"
            "print(json.dumps({'pydantic': 'pydantic' in sys.modules, 'config': c}))")
    env = {**os.environ, "XDG_DATA_HOME": str(data_home)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", code, str(site)], env=env, capture_output=True,
                                      text=True, check=True, timeout=120).stdout) for _ in range(2)]
    assert runs[0]["pydantic"] and not runs[1]["pydantic"]
    assert runs[0]["config"] == runs[1]["config"]
    fresh = load_config(site)
    assert same(runs[1]["config"], fresh) and fresh["oximetry"]["max_hold_s"] == 8.0
    assert fresh["spirometry"]["fvc_grades"] == ["A", "B"]
    (entry,) = entries()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert same(load_config(site), fresh)  # now from the cache, in this process


def test_status_against_a_running_daemon_loads_no_pydantic_once_validated(data_home: Path, tmp_path: Path) -> None:
    """The command of the benchmark, as a technician runs it: no daemon needed to see what it imports."""
    env = {**os.environ, "XDG_DATA_HOME": str(data_home), "COLLECTOR_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("", encoding="utf-8")
    code = ("import sys\nfrom collector.cli import main\n"
            "try:\n    main(['--db', sys.argv[1], 'status'])\nexcept SystemExit:\n    pass\n"
            "print('pydantic' in sys.modules)")
    out = [subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.sqlite")], env=env, capture_output=True,
                          text=True, timeout=120).stdout.splitlines()[-1] for _ in range(2)]
    assert out == ["True", "False"]


def test_any_change_of_the_site_file_is_validated_again(data_home: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("[oximetry]\nmax_hold_s = 8\n", encoding="utf-8")
    assert load_config(site)["oximetry"]["max_hold_s"] == 8.0
    st = site.stat()
    site.write_text("[oximetry]\nmax_hold_s = 9\n", encoding="utf-8")  # same size
    os.utime(site, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same modification time: the bytes decide
    assert load_config(site)["oximetry"]["max_hold_s"] == 9.0
    other = tmp_path / "other.toml"
    other.write_text("[oximetry]\nmax_hold_s = 8\n", encoding="utf-8")
    assert load_config(other)["oximetry"]["max_hold_s"] == 8.0
    assert len(entries()) == 3  # one per (path, content)


def test_a_bad_file_is_refused_every_time_even_after_a_good_one(data_home: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    db = tmp_path / "c.sqlite"
    site.write_text("[oximetry]\nmax_hold_s = 10.0\n", encoding="utf-8")
    assert invoke(db, "subject", "list", config=site).exit_code == 0
    site.write_text("[oximetry]\nmax_hold_sec = 10.0\n", encoding="utf-8")
    for _ in range(2):
        r = invoke(db, "subject", "list", config=site)
        assert r.exit_code == 2
        (line,) = r.output.strip().splitlines()
        assert line.startswith(f"error: config {site}: [oximetry] max_hold_sec is not a known key (did you mean max_hold_s?)")
    assert len(entries()) == 1  # the bad file was never stored
    site.write_text("[oximetry]\nmax_hold_s = 10.0\n", encoding="utf-8")
    assert invoke(db, "subject", "list", config=site).exit_code == 0


def test_a_changed_schema_source_is_validated_again(data_home: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake_root = tmp_path / "pkg"
    (fake_root / "fake").mkdir(parents=True)
    (fake_root / "fake" / "__init__.py").write_text("", encoding="utf-8")
    source = fake_root / "fake" / "rules.py"
    source.write_text("A = 1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(fake_root))
    monkeypatch.setattr(config_cache, "SCHEMA_SOURCES", (*config_cache.SCHEMA_SOURCES, ("fake", "rules.py")))
    load_config()
    before = entries()
    source.write_text("A = 22\n", encoding="utf-8")
    load_config()
    assert len(entries()) == len(before) + 1


def test_a_corrupt_or_unwritable_cache_only_costs_a_validation(data_home: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("[oximetry]\nmax_hold_s = 7\n", encoding="utf-8")
    load_config(site)
    (entry,) = entries()
    entry.write_text('{"key": "x", "config": ', encoding="utf-8")
    assert load_config(site)["oximetry"]["max_hold_s"] == 7.0
    assert json.loads(entry.read_text(encoding="utf-8"))["config"]["oximetry"]["max_hold_s"] == 7.0  # rewritten
    entry.write_text(json.dumps({"key": "not this one", "config": {"oximetry": {}}}), encoding="utf-8")
    assert load_config(site)["oximetry"]["max_hold_s"] == 7.0
    folder = config_cache.cache_dir()
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    folder.write_text("not a directory", encoding="utf-8")  # nothing can be stored there, even by root
    assert load_config(site)["oximetry"]["max_hold_s"] == 7.0
    assert folder.read_text(encoding="utf-8") == "not a directory"


def test_only_the_newest_entries_are_kept(data_home: Path, tmp_path: Path) -> None:
    for k in range(config_cache.KEEP + 3):
        site = tmp_path / f"site{k}.toml"
        site.write_text(f"[oximetry]\nmax_hold_s = {k + 1}\n", encoding="utf-8")
        load_config(site)
    assert len(entries()) == config_cache.KEEP

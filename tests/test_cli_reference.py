"""docs/cli.md documents every command and option with its help text, and is up to date.

The reference is generated from the click command tree (collector.cli_reference); the
test regenerates it in memory, so changing a command without regenerating the docs
fails with the one command to run.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.cli_reference import UPDATE_COMMAND, help_text, options, render, walk

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"

# Options still without a help text, in modules other work is changing right now
# (eligibility, the night CLI, operators).  Remove an entry when its help is written.
KNOWN_MISSING_OPTION_HELP: set[tuple[str, str]] = set()


def test_docs_cli_md_is_up_to_date() -> None:
    expected = render(main)
    actual = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    if actual != expected:
        diff = "".join(list(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True),
                                                 "docs/cli.md (committed)", "docs/cli.md (from the code)"))[:80])
        raise AssertionError(f"docs/cli.md does not match the commands; update it from the repository root with:\n\n"
                             f"    {UPDATE_COMMAND}\n\n{diff}")


def test_every_command_has_help() -> None:
    missing = [doc.path for doc in walk(main) if not help_text(doc.command)]
    assert not missing, f"commands without a help text (write a docstring): {missing}"


def test_every_option_has_help() -> None:
    missing = {(doc.path, p.opts[0]) for doc in walk(main) for p in options(doc) if not p.help}
    new = sorted(missing - KNOWN_MISSING_OPTION_HELP)
    assert not new, f"options without help= text: {new}"
    fixed = sorted(KNOWN_MISSING_OPTION_HELP - missing)
    assert not fixed, f"these now have help: remove them from KNOWN_MISSING_OPTION_HELP: {fixed}"


def test_every_command_and_option_appears_in_the_docs_with_its_help() -> None:
    text = DOC.read_text(encoding="utf-8")
    problems = []
    for doc in walk(main):
        if f"## `{doc.path}`" not in text:
            problems.append(f"{doc.path}: no section")
            continue
        section = text.split(f"## `{doc.path}`\n", 1)[1].split("\n## ", 1)[0]
        if help_text(doc.command) not in section:
            problems.append(f"{doc.path}: help text missing")
        for opt in options(doc):
            if not any(f"`{name}" in section or f" {name}" in section for name in opt.opts):
                problems.append(f"{doc.path}: option {opt.opts[0]} missing")
            elif opt.help and opt.help not in section:
                problems.append(f"{doc.path}: help of {opt.opts[0]} missing")
    assert not problems, "docs/cli.md lacks (regenerate: " + UPDATE_COMMAND + "):\n" + "\n".join(problems)


def test_the_reference_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same text on a narrow terminal: nothing is wrapped to the screen width."""
    monkeypatch.setenv("COLUMNS", "40")
    assert render(main) == DOC.read_text(encoding="utf-8")


def test_the_reference_does_not_depend_on_what_ran_before() -> None:
    """click caches each command's help option on first use; running a subcommand on its
    own first (without the group's -h setting) must not change the reference."""
    cmd = main.get_command(click.Context(main), "verify-audit")
    assert cmd is not None
    CliRunner().invoke(cmd, ["--help"])
    assert render(main) == DOC.read_text(encoding="utf-8")

"""The command-line reference (docs/cli.md), generated from the click command tree.

Why generated: commands change often, and a hand-written reference drifts.  The
test suite regenerates this text and compares it with the committed file, so a
command or option that changes without its documentation fails the build with
the one command that updates it::

    python -m collector.cli_reference > docs/cli.md

The output depends only on the commands' declarations (no terminal width, no
environment, no configuration), so it is the same on every machine.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterator

import click

UPDATE_COMMAND = "python -m collector.cli_reference > docs/cli.md"


@dataclass(frozen=True)
class Documented:
    """One command as the reference shows it."""

    path: str  # e.g. "collector session start"
    command: click.Command
    context: click.Context


def _subcommands(group: click.Group, ctx: click.Context) -> list[tuple[str, click.Command]]:
    """A group's visible subcommands in name order."""
    found = ((name, group.get_command(ctx, name)) for name in sorted(group.list_commands(ctx)))
    return [(name, cmd) for name, cmd in found if cmd is not None and not cmd.hidden]


def walk(command: click.Command, name: str = "collector", parent: click.Context | None = None) -> Iterator[Documented]:
    """Every visible command, depth first, subcommands in name order."""
    # The command's own context settings (e.g. -h for help), as click applies them when it runs.
    ctx = click.Context(command, info_name=name, parent=parent, **command.context_settings)
    yield Documented(ctx.command_path, command, ctx)
    if isinstance(command, click.Group):
        for sub_name, sub in _subcommands(command, ctx):
            yield from walk(sub, sub_name, ctx)


def help_text(command: click.Command) -> str:
    """The help a user sees with --help (the docstring up to click's ``\\f`` cut-off)."""
    text = (command.help or command.short_help or "").split("\f", 1)[0]
    lines = [line for line in text.strip().splitlines() if line.strip() != "\b"]  # click's no-rewrap marker
    return "\n".join(lines).strip()


def _usage(doc: Documented) -> str:
    pieces = doc.command.collect_usage_pieces(doc.context)
    return " ".join([doc.path, *pieces])


def options(doc: Documented) -> list[click.Option]:
    """The options the reference lists: visible ones, except the help option every command has.

    The help option is left out on purpose: click builds it once per command and caches it,
    so its names would depend on which context asked first (a test that ran the command
    alone would turn ``-h, --help`` into ``--help``).
    """
    help_option = doc.command.get_help_option(doc.context)
    return [p for p in doc.command.get_params(doc.context)
            if isinstance(p, click.Option) and not p.hidden and p is not help_option]


def _option_lines(doc: Documented) -> list[str]:
    out = []
    for param in options(doc):
        record = param.get_help_record(doc.context)
        if record is None:
            continue
        names, text = record
        out.append(f"- `{names}`" + (f": {text}" if text else ""))
    return out


def render(root: click.Command | None = None) -> str:
    """The whole reference as Markdown."""
    if root is None:
        from collector.cli import main as collector_main  # lazy: importing the CLI loads every feature

        root = collector_main
    parts = [
        "# Command-line reference",
        "",
        "Every `collector` command with its options, generated from the code. Do not edit by hand;",
        f"after changing a command, regenerate it with `{UPDATE_COMMAND}`.",
        "Every command also takes `-h` / `--help`.",
    ]
    for doc in walk(root):
        parts += ["", f"## `{doc.path}`", "", "```", f"Usage: {_usage(doc)}", "```"]
        text = help_text(doc.command)
        if text:
            parts += ["", text]
        options = _option_lines(doc)
        if options:
            parts += ["", "Options:", "", *options]
        if isinstance(doc.command, click.Group):
            subs = _subcommands(doc.command, doc.context)
            if subs:
                parts += ["", "Commands:", ""]
                for sub_name, sub in subs:
                    path = f"{doc.path} {sub_name}"
                    parts.append(f"- [`{path}`](#{_anchor(path)}): {sub.get_short_help_str(limit=200)}")
    return "\n".join(parts) + "\n"


def _anchor(path: str) -> str:
    """GitHub's heading anchor for ``## `collector x y` ``: lower case, spaces to dashes, backticks dropped."""
    return "".join(c for c in path.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()

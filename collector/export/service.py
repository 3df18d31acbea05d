"""CLI wiring for the export feature: ``collector export``, ``collector verify``, ``collector merge``.

The API route lives in :mod:`collector.export.routes`, so the command line never loads the web framework.

``verify`` and ``merge`` never open the collector database: the central team runs
them on bundles alone.
"""

from __future__ import annotations

import sys
from typing import Any
from pathlib import Path

import click

from collector.context import Ctx, no_login, pass_ctx, requires
from collector.users.roles import DATA_MANAGER
from collector.clock import SystemClock
from collector.errors import InvalidInput
from collector.output import emit_json
from collector.storage import repo

VERIFY_FAILED_EXIT = 8


@click.command("export")
@click.argument("subject_id", required=False)
@click.option("--session", "session_id", type=int, help="Only this session (with its subject's decision and audit rows).")
@click.option("--all", "export_all", is_flag=True, help="One bundle per subject, for every subject.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write bundles into.")
@click.option("--zip", "as_zip", is_flag=True, help="Write each bundle as a .zip instead of a folder.")
@click.option("--format", "fmt", type=click.Choice(["bagit", "odm"]), default="bagit", show_default=True,
              help="bagit: a bundle per subject; odm: one CDISC ODM 1.3.2 file for the EDC and a long-format results.csv.")
@click.option("--json", "as_json", is_flag=True, help="Print the bundles written as JSON.")
@pass_ctx
@requires(DATA_MANAGER)
def export_cmd(c: Ctx, subject_id: str | None, session_id: int | None, export_all: bool, out_dir: Path,
               as_zip: bool, fmt: str, as_json: bool) -> None:
    """Write a BagIt bundle per subject for the central study team (no names, no birth dates), or ODM for the EDC."""
    from .bundle import export_subject

    if sum(bool(x) for x in (subject_id, session_id is not None, export_all)) != 1:
        raise InvalidInput("give exactly one of SUBJECT, --session ID or --all (e.g. collector export SCR-0042 --out bundles/)")
    conn = c.conn()
    sessions: list[int] | None = None
    if session_id is not None:
        subjects = [repo.get_session(conn, session_id)["subject_id"]]
        sessions = [session_id]
    elif export_all:
        subjects = [s["id"] for s in repo.list_subjects(conn)]
        if not subjects:
            raise InvalidInput("there are no subjects to export; add one with: collector subject add SCR-0001")
    else:
        subjects = [repo.validate_subject_id(subject_id or "")]
    if fmt == "odm":
        from .odm_export import export_odm

        if as_zip:
            raise InvalidInput("--zip applies to bundles only; leave it out with --format odm")
        o = export_odm(conn, subjects, out_dir, config=c.config, by=c.by, now=SystemClock().now(), session_ids=sessions)
        if as_json:
            emit_json(o.as_dict())
        else:
            click.echo(f"{o.odm}: ODM 1.3.2 for {len(o.subjects)} subject(s); {o.results}: results in long format")
        return
    results = []
    for sid in subjects:
        r = export_subject(conn, sid, out_dir, config=c.config, by=c.by, now=SystemClock().now(),
                           session_ids=sessions, as_zip=as_zip)
        results.append(r.as_dict())
        if not as_json:
            note = f" (open sessions not exported: {r.skipped_open})" if r.skipped_open else ""
            click.echo(f"{r.path}: subject {r.subject_id}, sessions {r.sessions or 'none'}, {len(r.files)} files{note}")
    if as_json:
        emit_json(results)


@click.command("verify")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the verification result as JSON.")
@no_login("reads bundle files only")
def verify_cmd(bundle: Path, as_json: bool) -> None:
    """Check a bundle (folder or zip) without any database; exits non-zero naming each bad file."""
    from .verify import verify_bundle

    result = verify_bundle(bundle)
    if as_json:
        emit_json(result.as_dict())
    else:
        for name, problem in result.problems:
            click.echo(f"{name}: {problem}", err=True)
        for note in result.notes:
            click.echo(note)
        click.echo(f"{result.bundle}: {'OK' if result.ok else 'FAILED'} ({result.files} files, {len(result.problems)} problems)")
    if not result.ok:
        sys.exit(VERIFY_FAILED_EXIT)


@click.command("merge")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="DuckDB file (created or extended).")
@click.option("--json", "as_json", is_flag=True, help="Print what was merged as JSON.")
@no_login("works on bundle files and the study team's DuckDB file, not the database", writes=True)
def merge_cmd(bundles: tuple[Path, ...], out: Path, as_json: bool) -> None:
    """Load verified bundles into one DuckDB file (tables samples, nights, spirometry, criteria, decisions)."""
    from .merge import merge_bundles

    result = merge_bundles(list(bundles), out)
    if as_json:
        emit_json(result)
        return
    added = ", ".join(f"{k} {v}" for k, v in result["rows_added"].items())
    click.echo(f"{out}: merged {result['bundles']} bundle(s); rows added: {added}")
    if result["sessions_replaced"] or result["sessions_older_than_loaded"]:
        click.echo(f"sessions replaced by a newer export: {result['sessions_replaced']}; "
                   f"older exports of loaded sessions left out: {result['sessions_older_than_loaded']}")
    if result["already_merged"]:
        click.echo(f"already merged, skipped: {', '.join(result['already_merged'])}")


COMMANDS = [export_cmd, verify_cmd, merge_cmd]

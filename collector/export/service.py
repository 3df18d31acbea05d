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
from collector.users.roles import ADMIN, DATA_MANAGER
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
@click.option("--lang", type=click.Choice(["zh-CN", "en"]),
              help="Language of report.pdf (default: your own, see collector user language; else [site] language).")
@click.option("--sign", "sign_export", is_flag=True,
              help='Sign each bundle "responsible for this export" (your password is asked again; the signature is in signatures.json).')
@click.option("--password-stdin", is_flag=True, help="With --sign: read your password from stdin.")
@click.option("--json", "as_json", is_flag=True, help="Print the bundles written as JSON.")
@pass_ctx
@requires(DATA_MANAGER)
def export_cmd(c: Ctx, subject_id: str | None, session_id: int | None, export_all: bool, out_dir: Path,
               as_zip: bool, fmt: str, lang: str | None, sign_export: bool, password_stdin: bool, as_json: bool) -> None:
    """Write a BagIt bundle per subject for the central study team (no names, no birth dates), or ODM for the EDC."""
    from collector.users.store import get_language

    from .bundle import export_subject

    if sum(bool(x) for x in (subject_id, session_id is not None, export_all)) != 1:
        raise InvalidInput("give exactly one of SUBJECT, --session ID or --all (e.g. collector export SCR-0042 --out bundles/)")
    conn = c.conn()
    language = lang or get_language(conn, c.by) or c.config["site"]["language"]
    c.config = {**c.config, "site": {**c.config["site"], "language": language}}  # the reader's language, this export only
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

        if as_zip or sign_export:
            raise InvalidInput("--zip and --sign apply to bundles only; leave them out with --format odm "
                               "(the ODM file carries the signatures its bundles hold)")
        o = export_odm(conn, subjects, out_dir, config=c.config, by=c.by, now=SystemClock().now(), session_ids=sessions)
        if as_json:
            emit_json(o.as_dict())
        else:
            click.echo(f"{o.odm}: ODM 1.3.2 for {len(o.subjects)} subject(s); {o.results}: results in long format")
        return
    signer = None
    if sign_export:
        from collector.signatures.prompt import ask_signer

        signer = ask_signer(c, password_stdin, f"responsible for this export of {', '.join(subjects)[:200]}")
    results = []
    for sid in subjects:
        r = export_subject(conn, sid, out_dir, config=c.config, by=c.by, now=SystemClock().now(),
                           session_ids=sessions, as_zip=as_zip, export_signer=signer)
        results.append(r.as_dict())
        if not as_json:
            note = f" (open sessions not exported: {r.skipped_open})" if r.skipped_open else ""
            click.echo(f"{r.path}: subject {r.subject_id}, sessions {r.sessions or 'none'}, {len(r.files)} files{note}")
            if r.signature is not None:
                from collector.signatures.service import manifestation

                click.echo(f"  {manifestation(r.signature)}")
    if as_json:
        emit_json(results)


@click.command("verify")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--site-key", "site_key_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The site's registered public key (PEM, from collector site key show); the bundle must be signed with it.")
@click.option("--trusted-keys", "trusted_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of registered site public keys (*.pem); the bundle must be signed with one of them.")
@click.option("--earlier", "earlier_paths", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="An earlier bundle, signature file or folder of them from the same site: the chains must agree with what it signed.")
@click.option("--json", "as_json", is_flag=True, help="Print the verification result as JSON.")
@no_login("reads bundle files only")
def verify_cmd(bundle: Path, site_key_files: tuple[Path, ...], trusted_dir: Path | None, earlier_paths: tuple[Path, ...],
               as_json: bool) -> None:
    """Check a bundle (folder or zip) without any database; exits non-zero naming each bad file."""
    from . import signature
    from .verify import verify_bundle

    try:
        keys = signature.load_keys(list(site_key_files), trusted_dir) if site_key_files or trusted_dir else None
    except ValueError as exc:
        raise InvalidInput(f"{exc}; give the PEM that collector site key show printed") from None
    earlier = [d for p in earlier_paths for d in signature.read_earlier(p)]
    result = verify_bundle(bundle, site_keys=keys, earlier=earlier)
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


@click.group("site")
def site_group() -> None:
    """This database's site identity and signing key."""


@site_group.group("key")
def site_key_group() -> None:
    """The site's Ed25519 signing key (bundles and uploads are signed with it)."""


@site_key_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the site UUID, fingerprint and public key as JSON.")
@pass_ctx
@requires(DATA_MANAGER, ADMIN)
def site_key_show(c: Ctx, as_json: bool) -> None:
    """Print the site's public key (PEM) and fingerprint to register with the study team (made on first use)."""
    from collector.storage import site_key
    from collector.storage.db import transaction

    now = SystemClock().now()
    with transaction(c.conn()) as conn:
        key = site_key.site_public_key(conn, at=now)
        site = repo.site_uuid(conn)
    if as_json:
        emit_json({"site_uuid": site, "fingerprint": key.fingerprint, "created_utc": key.created_utc, "public_key_pem": key.pem})
        return
    click.echo(f"site {site}\nfingerprint {key.fingerprint} (made {key.created_utc})\n{key.pem}", nl=False)


COMMANDS = [export_cmd, verify_cmd, merge_cmd, site_group]


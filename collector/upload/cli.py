"""``collector upload``: bundle zips to the study's object storage, and the retry of what is pending."""

from __future__ import annotations

from pathlib import Path

import click

from collector.clock import SystemClock
from collector.context import Ctx, pass_ctx, requires
from collector.errors import InvalidInput
from collector.output import emit_json
from collector.users.roles import DATA_MANAGER

from . import store
from .target import parse_s3_url
from .upload import process, queue, raise_for


@click.command("upload")
@click.argument("bundles", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--to", "to", metavar="s3://BUCKET/PREFIX", help="Where the bundles go (under site=<uuid>/subject=<id>/).")
@click.option("--pending", is_flag=True, help="Retry every upload still pending (cut by the network, a crash or a reboot).")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome of each upload as JSON.")
@pass_ctx
@requires(DATA_MANAGER)
def upload_cmd(c: Ctx, bundles: tuple[Path, ...], to: str | None, pending: bool, as_json: bool) -> None:
    """Upload verified bundle zips to S3 (or an S3-compatible store): never overwriting, resumable.

    Credentials come from the standard AWS configuration chain (environment, ~/.aws), never from the
    collector's config; the endpoint from [object_store] endpoint_url or AWS_ENDPOINT_URL.
    """
    if not bundles and not pending:
        raise InvalidInput("give bundle zips and --to s3://BUCKET/PREFIX, or --pending to retry what is queued")
    if bundles and not to:
        raise InvalidInput("say where the bundles go: --to s3://BUCKET/PREFIX (e.g. s3://study-bundles/site-uploads)")
    if to and not bundles:
        raise InvalidInput("--to needs bundle zips to upload (collector upload BUNDLE.zip --to s3://...)")
    conn = c.conn()
    clock = SystemClock()
    queued = queue(conn, list(bundles), parse_s3_url(to), by=c.by, now=clock.now()) if bundles and to else []
    rows = store.pending(conn) if pending else [r for r in queued if r["state"] == "pending"]
    run = process(conn, rows, config=c.config, by=c.by, now=clock.now)
    done = {r["id"] for r in rows}
    for r in queued:  # queued earlier and finished already: say so, do not upload again
        if r["id"] not in done:
            from .upload import Outcome

            state = "already_uploaded" if r["state"] == "uploaded" else "refused"
            run.outcomes.append(Outcome(r["id"], r["bundle"], f"s3://{r['bucket']}/{r['object_key']}", state,
                                        r["last_error"] or "", r["version_id"], r["retain_until_utc"]))
    if as_json:
        emit_json(run.as_dict())
    else:
        for o in run.outcomes:
            click.echo(o.line())
        if pending and not rows:
            click.echo("no pending uploads")
    raise_for(run)


COMMANDS = [upload_cmd]

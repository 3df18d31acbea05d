"""``collector warehouse sync``: the central team's warehouse, fed from the study's bucket."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from collector.clock import SystemClock
from collector.context import Ctx, no_login, pass_ctx
from collector.output import emit_json
from collector.upload.target import parse_s3_url

VERIFY_FAILED_EXIT = 8


@click.group("warehouse")
def warehouse() -> None:
    """The study warehouse: every site's bundles as Parquet, with a DuckDB catalogue."""


@warehouse.command("sync")
@click.argument("source", metavar="s3://BUCKET/PREFIX")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Warehouse folder: Parquet files under parquet/, the catalogue study.duckdb.")
@click.option("--json", "as_json", is_flag=True, help="Print what was loaded and rejected as JSON.")
@pass_ctx
@no_login("reads the bucket and writes the warehouse folder, not the database", writes=True)
def sync_cmd(c: Ctx, source: str, out: Path, as_json: bool) -> None:
    """Load new bundles from the bucket: verified, as Parquet partitioned by site and subject.

    Views samples, nights, spirometry, criteria, decisions and bundles in OUT/study.duckdb read the
    Parquet files; a bundle that fails verification is listed in the table rejected, never loaded.
    Exits 8 when this run rejected a bundle.
    """
    from .sync import sync

    result = sync(parse_s3_url(source), out, config=c.config, now=SystemClock().now())
    if as_json:
        emit_json(result.as_dict())
    else:
        for r in result.rejected:
            click.echo(f"REJECTED {r['object_key']}: {r['problem']}", err=True)
        rows = ", ".join(f"{k} {v}" for k, v in result.rows.items())
        click.echo(f"{result.out}: {len(result.loaded)} new bundle(s) loaded of {result.listed} object(s) listed; rows written: {rows}")
        if result.duplicates:
            click.echo(f"the same bundle under another key, not loaded again: {', '.join(result.duplicates)}")
        if result.ignored:
            click.echo(f"{len(result.ignored)} object(s) not under site=<uuid>/subject=<id>/ ignored")
        if result.rejected_total:
            click.echo(f"{result.rejected_total} object(s) rejected so far: SELECT * FROM rejected in {result.out}/study.duckdb")
    if result.rejected:
        sys.exit(VERIFY_FAILED_EXIT)


COMMANDS = [warehouse]

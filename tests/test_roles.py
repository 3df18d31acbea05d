"""Who may do what: every CLI command and every API route declares its roles, and each role is allowed or refused.

The matrices below are the protocol's division of work.  A command or route added
without a declaration, or with roles that differ from the matrix, fails here: add it
to the matrix with the roles it should have.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import click
import pytest
from click.testing import CliRunner
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.cli import main
from collector.context import access_of
from collector.features import build_daemon
from collector.users.roles import ROLES
from collector.web.auth import ROLES_ATTR
from conftest import fast_config, operator_token

T, I, D, A = "technician", "investigator", "data_manager", "admin"
READS = "reads"  # no login needed, read-only connection
SELF = "self"    # no login needed, and it may write: the login itself, the daemon, the demo, bundle files

CLI_MATRIX: dict[str, Any] = {
    "criteria set": {I, T}, "criteria retract": {I, T}, "criteria show": READS, "eligibility": set(ROLES),
    "demo": SELF, "run": SELF, "login": SELF, "logout": SELF, "merge": SELF,
    "export": {D}, "verify": READS, "import": {T}, "replay": {T}, "report": {T, I},
    "predict": READS, "scan": READS, "status": READS, "verify-audit": READS, "doctor": READS, "service unit": READS,
    "site key show": {D, A},
    "session list": READS, "session samples": READS, "session start": {T}, "session stop": {T},
    "spirometry recompute": {T, I}, "spirometry show": READS, "spirometry import": {T},
    "subject add": {T, I}, "subject list": READS,
    "user add": {A}, "user disable": {A}, "user list": READS, "user password": {A}, "user role": {A}, "user language": set(ROLES),
    "whoami": set(ROLES),
    "upload": {D}, "warehouse sync": SELF,
    "review list": READS, "review resolve": {I}, "sign": {I}, "signatures": READS, "user full-name": {A},
    "alerts ack": {T, I}, "note": {T, I},
}

API_MATRIX: dict[tuple[str, str], set[str]] = {
    ("POST", "/api/v1/subjects"): {T, I},
    ("POST", "/api/v1/sessions"): {T},
    ("POST", "/api/v1/sessions/{session_id}/stop"): {T},
    ("POST", "/api/v1/spirometry/sessions"): {T},
    ("POST", "/api/v1/spirometry/sessions/{session_id}/recompute"): {T, I},
    ("POST", "/api/v1/subjects/{subject_id}/facts"): {I, T},
    ("POST", "/api/v1/exports"): {D},
    ("POST", "/api/v1/alerts/{alert_id}/ack"): {T, I},
    ("POST", "/api/v1/sessions/{session_id}/notes"): {T, I},
    ("POST", "/api/v1/logout"): set(ROLES),
    ("POST", "/api/v1/me/language"): set(ROLES),
    ("POST", "/api/v1/subjects/{subject_id}/reviews"): {I},
    ("POST", "/api/v1/subjects/{subject_id}/signatures"): {I},
}
PUBLIC_ROUTES = {("POST", "/api/v1/login")}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def leaf_commands(group: click.Group = main, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, cmd in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            yield from leaf_commands(cmd, path + " ")
        else:
            yield path, cmd


def test_every_cli_command_declares_its_roles_as_the_matrix_says() -> None:
    found = {}
    for path, cmd in leaf_commands():
        access = access_of(cmd)
        assert access is not None, f"collector {path} declares no roles: put @requires(...) or @no_login(...) on it (collector/context.py) and add it to CLI_MATRIX"
        found[path] = set(access.roles) if access.roles is not None else (SELF if access.writes else READS)
    assert found == CLI_MATRIX


def _dummy_args(cmd: click.Command, tmp: Path) -> list[str]:
    """Values click accepts for the command's required arguments and options (the role check comes first)."""
    out: list[str] = []
    for p in cmd.params:
        if not p.required:
            continue
        t = p.type
        if isinstance(t, click.Choice):
            v = str(t.choices[0])
        elif isinstance(t, (click.types.IntParamType, click.types.FloatParamType)) or getattr(t, "name", "") in ("integer", "float"):
            v = "1"
        elif isinstance(t, click.Path) and t.dir_okay and not t.file_okay:
            v = str(tmp)
        elif isinstance(t, click.Path):
            f = tmp / "dummy.txt"
            f.write_text("x\n")
            v = str(f)
        else:
            v = "SCR-0001"
        values = [v] * (2 if p.nargs == -1 else max(1, p.nargs if isinstance(p.nargs, int) and p.nargs > 0 else 1))
        if isinstance(p, click.Option):
            out += [p.opts[0], *values]
        else:
            out += values
    return out


@pytest.mark.parametrize("path", [p for p, v in CLI_MATRIX.items() if isinstance(v, set) and v != set(ROLES)])
def test_every_state_changing_command_refuses_the_other_roles_and_records_nothing(tmp_path: Path, path: str) -> None:
    import sqlite3

    db = tmp_path / "r.sqlite"
    cmd: click.Command = main
    for part in path.split():
        cmd = cmd.commands[part]  # type: ignore[attr-defined]
    args = [*path.split(), *_dummy_args(cmd, tmp_path)]
    when = access_of(cmd).when  # type: ignore[union-attr]
    if when:
        args.append("--" + when.replace("_", "-"))  # the option that makes it change something
    for role in ROLES:
        env = {"COLLECTOR_TOKEN": operator_token(db, f"op.{role}", role)}
        before = sqlite3.connect(db).execute("SELECT count(*) FROM audit").fetchone()[0]
        r = CliRunner().invoke(main, ["--db", str(db), *args], env=env, input="a password 123\na password 123\n")
        if role in CLI_MATRIX[path]:
            assert r.exit_code != 10 or "this needs" not in r.output, (path, role, r.output)
        else:
            assert r.exit_code == 10 and "this needs" in r.output, (path, role, r.exit_code, r.output)
            assert sqlite3.connect(db).execute("SELECT count(*) FROM audit").fetchone()[0] == before


def test_without_a_login_nothing_changes_and_the_error_says_how_to_log_in(tmp_path: Path) -> None:
    db = tmp_path / "n.sqlite"
    operator_token(db, "someone", "technician")
    r = CliRunner().invoke(main, ["--db", str(db), "subject", "add", "SCR-0001"], env={"COLLECTOR_TOKEN": ""})
    assert r.exit_code == 10 and r.stderr.strip() == "error: not logged in; log in with: collector login NAME"
    r = CliRunner().invoke(main, ["--db", str(db), "subject", "add", "SCR-0001"], env={"COLLECTOR_TOKEN": "forged"})
    assert r.exit_code == 10 and "collector login" in r.stderr


# -- the API ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, TestClient, Path]]:
    db = tmp_path_factory.mktemp("roles") / "api.sqlite"
    daemon = build_daemon(db, config=fast_config())
    app = create_app(daemon, "local-token")
    with TestClient(app) as client:
        yield app, client, db
    daemon.writer.close()


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    for r in routes:
        if isinstance(r, APIRoute):
            yield prefix + r.path, r
        elif hasattr(r, "original_router"):  # FastAPI's included routers
            yield from _routes(r.original_router.routes, prefix + r.include_context.prefix)


def _declared(dependant: Any) -> set[str]:
    out: set[str] = set()
    for sub in dependant.dependencies:
        out |= set(getattr(sub.call, ROLES_ATTR, ()))
        out |= _declared(sub)
    return out


def test_every_state_changing_route_declares_its_roles_as_the_matrix_says(api) -> None:
    app, _, _ = api
    found = {}
    for path, route in _routes(app.routes):
        for method in route.methods & MUTATING:
            if (method, path) in PUBLIC_ROUTES:
                continue
            roles = _declared(route.dependant)
            assert roles, f"{method} {path} declares no roles: add Depends(auth.roles(...)) and add it to API_MATRIX"
            found[(method, path)] = roles
    assert found == API_MATRIX


@pytest.mark.parametrize("method,path", sorted(API_MATRIX))
def test_every_state_changing_route_refuses_the_other_roles(api, method: str, path: str) -> None:
    _, client, db = api
    url = path.replace("{session_id}", "999").replace("{alert_id}", "999").replace("{subject_id}", "SCR-0999")
    for role in ROLES:
        bearer = {"Authorization": f"Bearer {operator_token(db, f'api.{role}', role)}"}
        r = client.request(method, url, json={}, headers=bearer)
        if role in API_MATRIX[(method, path)]:
            assert r.status_code not in (401, 403) and r.status_code < 500, (method, path, role, r.status_code, r.text)
        else:
            assert r.status_code == 403 and "this needs" in r.json()["error"], (method, path, role, r.status_code, r.text)
    r = client.request(method, url, json={})
    assert r.status_code == 401

"""API wiring for the export feature: the web page's export button.

Apart from the CLI commands (collector/export/service.py) so that the command line does
not load pydantic and FastAPI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from collector.storage import repo
from collector.users.roles import DATA_MANAGER


class ExportIn(BaseModel):
    subject_ids: list[str] = Field(min_length=1, max_length=50, description="pseudonymous screening IDs")
    zip: bool = True
    by: str | None = Field(default=None, max_length=100)


def make_router(daemon: Any, auth: Any) -> Any:
    """``POST /exports``: the web page's export button (bundles go to ``[export] dir``, default next to the database)."""
    import asyncio

    from fastapi import APIRouter, Depends

    from .bundle import export_subject

    router = APIRouter(dependencies=[Depends(auth)])

    @router.post("/exports", status_code=201, dependencies=[Depends(auth.roles(DATA_MANAGER))])
    async def make_exports(body: ExportIn) -> dict[str, Any]:
        out_dir = Path(daemon.config.get("export", {}).get("dir") or daemon.db_path.with_name("exports"))
        subjects = [repo.validate_subject_id(s) for s in body.subject_ids]
        from collector.web.auth import current_operator

        by = current_operator.get() or body.by or daemon.operator

        def run() -> list[dict[str, Any]]:
            from collector.users.store import get_language

            conn = daemon.open_reader()
            try:
                language = get_language(conn, by) or daemon.config["site"]["language"]  # report.pdf in the reader's language
                config = {**daemon.config, "site": {**daemon.config["site"], "language": language}}
                return [export_subject(conn, s, out_dir, config=config, by=by, now=daemon.clock.now(), as_zip=body.zip).as_dict()
                        for s in subjects]
            finally:
                conn.close()

        results = await asyncio.to_thread(run)
        return {"directory": str(out_dir), "exports": results, "path": ", ".join(r["path"] for r in results)}

    return router

"""The page's catalogue and the operator's language choice, as API routes.

Before anyone logs in, the login screen reads ``GET /login/language`` (the one route of
this module without a login: it returns the catalogue's strings, nothing recorded on the
ward): the site's ``[site] language``, or the language picked with the switch on the login
screen (the page remembers that pick in the browser).  The browser's Accept-Language is
not used: a ward laptop's system language is often not its technicians' language, and the
site chose its language in the config.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel, Field

from collector.i18n import LANGUAGES, catalogue, check_language
from collector.users.roles import ANY_ROLE


class LanguageIn(BaseModel):
    language: Literal["zh-CN", "en", "site"] = Field(description="zh-CN, en, or site (the site's [site] language)")


class LanguageOut(BaseModel):
    language: str = Field(description="the language the page is shown in for this operator")
    chosen: str | None = Field(description="the operator's own choice; null when the site's language applies")
    site_language: str
    languages: dict[str, str] = Field(description="code -> name as its speakers write it")


class CatalogueOut(BaseModel):
    language: str
    messages: dict[str, str] = Field(description="English msgid -> translation (missing: show the msgid)")


class LoginLanguageOut(CatalogueOut):
    site_language: str
    languages: dict[str, str] = Field(description="code -> name as its speakers write it")


def make_router(daemon: Any, auth: Any) -> Any:
    from fastapi import APIRouter, Depends, Query  # the web framework only when the daemon serves

    from collector.web.auth import current_operator

    router = APIRouter(tags=["languages"])
    site_language = lambda: str(daemon.config["site"]["language"])  # noqa: E731

    def _chosen(name: str | None) -> str | None:
        if name is None:
            return None
        from collector.users.store import get_language

        conn = daemon.open_reader()
        try:
            return get_language(conn, name)
        finally:
            conn.close()

    def _out(chosen: str | None) -> dict[str, Any]:
        return {"language": chosen or site_language(), "chosen": chosen, "site_language": site_language(),
                "languages": LANGUAGES}

    @router.get("/i18n/{language}", response_model=CatalogueOut, dependencies=[Depends(auth)])
    async def page_catalogue(language: Literal["zh-CN", "en"]) -> dict[str, Any]:
        """Every translated string of the page, for ``t()`` in the browser."""
        code = check_language(language)
        return {"language": code, "messages": await asyncio.to_thread(catalogue, code)}

    @router.get("/login/language", response_model=LoginLanguageOut)
    async def login_language(language: Literal["zh-CN", "en"] | None = Query(
            None, description="the pick of the login screen's switch; none: the site's [site] language")) -> dict[str, Any]:
        """The login screen's language and catalogue, before anyone logs in (no ward data: only the strings)."""
        code = check_language(language or site_language())
        return {"language": code, "site_language": site_language(), "languages": LANGUAGES,
                "messages": await asyncio.to_thread(catalogue, code)}

    @router.get("/me/language", response_model=LanguageOut, dependencies=[Depends(auth)])
    async def my_language() -> dict[str, Any]:
        """The language this operator reads (their own choice, else the site's)."""
        return _out(await asyncio.to_thread(_chosen, current_operator.get()))

    @router.post("/me/language", response_model=LanguageOut, dependencies=[Depends(auth.roles(*ANY_ROLE))])
    async def set_my_language(body: LanguageIn) -> dict[str, Any]:
        """Remember this operator's language (audited); ``site`` goes back to the site's."""
        from collector.users.store import set_language

        name = current_operator.get()
        chosen = None if body.language == "site" else body.language
        now = daemon.clock.now()
        if name is not None:
            await daemon.write(lambda c: set_language(c, name, chosen, by=name, at=now))
        return _out(chosen)

    return router

"""A criterion's reason as a message tree, so it reads in the reader's language.

The engine builds every reason as a small tree and stores the English rendering as the
criterion's ``reason`` (the primary value: signed, exported and audited as it always was).
The tree itself travels beside it (``messages`` of an evaluation asked for with
``messages=True``) to the page and report.pdf, which render it with the reader's catalogue.

A node is one of (JSON as it is sent):

- a string: a literal (a figure already formatted by collector.limit_text, a date, a
  session id, a fact name, a note written by another module): shown as it is;
- ``{"id": msgid, "params": {name: node}}``: a msgid of the gettext catalogues with its
  ``{placeholders}`` filled by the rendered nodes;
- ``{"join": separator, "parts": [node, ...]}``: the parts rendered and joined (the
  separator is looked up in the catalogue too, so " and " reads in the reader's language).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping, Union

from collector.i18n import N_, translator

Node = Union[str, dict[str, Any]]

_PLACEHOLDER = re.compile(r"\{([a-z_0-9]+)\}")
AND = N_(" and ")
SEMICOLON = N_("; ")  # a Chinese list of reasons reads with the full-width semicolon


def msg(msgid: str, **params: Node) -> dict[str, Any]:
    """A catalogue message with its parameters (nodes)."""
    return {"id": msgid, "params": params} if params else {"id": msgid}


def join(separator: str, parts: Iterable[Node]) -> dict[str, Any]:
    return {"join": separator, "parts": list(parts)}


def render(node: Node, _: Callable[[str], str]) -> str:
    """The node's text with ``_`` looking msgids up (``str`` itself gives the English)."""
    if isinstance(node, str):
        return node
    if "join" in node:
        return _(str(node["join"])).join(render(p, _) for p in node.get("parts") or [])
    params: Mapping[str, Any] = node.get("params") or {}
    text = _(str(node["id"]))
    return _PLACEHOLDER.sub(lambda m: render(params[m.group(1)], _) if m.group(1) in params else m.group(0), text)


def english(node: Node) -> str:
    """The English text: the criterion's stored ``reason``."""
    return render(node, str)


def localise(node: Node | None, english_text: str, lang: str | None) -> str:
    """``node`` in ``lang``; English (or a result without a tree) gives the stored English text itself."""
    if node is None or (lang or "").lower().startswith("en"):
        return english_text
    return render(node, translator(lang))


def msgids(node: Node) -> list[str]:
    """Every msgid (and separator) a tree uses: what must have a translation."""
    if isinstance(node, str):
        return []
    if "join" in node:
        return [str(node["join"])] + [i for p in node.get("parts") or [] for i in msgids(p)]
    return [str(node["id"])] + [i for p in (node.get("params") or {}).values() for i in msgids(p)]

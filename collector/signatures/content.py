"""The exact bytes a signature covers: RFC 8785 canonical JSON (rfc8785, so any JCS implementation can check it)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785


def canonical(content: Any) -> bytes:
    """Canonical JSON of ``content`` (JSON types only; anything else is first written as JSON text would hold it)."""
    plain = json.loads(json.dumps(content, default=str, allow_nan=False))
    return rfc8785.dumps(plain)


def content_hash(content: Any) -> str:
    return hashlib.sha256(canonical(content)).hexdigest()


def decision_content(decision: dict[str, Any]) -> dict[str, Any]:
    """What an investigator approves in a decision: everything but the moment it was evaluated."""
    return {k: v for k, v in decision.items() if k != "evaluated_at"}

"""The exact bytes a signature covers: RFC 8785 canonical JSON (rfc8785, so any JCS implementation can check it)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import rfc8785


_MAX_SAFE_INT = 2**53 - 1


def _finite(obj: Any) -> Any:
    """JSON has no NaN or infinity (nor exact integers past 2**53): such a figure is hashed as text, the same way every time."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) > _MAX_SAFE_INT:
        return str(obj)  # RFC 8785 numbers are IEEE doubles: a larger integer is hashed as its digits
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def canonical(content: Any) -> bytes:
    """Canonical JSON of ``content`` (JSON types only; anything else is first written as JSON text would hold it)."""
    plain = json.loads(json.dumps(_finite(content), default=str, allow_nan=False))
    return rfc8785.dumps(plain)


def content_hash(content: Any) -> str:
    return hashlib.sha256(canonical(content)).hexdigest()


def decision_content(decision: dict[str, Any]) -> dict[str, Any]:
    """What an investigator approves in a decision: everything but the moment it was evaluated."""
    return {k: v for k, v in decision.items() if k != "evaluated_at"}

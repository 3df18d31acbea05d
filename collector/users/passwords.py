"""Operator names and passwords: rules and salted scrypt hashes.

Passwords are stored only as salted scrypt hashes (memory-hard, in the standard
library), so a copied database does not reveal them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from collector.errors import InvalidInput

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{1,31}")  # used with fullmatch
MIN_PASSWORD_LEN = 8
MAX_PASSWORD_LEN = 200
# scrypt cost of new hashes: [operator] scrypt_n (default 2**14: 16 MiB and ~50 ms per check on a ward
# laptop).  A stored hash carries its own cost, so checking never depends on the setting.
DEFAULT_SCRYPT_N = 2**14
SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 8, 1, 32


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):
        raise InvalidInput(
            f"invalid operator name {name!r}: use 2-32 letters, digits, '.', '_' or '-', starting with a letter (e.g. j.smith)"
        )
    return name


def validate_password(password: str) -> str:
    if not (MIN_PASSWORD_LEN <= len(password or "") <= MAX_PASSWORD_LEN):
        raise InvalidInput(f"the password must be {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} characters long; choose a longer one")
    return password


def hash_password(password: str, *, salt: bytes | None = None, n: int = DEFAULT_SCRYPT_N) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_LEN,
                            maxmem=256 * n * SCRYPT_R)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time comparison; a malformed stored hash never matches."""
    try:
        scheme, n, r, p, salt_b64, hash_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)

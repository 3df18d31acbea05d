"""Who may do what: the four roles and the verified operator a command or request acts as.

One role per operator.  Separation of duties: an admin manages operators, not clinical
records; an investigator decides, a technician measures, a data manager exports.
"""

from __future__ import annotations

from dataclasses import dataclass

TECHNICIAN, INVESTIGATOR, DATA_MANAGER, ADMIN = "technician", "investigator", "data_manager", "admin"
ROLES: tuple[str, ...] = (TECHNICIAN, INVESTIGATOR, DATA_MANAGER, ADMIN)
#: Every logged-in operator, whatever the role (reading, re-evaluating a decision).
ANY_ROLE: frozenset[str] = frozenset(ROLES)


@dataclass(frozen=True)
class Principal:
    """The operator a command or request acts as, verified by password or login token."""

    name: str
    role: str
    via: str  # "password", "cli-token", "web-session", "first-user"


def check_roles(roles: frozenset[str] | set[str] | tuple[str, ...]) -> frozenset[str]:
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise ValueError(f"roles must be a non-empty subset of {ROLES}, not {sorted(roles)}")
    return frozenset(roles)


def describe(roles: frozenset[str]) -> str:
    """``investigator or technician`` for an error message."""
    return " or ".join(r.replace("_", " ") for r in ROLES if r in roles)

"""Every package's tables, in the order a new database gets them: the core ones, then each feature's.

Each package's ``schema.py`` lists its own migrations; this is the one list of packages.
Existing databases know a migration by its name, so reordering this list or moving a
migration to another package never runs it twice.
"""

from __future__ import annotations

from collector.eligibility import schema as eligibility
from collector.oximetry import schema as oximetry
from collector.signatures import schema as signatures
from collector.spirometry import schema as spirometry
from collector.storage import schema as core
from collector.storage.schema import Migration
from collector.upload import schema as upload
from collector.users import schema as users
from collector.ward import schema as ward

PACKAGES = (core, oximetry, eligibility, spirometry, users, upload, signatures, ward)


def migrations() -> list[Migration]:
    """All migrations in the order they are applied to a new database; names are unique."""
    out = [m for package in PACKAGES for m in package.MIGRATIONS]
    names = [m.name for m in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"migration names must be unique (they identify applied migrations): {duplicates}")
    return out

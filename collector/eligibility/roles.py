"""Which facts a role may record: investigators every clinical fact, technicians the measurements."""

from __future__ import annotations

from collector.errors import NotAuthorised
from collector.users.roles import INVESTIGATOR, TECHNICIAN

#: Facts a technician measures at the bedside; every other fact is the investigator's clinical record.
MEASUREMENT_FACTS: frozenset[str] = frozenset({"height_cm", "weight_kg"})


def check_fact_role(fact: str, role: str) -> None:
    if role == INVESTIGATOR or (role == TECHNICIAN and fact in MEASUREMENT_FACTS):
        return
    if role == TECHNICIAN:
        raise NotAuthorised(f"{fact} is a clinical fact an investigator records; technicians record {', '.join(sorted(MEASUREMENT_FACTS))}")
    raise NotAuthorised(f"recording {fact} needs an investigator (or a technician for {', '.join(sorted(MEASUREMENT_FACTS))})")

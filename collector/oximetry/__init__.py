"""Overnight oximetry: one home for the night path.

A byte becomes a reading in ``drivers.protocols`` (sans-I/O codecs), a reading becomes a
row in :mod:`.pipeline` (live figures in :mod:`.live`, one :mod:`.recorder` per bed, run by
:mod:`.service`), rows become a report in :mod:`.store` (``finalise()``, the one path that
ends a night) with the definitions in :mod:`.analysis`, and the report decides through the
eligibility service, which asks :mod:`.store` for night results.  Nights from elsewhere come
in through :mod:`.importers` and :mod:`.replay`; :mod:`.cli` holds the commands.
"""

"""Wellue/Viatom O2Ring and Checkme O2 night file (the ring's own binary ``.dat``), as downloaded over BLE.

The byte layout and its sources are in :mod:`drivers.protocols.o2ring` (one
codec for the file, whether it came over the air or from the ViHealth app's
folder).  Records are 4 s apart from the header's start time, which is the
ring's local clock with no zone: ``--tz``/``--utc-offset`` say where it was
set.  Invalid records (no finger, or SpO2 below the ring's range: the ring
writes the same code) stay in as missing samples.  The header's own
statistics, the firmware's "time under 90 %" above all, are kept in the
source description so the report can be compared with them.
"""

from __future__ import annotations

import math

import numpy as np

from collector.errors import InvalidInput
from drivers.protocols.o2ring import InvalidNightFile, parse_night_file

from . import ImportLimits, ParsedNight, local_iso, local_to_utc, naive_seconds


def parse_o2ring_dat(raw: bytes, *, tz: str | None = None, utc_offset: str | None = None,
                     limits: ImportLimits | None = None, measured_offset_s: float | None = None) -> ParsedNight:
    """Parse a night file (bytes); local times converted with ``tz``/``utc_offset``.

    ``measured_offset_s`` (ring clock minus host UTC, read when the file was
    downloaded) converts instead, drift included: the download path uses it.
    """
    try:
        f = parse_night_file(raw)
    except InvalidNightFile as exc:
        raise InvalidInput(f"the O2Ring night file: {exc}; import the ring's file itself (o2ring-csv for its CSV export)") from None
    n = len(f.records)
    if limits is not None:
        limits.check_rows(n, "the O2Ring night file")
    if n < 2:
        raise InvalidInput(f"the O2Ring night file has {n} record{'s' if n != 1 else ''}; a night needs at least 2")
    local = naive_seconds(f.header.start_local) + np.arange(n, dtype=np.float64) * f.interval_s
    if measured_offset_s is not None:
        utc = local - measured_offset_s
        tzinfo = {"measured_offset_s": round(measured_offset_s, 3),
                  "how": "the ring's clock read over Bluetooth at download, against host UTC"}
    else:
        utc, tzinfo = local_to_utc(local, tz, utc_offset, "O2Ring night file")
    spo2 = np.array([math.nan if r.spo2 is None else float(r.spo2) for r in f.records])
    pulse = np.array([math.nan if r.pulse is None else float(r.pulse) for r in f.records])
    source = {
        "format": "o2ring-dat",
        "device_clock": tzinfo,
        "signature": f"0x{f.header.signature:04x}",
        "record_interval_s": f.interval_s,
        "records": n,
        "deduplicated_2s_records": f.deduplicated,
        "header_start_local": f.header.start_local.isoformat(),
        "firmware": f.header.stats(),
        "header_file_size": f.header.file_size,
        "file_bytes": f.file_bytes,
        "truncated": f.truncated,
        "trailing_bytes": f.trailing_bytes,
        "missing_spo2_samples": int(np.isnan(spo2).sum()),
    }
    return ParsedNight(utc, spo2, pulse, [local_iso(v) for v in local.tolist()], source)

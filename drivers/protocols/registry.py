"""Which oximeter families the collector speaks, and how to build their codecs.

The BLE transport looks a device up here by protocol name (from config) or guesses
it from the service UUIDs the device advertises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from drivers.protocols import berrymed, cts, nonin, o2ring, plx
from drivers.protocols.common import DeviceProfile, OximeterParser

PROFILES: dict[str, DeviceProfile] = {
    # Continuous readings arrive ~1/s on 0x2A5F.  Spot-check (0x2A5E) and RACP (0x2A52)
    # are indications used only for back-filling stored records, and many devices lack
    # them, so they are not in notify_uuids (see plx.PLX_SPOT_CHECK_UUID / RACP_UUID).
    "plx": DeviceProfile(
        protocol="plx",
        service_uuid=plx.PLX_SERVICE_UUID,
        notify_uuids=(plx.PLX_CONTINUOUS_UUID,),
        expected_period_s=1.0,
        # The device's Current Time (when it has the service) maps stored records to host UTC.
        read_uuids=(plx.PLX_FEATURES_UUID, cts.CURRENT_TIME_UUID),
    ),
    "nonin": DeviceProfile(
        protocol="nonin",
        service_uuid=nonin.NONIN_SERVICE_UUID,
        notify_uuids=(nonin.NONIN_CONTINUOUS_UUID,),
        expected_period_s=1.0,
        pair=True,  # Nonin oximeters expect bonding (sites can pre-pair, see the README)
    ),
    # Packets come every ~10-20 ms, but the watchdog period is 1 s: BLE stacks batch
    # notifications, and a silence of several seconds is what signals a dead link.
    "berrymed": DeviceProfile(
        protocol="berrymed",
        service_uuid=berrymed.BERRYMED_SERVICE_UUID,
        notify_uuids=(berrymed.BERRYMED_NOTIFY_UUID,),
        expected_period_s=1.0,
    ),
    # Wellue/Viatom O2Ring and Checkme O2: request/response; the live reading is polled once a second.
    "o2ring": DeviceProfile(
        protocol="o2ring",
        service_uuid=o2ring.O2RING_SERVICE_UUID,
        notify_uuids=(o2ring.O2RING_NOTIFY_UUID,),
        expected_period_s=o2ring.POLL_PERIOD_S,
        poll=(o2ring.O2RING_WRITE_UUID, o2ring.realtime_request(), o2ring.POLL_PERIOD_S),
        night_file_format="o2ring-dat",
    ),
}

_FACTORIES: dict[str, Callable[[], OximeterParser]] = {
    "plx": plx.PlxParser,
    "nonin": nonin.NoninParser,
    "berrymed": berrymed.BerryMedParser,
    "o2ring": o2ring.O2RingParser,
}

# When a device advertises several services, prefer the richer protocol: Nonin's own
# service has a packet counter; PLX has status bits; the BerryMed service UUID is a
# generic "transparent UART" that other vendors reuse for other protocols, so it is
# the weakest evidence.
_GUESS_ORDER = ("nonin", "plx", "o2ring", "berrymed")


class UnknownProtocol(ValueError):
    """The configured oximeter protocol name is not one this collector speaks."""

    def __init__(self, name: str) -> None:
        known = ", ".join(sorted(PROFILES))
        super().__init__(f"unknown oximeter protocol {name!r}; known: {known} (fix the device's protocol in the config)")
        self.name = name


def profile(protocol: str) -> DeviceProfile:
    try:
        return PROFILES[protocol.strip().lower()]
    except KeyError:
        raise UnknownProtocol(protocol) from None


def make_parser(protocol: str) -> OximeterParser:
    """A fresh codec for one connection's worth of data."""
    try:
        return _FACTORIES[protocol.strip().lower()]()
    except KeyError:
        raise UnknownProtocol(protocol) from None


def guess_protocol(service_uuids: Iterable[str]) -> str | None:
    """Protocol name for a device's advertised service UUIDs, or None if none matches.

    Accepts full UUIDs in any case and 16-bit SIG short forms ('1822', '0x1822').
    """
    advertised = {plx.normalize_uuid(u) for u in service_uuids}
    for name in _GUESS_ORDER:
        if PROFILES[name].service_uuid in advertised:
            return name
    return None

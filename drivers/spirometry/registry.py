"""Per-device-model settings for spirometers: protocol, serial port settings, code maps.

No vendor publishes its serial protocol, so every real model needs its local
codes (HL7) or test ids (GDT) entered here or in config after checking the
vendor's interface document.  The ``sim-*`` models describe our simulator.
Config can pass extra models to :func:`make_decoder` as plain dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from drivers.clock import TimeSource
from drivers.serial_transport import PortSettings
from drivers.spirometry.gdt import GdtStreamParser
from drivers.spirometry.hl7 import MllpReceiver
from drivers.spirometry.results import KNOWN_PARAMS, CodeMapEntry, SpiroDecoder


class UnknownSpirometerModel(ValueError):
    """The configured spirometer model is not in the registry or config."""


@dataclass(frozen=True)
class SpirometerModel:
    name: str
    protocol: str  # "hl7" | "gdt"
    port: PortSettings = field(default_factory=PortSettings)
    codes: Mapping[str, str] = field(default_factory=dict)  # device code / test id -> parameter
    gdt_charset: str = "2"  # default when a record lacks field 9206
    gdt_trial_separator: str | None = "_"
    gdt_untrialled_is_summary: bool = True
    hl7_ack_timeout_s: float = 10.0  # how long the device waits for our ACK
    # An HL7 message whose only result OBR has no trial index is the device's session result;
    # False for a device documented to send one message per blow without a trial number.
    hl7_single_obr_is_summary: bool = True
    # GDT free-text result lines (6205/6220/6228): label -> parameter; empty = the default labels.
    gdt_text_labels: Mapping[str, str] = field(default_factory=dict)

    def encoder_codes(self) -> dict[str, str]:
        """parameter -> device code (for the simulator's encoders)."""
        return {p: c for c, p in self.codes.items()}


_SIM_HL7_CODES = {"BEV": "bev", "FET": "fet", "VC": "vc", "QC": "quality", "POSTURE": "posture", "MTYPE": "manoeuvre_type",
                  "TRIAL": "manoeuvre_number", "VTCURVE": "curve_volume_time", "FVCURVE": "curve_flow_volume"}
_SIM_GDT_CODES = {"FVC": "fvc", "FEV1": "fev1", "FEV1FVC": "fev1_fvc", "PEF": "pef", "BEV": "bev", "FET": "fet", "VC": "vc",
                  "QUAL": "quality", "POS": "posture", "MTYPE": "manoeuvre_type"}

MODELS: dict[str, SpirometerModel] = {
    "sim-hl7": SpirometerModel("sim-hl7", "hl7", PortSettings(baudrate=115200), _SIM_HL7_CODES, hl7_ack_timeout_s=5.0),
    "sim-gdt": SpirometerModel("sim-gdt", "gdt", PortSettings(baudrate=9600), _SIM_GDT_CODES, gdt_charset="3"),
    # Generic entries: LOINC-only HL7 and a GDT link with no test-id map yet (fill from the vendor document).
    "generic-hl7": SpirometerModel("generic-hl7", "hl7", PortSettings(baudrate=9600)),
    "generic-gdt": SpirometerModel("generic-gdt", "gdt", PortSettings(baudrate=9600)),
    # Best-test-only GDT exports (8410 test / 8420 value / 8421 unit / 8460 reference / 8470 "Best Test",
    # as Spirotrac-style software writes them): test ids as named in such exports; check the vendor's list.
    "gdt-best-test": SpirometerModel("gdt-best-test", "gdt", PortSettings(baudrate=9600),
                                     {"FVC": "fvc", "FEV1": "fev1", "FEV1/FVC": "fev1_fvc", "FEV1%FVC": "fev1_fvc", "PEF": "pef"},
                                     gdt_charset="3", gdt_trial_separator=None),
}


def model_from_dict(name: str, d: Mapping[str, Any]) -> SpirometerModel:
    """Build a model from config (TOML table); validates the code map targets."""
    codes = dict(d.get("codes", {}))
    bad = sorted((set(codes.values()) | set(dict(d.get("gdt_text_labels", {})).values())) - KNOWN_PARAMS)
    if bad:
        raise UnknownSpirometerModel(f"spirometer model {name}: unknown parameter(s) {', '.join(bad)} in codes; use one of {', '.join(sorted(KNOWN_PARAMS))}")
    port = PortSettings(**d.get("port", {}))
    keep = {k: d[k] for k in ("gdt_charset", "gdt_trial_separator", "gdt_untrialled_is_summary", "hl7_ack_timeout_s",
                                        "hl7_single_obr_is_summary", "gdt_text_labels") if k in d}
    return SpirometerModel(name, d["protocol"], port, codes, **keep)


def get_model(name: str, extra: Mapping[str, SpirometerModel] | None = None) -> SpirometerModel:
    models = {**MODELS, **(extra or {})}
    if name not in models:
        raise UnknownSpirometerModel(f"unknown spirometer model {name!r}; known: {', '.join(sorted(models))} (add it under [spirometry.models] in the config file)")
    return models[name]


def make_decoder(model: SpirometerModel, clock: TimeSource | None = None) -> SpiroDecoder:
    """The sans-I/O decoder for a model: feed it the transport's bytes."""
    codes: dict[str, str | CodeMapEntry] = dict(model.codes)
    if model.protocol == "hl7":
        return MllpReceiver(codes, clock=clock, single_obr_is_summary=model.hl7_single_obr_is_summary)
    if model.protocol == "gdt":
        return GdtStreamParser(codes, model.gdt_trial_separator, model.gdt_charset, model.gdt_untrialled_is_summary,
                               dict(model.gdt_text_labels))
    raise UnknownSpirometerModel(f"spirometer model {model.name}: protocol {model.protocol!r} is not hl7 or gdt")

"""Spirometry results off the line: HL7 v2 ORU^R01 over MLLP and GDT 2.1 codecs (sans-I/O)."""

from drivers.spirometry.gdt import GdtStreamParser, encode_gdt, parse_gdt_file
from drivers.spirometry.hl7 import MllpReceiver, encode_oru, frame, parse_ack
from drivers.spirometry.registry import MODELS, SpirometerModel, get_model, make_decoder
from drivers.spirometry.results import (
    Curve,
    DecodedMessage,
    DecodeError,
    ManoeuvreResult,
    RawField,
    SpiroDecoder,
    SpiroEvent,
    SubjectData,
)

__all__ = [
    "Curve", "DecodedMessage", "DecodeError", "GdtStreamParser", "MODELS", "ManoeuvreResult", "MllpReceiver", "RawField",
    "SpiroDecoder", "SpiroEvent", "SpirometerModel", "SubjectData", "encode_gdt", "encode_oru", "frame", "get_model",
    "make_decoder", "parse_ack", "parse_gdt_file",
]

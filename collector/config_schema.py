"""Schema of the configuration files: every table, key, type and range the collector reads.

Why a schema: a site file decides who is screened in.  A misspelt key (``max_hold_sec``) used to
be ignored silently and a wrong type ended in a traceback, so a site could run with a limit it
never meant.  Each TOML table is a pydantic model with ``extra="forbid"``, strict types and
ranges; :func:`validate` turns the first problem into ONE line naming the file, the key and
what is allowed.  Downstream code keeps using plain nested dicts (``model_dump``), so the
values used can still be recorded verbatim next to each result.

Keys that used to exist twice (``[thresholds]``, ``t90_pct_max``, ``fvc_pct_min``,
``default_equation``) are refused with the name of the one key that replaced them.
"""

from __future__ import annotations

import difflib
import json
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from collector.eligibility.facts import WFN_CATEGORIES
from collector.errors import InvalidInput
from collector.spirometry.codes import ALL_GRADES
from collector.spirometry.codes import QUALITY_FLAGS as STORE_QUALITY_FLAGS
from collector.spirometry.equations import EQUATIONS, ETHNICITIES
from drivers.spirometry.gdt import CHARSETS
from drivers.spirometry.results import KNOWN_PARAMS

GRADES = tuple(sorted(ALL_GRADES))
QUALITY_FLAGS = tuple(sorted(STORE_QUALITY_FLAGS))
GDT_CHARSETS = tuple(CHARSETS)

#: Keys that were removed when each limit got one owner -> the key that replaced them.
RENAMED: dict[str, str] = {
    "t90_pct_max": "[oximetry] t90_threshold_pct",
    "fvc_pct_min": "[spirometry] fvc_threshold_pct",
    "default_equation": "[spirometry] equation",
}
#: The removed ``[thresholds]`` table (config/eligibility.toml): where each of its keys went.
THRESHOLDS_MOVED: dict[str, str] = {**RENAMED, "equation": "[spirometry] equation"}


def _grade(value: str) -> str:
    if value.upper() not in GRADES:
        raise ValueError(f"{value!r} is not an ATS/ERS 2019 grade")
    return value.upper()


def _known_param(value: str) -> str:
    if value not in KNOWN_PARAMS:
        raise ValueError(f"{value!r} is not a known parameter")
    return value


def _nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _stopbits(value: float) -> float:
    if value not in (1, 1.5, 2):
        raise ValueError("one of 1, 1.5, 2")
    return value


Grade = Annotated[str, AfterValidator(_grade)]
StopBits = Annotated[float, AfterValidator(_stopbits)]
Name = Annotated[str, AfterValidator(_nonempty)]
Positive = Annotated[float, Field(gt=0, description="a number > 0")]
GdtId = Annotated[str, Field(pattern=r"^[A-Za-z0-9]{4}$", description="4 letters or digits (a GDT short id)")]
NonNegative = Annotated[float, Field(ge=0, description="a number >= 0")]
Percent = Annotated[float, Field(ge=0, le=100, description="a percentage from 0 to 100")]


class Table(BaseModel):
    """One TOML table: unknown keys and loose types are refused; inf/nan are not numbers here."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _power_of_two(value: int) -> int:
    if value & (value - 1):
        raise ValueError("must be a power of two")
    return value


def _regex(value: str) -> str:
    import re

    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression ({exc})") from None
    return value


class Operator(Table):
    name: Name = Field(description="a non-empty name")
    scrypt_n: Annotated[int, AfterValidator(_power_of_two)] = Field(
        ge=2**10, le=2**20, description="a power of two from 1024 to 1048576 (default 16384)")


class Storage(Table):
    flush_interval_s: Positive
    synchronous: Literal["FULL", "NORMAL"]
    backlog_samples: int = Field(ge=1000, le=10_000_000, description="an integer from 1000 to 10000000")
    memory_samples: int = Field(ge=1000, le=10_000_000, description="an integer from 1000 to 10000000")


class Api(Table):
    host: Name = Field(description="a host name or address")
    port: int = Field(ge=1, le=65535, description="an integer from 1 to 65535")
    max_body_kb: int = Field(ge=1, le=1024 * 1024, description="an integer number of KiB from 1 to 1048576")


class Ble(Table):
    connect_timeout_s: Positive
    scan_timeout_s: Positive
    watchdog_periods: int = Field(ge=1, description="an integer >= 1")
    backoff_s: list[Positive] = Field(min_length=1, description="a non-empty list of numbers > 0")
    connect_attempts: int = Field(ge=1, le=10, description="an integer from 1 to 10")
    max_beds_per_adapter: int = Field(ge=1, le=10, description="an integer from 1 to 10")
    backfill: bool
    backfill_timeout_s: Positive
    backfill_grid_tolerance_s: Annotated[float, Field(ge=0, le=0.5, description="a number of seconds from 0 to 0.5")]
    night_download_timeout_s: Positive


def _timezone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("an IANA time zone name such as Asia/Shanghai") from None
    return value


TimeZone = Annotated[str, AfterValidator(_timezone)]


class Site(Table):
    name: Name = Field(description="a non-empty site name")
    subject_id_pattern: Annotated[str, AfterValidator(_regex)] = Field(description="a regular expression for screening IDs")
    timezone: TimeZone = Field(description="an IANA time zone name such as Asia/Shanghai")
    language: Literal["zh-CN", "en"] = Field(description="zh-CN or en")


def _oid(value: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}", value):
        raise ValueError("an OID: a letter or '_' then letters, digits, '.', '_' or '-' (at most 64)")
    return value


Oid = Annotated[str, AfterValidator(_oid)]
ODM_TESTS = ("t90_pct", "analysed_h", "nadir_spo2", "odi4_per_h", "night_valid", "fvc_l", "fev1_l", "predicted_fvc_l",
             "lln_fvc_l", "fvc_pct_predicted", "z_fvc", "grade_fvc", "spirometry_valid", "decision", "age_years")


class OdmItem(Table):
    oid: Oid
    name: Name = Field(description="the item's name in the study's case report form")
    unit: str = Field(default="", description="a UCUM unit (e.g. %, L, /h, a), or empty for none")
    codelist: str = Field(default="", description="an OID of [export.odm.codelists], or empty")


class OdmCodeList(Table):
    name: Name = Field(description="a non-empty code list name")
    items: dict[str, Name] = Field(min_length=1, description="coded value -> decode text")


class Odm(Table):
    study_oid: Oid
    study_name: Name = Field(description="a non-empty study name")
    protocol_name: Name = Field(description="a non-empty protocol name")
    metadata_version_oid: Oid
    study_event_oid: Oid
    form_oid: Oid
    oximetry_group_oid: Oid
    spirometry_group_oid: Oid
    eligibility_group_oid: Oid
    items: dict[Literal[ODM_TESTS], OdmItem] = Field(  # type: ignore[valid-type]
        description="test -> item table, tests from " + ", ".join(ODM_TESTS))
    codelists: dict[str, OdmCodeList] = Field(description="OID -> code list table")

    @model_validator(mode="after")
    def _known_codelists(self) -> "Odm":
        for test, item in self.items.items():
            if item.codelist and item.codelist not in self.codelists:
                raise ValueError(f"items.{test}.codelist {item.codelist!r} is not in [export.odm.codelists]")
        oids = [i.oid for i in self.items.values()]
        if len(set(oids)) != len(oids):
            raise ValueError("every item needs its own oid")
        return self


class Export(Table):
    dir: str = Field(description="a directory path, or empty for 'exports' next to the database")
    odm: Odm


def _endpoint(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("an http:// or https:// URL, or empty")
    return value


class ObjectStore(Table):
    endpoint_url: Annotated[str, AfterValidator(_endpoint)] = Field(
        description="an http(s):// URL of an S3-compatible server, or empty (AWS_ENDPOINT_URL, else AWS S3)")
    region: str = Field(max_length=64, description="an AWS region name such as eu-central-1, or empty")
    addressing_style: Literal["auto", "path", "virtual"]
    connect_timeout_s: Positive
    read_timeout_s: Positive
    max_attempts: int = Field(ge=1, le=20, description="an integer from 1 to 20")


class Upload(Table):
    retention_mode: Literal["COMPLIANCE", "GOVERNANCE"]
    retention_days: int = Field(ge=1, le=36500, description="a whole number of days from 1 to 36500")


class Web(Table):
    session_idle_min: Positive
    session_max_h: Positive
    stream_interval_s: Positive
    alert_disconnected_s: Positive
    alert_no_sample_s: Positive
    alert_finger_out_s: Positive
    disk_min_free_mb: Positive
    alert_check_s: Annotated[float, Field(ge=0.5, le=60, description="a number of seconds from 0.5 to 60")]
    heartbeat_s: Annotated[float, Field(ge=0.5, le=5, description="a number of seconds from 0.5 to 5")]
    max_streams_per_operator: int = Field(ge=1, le=100, description="an integer from 1 to 100")


class Oximetry(Table):
    max_hold_s: Positive
    t90_threshold_pct: Percent
    min_analysed_h: NonNegative
    min_analysed_pct: Percent
    t90_alert_min_analysed_h: Annotated[float, Field(ge=0, le=24, description="a number of hours from 0 to 24")]
    resume_max_gap_h: NonNegative
    import_max_night_h: Annotated[float, Field(gt=0, le=48, description="a number of hours > 0 and <= 48")]
    import_max_rate_hz: Annotated[float, Field(gt=0, le=100, description="a rate in Hz > 0 and <= 100")]


class PortSettings(Table):
    baudrate: int = Field(default=9600, ge=1, description="an integer >= 1")
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: StopBits = 1
    timeout: Positive = 0.1
    rtscts: bool = False
    xonxoff: bool = False
    dsrdtr: bool = False


class SpirometerModel(Table):
    protocol: Literal["hl7", "gdt"]
    port: PortSettings = Field(default_factory=PortSettings)
    codes: dict[str, Annotated[str, AfterValidator(_known_param)]] = Field(
        default_factory=dict, description="device code -> " + ", ".join(sorted(KNOWN_PARAMS)))
    gdt_charset: Literal[GDT_CHARSETS] = "2"  # type: ignore[valid-type]
    gdt_trial_separator: str = "_"
    gdt_untrialled_is_summary: bool = True
    hl7_ack_timeout_s: Positive = 10.0
    hl7_single_obr_is_summary: bool = True
    gdt_text_labels: dict[str, Annotated[str, AfterValidator(_known_param)]] = Field(
        default_factory=dict, description="GDT text result label (6205/6220/6228) -> parameter")


class DefaultModel(Table):
    hl7: Name = Field(description="a spirometer model name")
    gdt: Name = Field(description="a spirometer model name")


class Spirometry(Table):
    equation: Literal[EQUATIONS]  # type: ignore[valid-type]
    ethnicity_2012: Literal[ETHNICITIES]  # type: ignore[valid-type]
    fvc_threshold_pct: float = Field(gt=0, le=100, description="a percentage of predicted, > 0 and <= 100")
    fvc_grades: list[Grade] = Field(min_length=1, description="a non-empty list of grades from " + ", ".join(GRADES))
    fvc_grades_review: list[Grade] = Field(description="a list of grades from " + ", ".join(GRADES))
    device_summary_acceptable: bool = Field(description="true or false: a session with only the device's own summary decides without review")
    hesitation_fails: bool = Field(description="true or false: hesitation over 2 s fails acceptability (default: a warning)")
    socket_hosts: list[Name] = Field(description="a list of host names or addresses")
    gdt_idle_s: Positive
    gdt_dir: str = Field(description="a folder path, or \"\" for none")
    gdt_dir_roots: list[Name] = Field(description="a list of folder paths")
    gdt_poll_s: Positive
    gdt_settle_s: NonNegative
    gdt_incomplete_s: Positive
    gdt_collector_id: GdtId
    gdt_device_id: GdtId
    gdt_version: Literal["02.10", "03.00"]
    gdt_request_birth_date: bool = Field(description="true or false: the GDT request carries the birth date")
    backoff_initial_s: Positive
    backoff_max_s: Positive
    default_model: DefaultModel
    quality_codes: dict[str, Literal[QUALITY_FLAGS]] = Field(  # type: ignore[valid-type]
        description="device code -> one of " + ", ".join(QUALITY_FLAGS))
    models: dict[str, SpirometerModel] = Field(description="named tables of protocol, port, codes")

    @model_validator(mode="after")
    def _consistent(self) -> "Spirometry":
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


class Eligibility(Table):
    age_min: int = Field(ge=0, le=150, description="whole years from 0 to 150")
    age_max: int = Field(ge=0, le=150, description="whole years from 0 to 150")
    bmi_min: float = Field(gt=0, lt=100, description="kg/m^2, > 0 and < 100")
    diagnosis_months_min: int = Field(ge=0, description="whole calendar months >= 0")
    diagnosis_months_max: int = Field(ge=0, description="whole calendar months >= 0")
    accepted_wfn_categories: list[Literal[WFN_CATEGORIES]] = Field(  # type: ignore[valid-type]
        min_length=1, description="a non-empty list of " + ", ".join(WFN_CATEGORIES))
    crf_decimals: int = Field(ge=0, le=4, description="whole decimals from 0 to 4 (the case report form's precision)")

    @model_validator(mode="after")
    def _ordered(self) -> "Eligibility":
        if self.age_min > self.age_max:
            raise ValueError("age_min must be <= age_max")
        if self.diagnosis_months_min > self.diagnosis_months_max:
            raise ValueError("diagnosis_months_min must be <= diagnosis_months_max")
        return self


class Host(Table):
    disk_nights: int = Field(ge=1, le=1000, description="an integer from 1 to 1000")
    keep_awake: bool = Field(description="true or false")
    log_max_mb: int = Field(ge=1, le=1000, description="an integer from 1 to 1000")
    log_files: int = Field(ge=1, le=100, description="an integer from 1 to 100")


class Config(Table):
    """The whole configuration after the site file is merged over the packaged defaults."""

    operator: Operator
    storage: Storage
    api: Api
    ble: Ble
    site: Site
    export: Export
    object_store: ObjectStore
    upload: Upload
    web: Web
    oximetry: Oximetry
    spirometry: Spirometry
    eligibility: Eligibility
    host: Host


# --------------------------------------------------------------------------- error messages
def _where(loc: tuple[Any, ...]) -> str:
    """``('spirometry', 'models', 'x', 'port', 'baudrate')`` -> ``[spirometry.models.x.port] baudrate``."""
    names = [str(p) for p in loc if not isinstance(p, int)]
    index = "".join(f"[{p}]" for p in loc if isinstance(p, int))
    if not names:
        return "top level"
    if len(names) == 1:
        return f"[{names[0]}]"
    return f"[{'.'.join(names[:-1])}] {names[-1]}{index}"


def _table_model(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model of the table at ``path`` (a named table such as ``models.<name>`` skips its name)."""
    model: Any = Config
    parts = list(path)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        ann = field.annotation
        if typing.get_origin(ann) is dict:
            ann = typing.get_args(ann)[1]
            if not parts:
                return None  # the mapping itself, not one named table
            parts.pop(0)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _allowed(field_loc: tuple[Any, ...]) -> str:
    """What a key accepts, from the field's description or its type."""
    model = _table_model(field_loc[:-1])
    if model is None:
        return ""
    field = model.model_fields.get(str(field_loc[-1]))
    if field is None:
        return ""
    if field.description:
        return field.description
    for meta in field.metadata:
        if getattr(meta, "description", None):
            return str(meta.description)
    ann = field.annotation
    if typing.get_origin(ann) is Literal:
        return "one of " + ", ".join(repr(a) if isinstance(a, str) else str(a) for a in typing.get_args(ann))
    if ann is bool:
        return "true or false"
    return getattr(ann, "__name__", str(ann))


def _toml(value: Any) -> str:
    """A value as it is written in TOML (the user's spelling, not Python's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _value_at(data: Mapping[str, Any], loc: tuple[Any, ...]) -> Any:
    cur: Any = data
    for part in loc:
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            return None
    return cur


def _message(err: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    where = _where(loc)
    if kind == "extra_forbidden":
        model = _table_model(loc[:-1])
        keys = sorted(model.model_fields) if model is not None else []
        near = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        what, scope = ("table", "tables") if len(loc) == 1 else ("key", "keys")
        if len(loc) == 1 and not isinstance(_value_at(data, loc), Mapping):
            # A key written above every table header: name the table that has such a key, if one does.
            near = [f"[{t}] {loc[0]}" for t in keys if str(loc[0]) in (_table_model((t,)) or Table).model_fields]
            where = f"top-level key {loc[0]}"
        hint = f" (did you mean {near[0]}?)" if near else ""
        return f"{where} is not a known {what}{hint}; allowed {scope}: {', '.join(keys)}"
    if kind == "missing":
        return f"{where} is missing; set it to {_allowed(loc) or 'a value'}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where} must be a table, not {_toml(_value_at(data, loc))}"
    if kind == "value_error" and isinstance(_value_at(data, loc), Mapping):
        reason = str(err.get("ctx", {}).get("error") or err["msg"]).removeprefix("Value error, ")
        return f"{where.replace('top level', 'config')}: {reason}"
    value = _value_at(data, loc)
    # A bad list item or code-map entry names the key that holds it.
    field_loc = loc
    while field_loc and (isinstance(field_loc[-1], int) or _table_model(field_loc[:-1]) is None):
        field_loc = field_loc[:-1]
    allowed = _allowed(field_loc) if field_loc else ""
    if kind == "literal_error":
        return f"{where} = {_toml(value)} is not allowed; allowed: {allowed or err['ctx']['expected']}"
    reason = str(err["msg"]).removeprefix("Value error, ")
    reason = reason[0].lower() + reason[1:] if reason else reason
    return f"{where} = {_toml(value)} is not allowed ({reason}); allowed: {allowed or 'see config/defaults.toml'}"


def _renamed(override: Mapping[str, Any]) -> str | None:
    """A one-line pointer to the new key when a site file still uses a removed one."""
    for table, body in override.items():
        if table == "thresholds" and isinstance(body, Mapping):
            moves = [f"{k} -> {THRESHOLDS_MOVED.get(k, f'[eligibility] {k}')}" for k in body] or ["its keys -> [eligibility]"]
            return f"[thresholds] is no longer read; move {'; '.join(moves)}"
        if isinstance(body, Mapping):
            for key in body:
                if key in RENAMED:
                    return f"[{table}] {key} is no longer read; set {RENAMED[key]} instead (one key for every screen)"
    return None


def validate(merged: Mapping[str, Any], *, source: Path | str, override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The validated config as plain nested dicts; InvalidInput with one line naming ``source`` otherwise."""
    old = _renamed(override if override is not None else merged)
    if old is not None:
        raise InvalidInput(f"config {source}: {old}")
    try:
        model = Config.model_validate(merged)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: e["type"] == "missing")  # a misspelt key explains a missing one
        raise InvalidInput(f"config {source}: {_message(errors[0], merged)}") from None
    return model.model_dump()

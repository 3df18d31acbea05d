"""Request and response models of the web routes: they make the OpenAPI description useful."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=2, max_length=32, description="operator name (collector user add NAME)")
    password: str = Field(min_length=1, max_length=200, description="the operator's password, or the local token")


class LoginOut(BaseModel):
    operator: str
    role: str = Field(description="technician, investigator, data_manager or admin")
    csrf_token: str = Field(description="send it as X-CSRF-Token on every state-changing request")
    via: Literal["password"]
    expires_in_s: float = Field(description="seconds until the login expires if the page stays idle")


class MeOut(BaseModel):
    operator: str | None = Field(description="logged-in operator; null for bearer-token calls")
    role: str | None = Field(default=None, description="the operator's role")
    csrf_token: str | None
    expires_in_s: float | None


class OkOut(BaseModel):
    ok: bool = True


class AckIn(BaseModel):
    note: str | None = Field(default=None, max_length=500, description="what was done about it (audit trail)")
    by: str | None = Field(default=None, max_length=100, description="operator (set from the login when using the page)")


class AlertOut(BaseModel):
    id: int
    kind: Literal["device_disconnected", "no_sample", "finger_out", "t90_above_threshold", "disk_almost_full", "storage_backlog", "storage_failed"]
    title: str
    session_id: int | None
    subject_id: str | None
    message: str = Field(description="in English; message_id and params give it in the reader's language")
    message_id: str | None = Field(default=None, description="the English msgid with {placeholders} (a catalogue entry, "
                                   "GET /api/v1/i18n/<lang>); null for alerts raised before message ids")
    params: dict[str, str] = Field(default_factory=dict, description="the placeholders' values; a *_text value is a msgid "
                                   "itself, translated before it is filled in")
    raised_utc: str
    state: Literal["active", "cleared", "acknowledged", "resolved"] = Field(
        description="active: holds, not acknowledged; cleared: no longer holds, not acknowledged; "
                    "acknowledged: seen, still holds; resolved: both (kept in the history)")
    active: bool = Field(description="the condition still holds")
    cleared_utc: str | None = None
    acknowledged_by: str | None
    acknowledged_utc: str | None
    ack_note: str | None = None
    raised_local: str | None = Field(default=None, description="raised, in the site's time zone with the zone")
    cleared_local: str | None = None
    acknowledged_local: str | None = None


class NoteIn(BaseModel):
    text: str = Field(min_length=1, max_length=500, description="what happened, e.g. 'patient got up', 'probe re-taped'")


class NoteOut(BaseModel):
    id: int
    session_id: int
    t_utc_ms: int
    noted_utc: str
    noted_local: str | None = Field(default=None, description="when, in the site's time zone with its offset")
    text: str
    noted_by: str


class BedOut(BaseModel):
    session_id: int
    subject_id: str
    protocol: str
    device: str = Field(description="address or name the session was started with")
    device_name: str | None
    link_state: str = Field(description="searching, connecting, connected, lost, reconnecting, closed")
    spo2_pct: float | None = Field(description="current SpO2 (null when the last reading is not valid)")
    pulse_bpm: float | None
    finger_out: bool
    samples: int
    started_utc: str
    last_sample_utc: str | None
    seconds_since_last_sample: float | None
    t90_pct: float | None = Field(description="provisional live T90 % of analysed time")
    t90_threshold_pct: float
    above_threshold: bool
    analysed_s: float
    recording_s: float
    nadir_spo2: float | None


class SpirometryOpenOut(BaseModel):
    session_id: int
    subject_id: str
    protocol: str
    model: str | None
    link_state: str = Field(description="connected or reconnecting (the port)")
    started_utc: str
    started_local: str = Field(description="started, in the site's time zone with the zone")
    manoeuvres: int = Field(description="manoeuvres received so far")
    refused: int = Field(description="messages refused (not stored as results)")
    valid: bool | None = Field(description="the session's result so far is valid (null: no result yet)")
    fvc_pct_predicted: float | None
    grade_fvc: str | None


class StatusOut(BaseModel):
    now_utc: str
    now_local: str = Field(description="now in the site's time zone ([site] timezone), with the zone")
    operator: str | None
    beds: list[BedOut]
    spirometry: list[SpirometryOpenOut] = Field(default_factory=list, description="open spirometry sessions (stop them with POST /sessions/{id}/stop)")
    alerts: list[AlertOut]
    disk_free_mb: float | None
    writer_failed: str | None


class TrendPoint(BaseModel):
    t_ms: int = Field(description="bucket centre, UTC epoch milliseconds")
    spo2_mean: float | None
    spo2_min: float | None
    pulse_mean: float | None


class TrendOut(BaseModel):
    session_id: int
    minutes: int | None = Field(description="window length; null = the whole recording")
    from_utc: str
    to_utc: str
    from_ms: int
    to_ms: int
    bucket_s: int
    points: list[TrendPoint]


class SessionSummary(BaseModel):
    id: int
    subject_id: str
    kind: str
    state: str
    origin: str
    started_utc: str
    stopped_utc: str | None
    device_name: str | None
    device_protocol: str | None
    t90_pct: float | None = Field(description="T90 % of the stored night report, when there is one")
    night_valid: bool | None
    meets_t90_criterion: bool | None
    borderline: bool | None


class SubjectOut(BaseModel):
    id: str
    created_utc: str
    created_by: str
    open_sessions: list[int]


class FactSpecOut(BaseModel):
    name: str
    kind: str
    help: str
    choices: list[str]
    unit: str
    min_value: float | None
    max_value: float | None


class WebConfigOut(BaseModel):
    t90_threshold_pct: float
    alert_settings: dict[str, float]
    stream_interval_s: float
    heartbeat_s: float = Field(description="the live stream's heartbeat period; the page shows NO DATA after missing two")
    site_timezone: str
    facts: list[FactSpecOut]
    protocols: list[str]
    criteria_labels: dict[str, str] = Field(default_factory=dict, description="criterion id -> its name as an English "
                                            "msgid (the page shows it translated)")


class SerialPortOut(BaseModel):
    device: str
    description: str | None


class ReportOut(BaseModel):
    session_id: int
    report: dict[str, Any] = Field(description="the newest stored night report (collector/oximetry/analysis/report.py)")


class GapOut(BaseModel):
    start_local: str = Field(description="start, in the site's time zone with the zone")
    end_local: str | None = Field(description="null while the gap is still open")
    duration_s: float
    cause: str
    open: bool


class GapsOut(BaseModel):
    count: int
    total_s: float
    listed: list[GapOut] = Field(description="the first 50 gaps, oldest first")


class HistorySession(BaseModel):
    id: int
    state: str
    origin: str
    started_utc: str
    stopped_utc: str | None
    started_local: str
    stopped_local: str | None
    duration_s: float
    device_name: str | None
    review_state: Literal["not_needed", "needs_review", "resolved", "reopened"] = Field(
        description="review of the criterion the session feeds (nocturnal_spo2 for nights, fvc for spirometry)")


class HistoryNight(HistorySession):
    t90_pct: float | None = Field(description="T90 % of the newest stored night report (null: none yet)")
    night_valid: bool | None
    meets_t90_criterion: bool | None
    borderline: bool | None
    gaps: GapsOut


class HistorySpirometry(HistorySession):
    valid: bool | None
    fvc_l: float | None
    fvc_pct_predicted: float | None
    grade_fvc: str | None
    equation: str | None


class HistoryReview(BaseModel):
    criterion: str
    status: str = Field(description="open, resolved or reopened")
    state: str
    decision: str | None
    by: str | None
    at: str | None = Field(description="when resolved, in the site's time zone with the zone")


class HistoryOut(BaseModel):
    subject_id: str
    nights: list[HistoryNight] = Field(description="newest first")
    spirometry: list[HistorySpirometry] = Field(description="newest first")
    reviews: list[HistoryReview]

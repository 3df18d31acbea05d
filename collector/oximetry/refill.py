"""Applying a device-memory download to a night: one path for the live recorder and for replay.

Why shared: a replayed capture must store the rows the live session stored, back-filled
ones included, and raise the same events; so both hand the download to :func:`submit`
(store the records, record the back-fill, read the night back) and the result to
:func:`rebuild_live` (the live figures as if the records had arrived live).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from concurrent.futures import Future
from typing import Any

from collector.oximetry import store
from collector.oximetry.analysis.live import EVENT_DEEP_DESAT, EVENT_T90_EXCEEDED, LiveBurden
from collector.oximetry.analysis.report import AnalysisConfig, NightData
from collector.oximetry.backfill import FitInput
from collector.oximetry.pipeline import ReadingPipeline
from drivers.protocols.common import OximeterReading


def submit(pipeline: ReadingPipeline, gap: Future[int], records: list[OximeterReading], *, clock_offset_ms: int,
           reconnect_t: float, session_start_t: float, interval_s: float, tolerance_ms: int,
           failure: str | None = None) -> Future[tuple[dict[str, Any], NightData]]:
    """Queue the back-fill of the open gap ``gap`` behind every sample stored so far."""
    pipeline.hand_over()  # every live sample before the gap is stored first
    anchor = pipeline.last_sample_t
    sid = pipeline.session_id
    inp = FitInput(
        session_id=sid, gap_start_ms=0, anchor_ms=None if anchor is None else int(round(anchor * 1000)),
        reconnect_ms=int(round(reconnect_t * 1000)), session_start_ms=int(round(session_start_t * 1000)),
        clock_offset_ms=clock_offset_ms, interval_ms=int(round(interval_s * 1000)), tolerance_ms=tolerance_ms,
    )

    def write(conn: sqlite3.Connection) -> tuple[dict[str, Any], NightData]:
        gap_id = gap.result()
        gap_start = store.gap_start_ms(conn, sid, gap_id)
        summ = store.backfill_gap(conn, sid, gap_id, records, dataclasses.replace(inp, gap_start_ms=gap_start),
                                  at=reconnect_t, failure=failure)
        return summ, store.load_night(conn, sid)

    return pipeline.writer.submit(write)


def rebuild_live(pipeline: ReadingPipeline, summary: dict[str, Any], data: NightData, config: AnalysisConfig) -> Any:
    """Live figures from the stored night after a back-fill; emits what the records raised. Returns the new engine."""
    if not summary["fitted"]:
        return pipeline.live
    anchor_ms = summary.get("anchor_ms")
    old = pipeline.live
    live, events = LiveBurden.replay(data, config)
    pipeline.live = live
    pipeline.samples += summary["fitted"]
    if data.t_s.size and (pipeline.last_sample_t is None or data.t_s[-1] > pipeline.last_sample_t):
        pipeline.last_sample_t = float(data.t_s[-1])
    was_above = old is not None and old.snapshot.above_threshold
    for ev in events:  # what the back-filled records raise, as if they had arrived live
        if anchor_ms is not None and ev.t_s * 1000 <= anchor_ms:
            continue
        if ev.kind == EVENT_DEEP_DESAT or (ev.kind == EVENT_T90_EXCEEDED and not was_above):
            pipeline.emit(ev)
    return live

"""Live burden per open night: builds the engine from config and shows its snapshot."""

from __future__ import annotations

from typing import Any

from collector.oximetry.analysis.live import LiveBurden
from collector.oximetry.analysis.report import AnalysisConfig


def analysis_config(cfg: dict[str, Any]) -> AnalysisConfig:
    ox = cfg["oximetry"]
    return AnalysisConfig(
        max_hold_s=float(ox["max_hold_s"]),
        threshold_pct=float(ox["t90_threshold_pct"]),
        min_analysed_h=float(ox["min_analysed_h"]),
        min_analysed_pct=float(ox["min_analysed_pct"]),
    )


def alert_min_analysed_ms(cfg: dict[str, Any]) -> int:
    """The live T90 alert waits for this much analysed time (``[oximetry] t90_alert_min_analysed_h``)."""
    return int(round(float(cfg["oximetry"]["t90_alert_min_analysed_h"]) * 3_600_000))


def make_live(cfg: dict[str, Any]) -> LiveBurden:
    return LiveBurden(analysis_config(cfg), alert_min_analysed_ms=alert_min_analysed_ms(cfg))


def snapshot_dict(live: LiveBurden) -> dict[str, Any]:
    s = live.snapshot
    return {
        "provisional": True,
        "t90_s": s.numerator_s,
        "analysed_s": s.analysed_s,
        "recording_s": s.recording_s,
        "t90_pct": s.t90_pct,
        "t90_pct_inclusive": s.t90_pct_inclusive,
        "current_spo2": s.current_spo2,
        "nadir_spo2": s.nadir_spo2,
        "samples": s.n_samples,
        "above_threshold": s.above_threshold,
    }

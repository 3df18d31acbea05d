"""Live (provisional) desaturation burden, O(1) per sample.

Same definitions as :mod:`collector.oximetry.analysis.report` (zero-order hold on an
integer-millisecond grid, usable-sample rule, exact threshold comparison).  A
sample's hold is only known when the next sample arrives, so until then the
latest sample holds 0 s, exactly like the last sample of a finished night.
Consequence: after any prefix of samples and interrupts, the snapshot equals
``night_report`` of that prefix, bit for bit.

Order contract (what makes live == final): samples and interrupts are given in
host-time order, and an interrupt at time ``b`` is given before any sample later
than ``b``.  A sample or interrupt earlier than the latest sample raises
:class:`OutOfOrderError` instead of silently diverging from the final report.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

from drivers.protocols.common import SPO2_MAX_PCT

from .report import (
    AnalysisConfig,
    AnalysisInputError,
    NightData,
    pct,
    spo2_usable,
    to_ms,
)

EVENT_T90_EXCEEDED = "t90_threshold_exceeded"
EVENT_DEEP_DESAT = "suspected_deep_desaturation"
DEEP_DESAT_BELOW = 50.0  # a usable reading below this counts as below 90 % and is reviewed
ALERT_MIN_ANALYSED_MS = 3_600_000  # packaged default; the site value is [oximetry] t90_alert_min_analysed_h


class OutOfOrderError(AnalysisInputError):
    """A sample/interrupt older than the latest sample reached the live engine."""


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    t_s: float  # host time of the sample that triggered it
    t90_pct: float
    analysed_s: float
    threshold_pct: float
    min_analysed_s: float = ALERT_MIN_ANALYSED_MS / 1000.0  # the alert's minimum analysed time used


@dataclass(frozen=True, slots=True)
class DeepDesatEvent:
    """A device-valid reading below 50 %: counted as below 90 %, raised once per run for review."""

    kind: str
    t_s: float
    spo2_pct: float


@dataclass(frozen=True, slots=True)
class LiveSnapshot:
    """Provisional figures; equal to the final report for the same samples."""

    numerator_ms: int
    numerator_inclusive_ms: int
    analysed_ms: int
    recording_ms: int
    t90_pct: float | None
    t90_pct_inclusive: float | None
    current_spo2: float | None  # latest sample if usable, else None
    nadir_spo2: float | None
    n_samples: int
    above_threshold: bool  # alert currently raised (re-arms when back <= threshold)
    provisional: bool = True

    @property
    def numerator_s(self) -> float:
        return self.numerator_ms / 1000.0

    @property
    def analysed_s(self) -> float:
        return self.analysed_ms / 1000.0

    @property
    def recording_s(self) -> float:
        return self.recording_ms / 1000.0


class LiveBurden:
    """Running T90 numerator/denominator with the threshold alert."""

    __slots__ = (
        "_cfg", "_max_hold", "_thr", "_first", "_last", "_last_usable", "_last_below",
        "_last_below_incl", "_last_spo2", "_num", "_num_incl", "_analysed", "_nadir",
        "_n", "_cuts", "_alerted", "_alert_min_ms", "_thr_scale", "_thr_num", "_in_deep",
    )

    def __init__(self, config: AnalysisConfig = AnalysisConfig(), *, alert_min_analysed_ms: int = ALERT_MIN_ANALYSED_MS) -> None:
        self._cfg = config
        self._alert_min_ms = int(alert_min_analysed_ms)
        self._max_hold = config.max_hold_ms
        self._thr = config.threshold
        self._thr_scale = 100 * self._thr.denominator
        self._thr_num = self._thr.numerator
        self._first: int | None = None
        self._last: int | None = None
        self._last_usable = False
        self._last_below = False
        self._last_below_incl = False
        self._last_spo2: float | None = None
        self._num = 0
        self._num_incl = 0
        self._analysed = 0
        self._nadir: float | None = None
        self._n = 0
        self._cuts: list[int] = []  # pending break starts >= latest sample time (sorted)
        self._alerted = False
        self._in_deep = False

    def interrupt(self, t_s: float, cause: str = "interrupted") -> None:
        """A break starts at ``t_s``: the latest sample's hold ends there at the latest."""
        b = to_ms(t_s)
        if self._last is not None and b < self._last:
            raise OutOfOrderError(
                f"interrupt at {t_s} is earlier than the latest sample; pass breaks in time order"
            )
        bisect.insort(self._cuts, b)

    def add(self, t_s: float, spo2: float | None, valid: bool) -> list[Event | DeepDesatEvent]:
        """Account one sample; returns the alert events it caused (usually none)."""
        t = to_ms(t_s)
        last = self._last
        if last is None:
            self._first = t
        else:
            if t < last:
                raise OutOfOrderError(
                    f"sample at {t_s} is earlier than the latest sample; feed samples in time order"
                )
            end = min(t, last + self._max_hold)
            if self._cuts:
                end = min(end, self._cuts[0])  # all pending cuts are >= last
            if self._last_usable:
                hold = end - last
                self._analysed += hold
                if self._last_below:
                    self._num += hold
                if self._last_below_incl:
                    self._num_incl += hold
        cuts = self._cuts
        while cuts and cuts[0] < t:  # amortised O(1): each break is dropped once
            cuts.pop(0)
        usable = spo2_usable(spo2, valid)
        self._last = t
        self._n += 1
        self._last_usable = usable
        if usable:
            v = float(spo2)  # type: ignore[arg-type]
            self._last_spo2 = v
            self._last_below = v < 90.0
            self._last_below_incl = v <= 90.0
            if self._nadir is None or v < self._nadir:
                self._nadir = v
            if v < DEEP_DESAT_BELOW:
                if not self._in_deep:
                    self._in_deep = True
                    return [DeepDesatEvent(EVENT_DEEP_DESAT, float(t_s), v), *self._check(t_s)]
            else:
                self._in_deep = False
        else:
            self._last_spo2 = None
            self._last_below = self._last_below_incl = False
        return self._check(t_s)

    def add_many(
        self, t_s: Sequence[float], spo2: Sequence[float | None], valid: Sequence[bool | int]
    ) -> tuple[list[tuple[int, Event | DeepDesatEvent]], list[tuple[int, OutOfOrderError]]]:
        """Account many samples in time order, as :meth:`add` one after another would.

        Returns the alert events with the index of the sample that caused each, and the samples
        refused as out of order (index, error): a refused sample changes nothing, as when
        :meth:`add` raises.  One loop over local variables: the live figures cost well under a
        microsecond per sample this way (the batched ingest path); a test holds it equal to :meth:`add`.
        """
        events: list[tuple[int, Event | DeepDesatEvent]] = []
        rejected: list[tuple[int, OutOfOrderError]] = []
        first, last = self._first, self._last
        usable_prev, below, below_incl = self._last_usable, self._last_below, self._last_below_incl
        num, num_incl, analysed = self._num, self._num_incl, self._analysed
        nadir, n, last_spo2 = self._nadir, self._n, self._last_spo2
        alerted, in_deep = self._alerted, self._in_deep
        max_hold, cuts = self._max_hold, self._cuts
        thr_scale, thr_num, alert_min = self._thr_scale, self._thr_num, self._alert_min_ms
        for i, (ts, s, v) in enumerate(zip(t_s, spo2, valid)):
            t = round(float(ts) * 1000.0)  # to_ms, inline
            if last is None:
                first = t
            else:
                if t < last:
                    rejected.append((i, OutOfOrderError(
                        f"sample at {ts} is earlier than the latest sample; feed samples in time order")))
                    continue
                if usable_prev:
                    end = last + max_hold
                    if t < end:
                        end = t
                    if cuts and cuts[0] < end:
                        end = cuts[0]  # all pending cuts are >= last
                    hold = end - last
                    analysed += hold
                    if below:
                        num += hold
                    if below_incl:
                        num_incl += hold
            while cuts and cuts[0] < t:  # amortised O(1): each break is dropped once
                cuts.pop(0)
            last = t
            n += 1
            # report.spo2_usable, inline: device-valid and 0 < spo2 <= 100
            usable_prev = bool(v) and s is not None and 0 < s <= SPO2_MAX_PCT
            if usable_prev:
                x = float(s)  # type: ignore[arg-type]
                last_spo2 = x
                below = x < 90.0
                below_incl = x <= 90.0
                if nadir is None or x < nadir:
                    nadir = x
                if x < DEEP_DESAT_BELOW:
                    if not in_deep:
                        in_deep = True
                        events.append((i, DeepDesatEvent(EVENT_DEEP_DESAT, float(ts), x)))
                else:
                    in_deep = False
            else:
                last_spo2 = None
                below = below_incl = False
            # The alert: same exact comparison as report.exceeds, with the threshold's integers unpacked once.
            if analysed > 0:
                if num * thr_scale <= thr_num * analysed:
                    alerted = False
                elif not alerted and analysed >= alert_min:
                    alerted = True
                    events.append((i, Event(EVENT_T90_EXCEEDED, float(ts), pct(num, analysed) or 0.0, analysed / 1000.0,
                                            self._cfg.threshold_pct, alert_min / 1000.0)))
        self._first, self._last = first, last
        self._last_usable, self._last_below, self._last_below_incl = usable_prev, below, below_incl
        self._num, self._num_incl, self._analysed = num, num_incl, analysed
        self._nadir, self._n, self._last_spo2 = nadir, n, last_spo2
        self._alerted, self._in_deep = alerted, in_deep
        return events, rejected

    def _check(self, t_s: float) -> list[Event | DeepDesatEvent]:
        a = self._analysed
        if a <= 0:
            return []
        # Same exact comparison as report.exceeds, with the threshold's integers unpacked once.
        if self._num * self._thr_scale <= self._thr_num * a:
            self._alerted = False
            return []
        if self._alerted or a < self._alert_min_ms:
            return []
        self._alerted = True
        return [Event(EVENT_T90_EXCEEDED, float(t_s), pct(self._num, a) or 0.0, a / 1000.0, self._cfg.threshold_pct,
                      self._alert_min_ms / 1000.0)]

    @property
    def snapshot(self) -> LiveSnapshot:
        rec = 0 if self._first is None else self._last - self._first  # type: ignore[operator]
        return LiveSnapshot(
            numerator_ms=self._num,
            numerator_inclusive_ms=self._num_incl,
            analysed_ms=self._analysed,
            recording_ms=rec,
            t90_pct=pct(self._num, self._analysed),
            t90_pct_inclusive=pct(self._num_incl, self._analysed),
            current_spo2=self._last_spo2,
            nadir_spo2=self._nadir,
            n_samples=self._n,
            above_threshold=self._alerted,
        )

    @classmethod
    def replay(cls, data: NightData, config: AnalysisConfig = AnalysisConfig(), *,
               alert_min_analysed_ms: int = ALERT_MIN_ANALYSED_MS) -> tuple["LiveBurden", list[Event | DeepDesatEvent]]:
        """Rebuild the live state from stored samples and breaks (e.g. after a daemon restart).

        Breaks are delivered before samples at the same millisecond, which gives the
        same holds as :func:`~collector.oximetry.analysis.report.night_report`.
        """
        live = cls(config, alert_min_analysed_ms=alert_min_analysed_ms)
        events: list[Event | DeepDesatEvent] = []
        starts = sorted(to_ms(b[0]) for b in data.breaks)
        k = 0
        for t, s, v in zip(data.t_s.tolist(), data.spo2.tolist(), data.valid.tolist()):
            tm = to_ms(t)
            while k < len(starts) and starts[k] <= tm:
                if live._last is None or starts[k] >= live._last:
                    live._cuts.append(starts[k])  # already sorted
                k += 1
            events += live.add(t, s, v)
        for b in starts[k:]:
            live._cuts.append(b)
        return live, events

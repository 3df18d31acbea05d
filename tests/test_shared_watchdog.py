"""One data watchdog for every bed, and hand-overs only while rows wait.

Through the real daemon on a virtual clock: each silent bed is reset by the shared
watchdog at its own deadline (the others keep streaming), the watchdog wakes far less
often than a timer per bed would, and once the beds stop nothing is left scheduled.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from simulators.scenario import Interval
from conftest import run_night, scenario

DURATION_S = 1800.0


def gaps_of(db_path, sid):
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT start_utc_ms, end_utc_ms, cause FROM gaps WHERE session_id = ? ORDER BY start_utc_ms",
                            (sid,)).fetchall()
    finally:
        conn.close()


def test_each_silent_bed_is_reset_by_the_one_watchdog_at_its_own_deadline(db_path):
    silences = {0: [Interval(600, 40)], 2: [Interval(900, 40), Interval(1300, 40)]}
    scs = [scenario(address=f"SIM-WD-{i}", seed=10 + i, duration_s=DURATION_S, silences=silences.get(i, []))
           for i in range(4)]
    seen = {}

    def before_stop(run):
        svc = run.daemon.nights
        seen["wakeups"] = svc.silence.wakeups
        seen["resets"] = [svc.recorders[sid].link.stats.watchdog_resets for sid in run.session_ids]
        seen["shared"] = all(svc.recorders[sid].link.watchdog is svc.silence for sid in run.session_ids)

    run = asyncio.run(run_night(db_path, scs, before_stop=before_stop))
    for i, sid in enumerate(run.session_ids):
        gaps = gaps_of(db_path, sid)
        assert [g[2] for g in gaps] == ["watchdog_silence"] * len(silences.get(i, [])), i
        for g in gaps:
            assert (g[1] - g[0]) / 1000 == pytest.approx(41, abs=2)
    # Within a 40 s silence the link reconnects and is reset again (the back-off): the same count per silence.
    r = seen["resets"]
    assert r[1] == r[3] == 0 and r[0] >= 1 and r[2] == 2 * r[0]
    # A timer per bed (limit 5 s) wakes about 4 x 1800 / 5 = 1440 times here; the one watchdog wakes at
    # the earliest deadline of all beds, every 4-5 s.
    assert seen["shared"] and 0 < seen["wakeups"] <= DURATION_S / 3
    svc = run.daemon.nights
    assert len(svc.silence) == 0 and svc._handover is None  # stopped: nothing left watched or scheduled


class _Bed:
    """What the watchdog reads of a link (drivers.ble.silence.Watched): last frame, limit, and the call it makes."""

    def __init__(self, limit_s: float, t: float) -> None:
        self.silence_limit_s, self.last_frame_t = limit_s, t
        self.silenced_at: float | None = None

    def silenced(self, t: float) -> None:
        self.silenced_at = t


def test_a_link_that_connects_while_the_watchdog_sleeps_is_reset_at_its_own_deadline():
    from collector.clock import VirtualClock
    from drivers.ble.silence import SilenceWatch

    async def play() -> tuple[_Bed, _Bed, SilenceWatch]:
        clock = VirtualClock(start=1000.0)
        pump = asyncio.create_task(clock.run())
        watch = SilenceWatch(clock)
        slow = _Bed(60.0, clock.now())  # e.g. a polled ring: a long limit
        watch.add(slow)
        await clock.sleep(1.0)
        fast = _Bed(5.0, clock.now())  # connects later with a deadline far earlier than the one slept for
        watch.add(fast)
        for _ in range(20):  # the slow bed keeps sending, the fast one goes silent
            await clock.sleep(1.0)
            slow.last_frame_t = clock.now()
        pump.cancel()
        return slow, fast, watch

    slow, fast, watch = asyncio.run(play())
    assert fast.silenced_at == pytest.approx(1001.0 + 5.0, abs=0.05)  # at its own deadline, not the slow bed's
    assert slow.silenced_at is None and len(watch) == 1
    assert watch.wakeups <= 6  # never asleep longer than the shortest limit (5 s): about 21 s / 5 s

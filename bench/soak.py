"""Soak: simulated beds for many virtual hours through the real daemon, killed with SIGKILL every hour.

Each daemon is a process of its own (``python bench/soak.py --child``): the database lock, the
writer, the night service and the simulated oximeters, on a virtual clock running ``--speed``
times real time, exactly as ``collector run --simulate`` builds them (without the HTTP API).
The parent kills it with SIGKILL every virtual hour and starts a new one, which resumes the
open sessions.  On the way: a BLE drop every 5 min on every bed, a backward host clock step,
and a disk-full hour (the database is on a small tmpfs filled with a ballast file; root only,
else skipped with a note).  No kill falls in the disk-full hour: samples the writer holds
in memory while the disk is full are not on disk yet (see the closing note).

Every simulator logs each tick it delivers (virtual time, wall time) with an unbuffered write
to a file outside the database's disk, so the log survives the kill.  At the end:

* nothing lost that reached the daemon, except ticks delivered less than ``--window`` wall
  seconds before a kill (the writer's documented ~1 s durability window);
* every hole of more than 5 s between stored samples is covered by a gap with a cause, and
  each kill left a ``daemon_down`` gap in every session;
* each night's stored T90 report equals a recompute from the stored samples, and the clock
  step is an event of every session without changing analysed time.

Prints kills survived, worst loss (wall seconds, and virtual seconds), RSS at start and end.
Exit 0 when every check holds, 1 otherwise.

    python bench/soak.py [--hours 24] [--beds 8] [--speed 120]
    python bench/soak.py --hours 2 --beds 2 --kill-every-h 0.66 --speed 600   # a quick one
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_767_000_000.0
HOLE_S = 5.0  # a stretch without samples longer than this must lie in a gap
SUBJECTS = "SCR-{:04d}"


# -- the daemon process ---------------------------------------------------------------------------------
class SentLog(list):  # type: ignore[type-arg]
    """``SimulatedOximeter.delivered`` that also writes each tick at once (it must outlive a SIGKILL)."""

    def __init__(self, path: Path, clock: Any) -> None:
        super().__init__()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.clock = clock

    def append(self, item: Any) -> None:
        os.write(self.fd, f"{int(round(item[0] * 1000))} {time.time():.4f}\n".encode())


def bed_scenario(bed: int, hours: float, drop_every_s: float, drop_s: float) -> dict[str, Any]:
    proto = ("plx", "nonin")[bed % 2]
    n = int(hours * 3600 // drop_every_s) + 1
    return {"device": {"protocol": proto, "address": f"SIM-SOAK-{bed + 1:02d}", "interval_s": 1.0},
            "night": {"duration_s": hours * 3600 + 600, "seed": 100 + bed, "noise_spo2": 0.8},
            "desaturations": [{"count": int(hours * 6) + 1, "depth": 8, "duration_s": 60}],
            "disconnects": [{"at_s": drop_every_s * (k + 1), "duration_s": drop_s} for k in range(n)]}


async def child(a: argparse.Namespace) -> int:
    from collector.clock import VirtualClock
    from collector.features import build_daemon
    from collector.runner import latest_stored_time
    from collector.storage.lock import DatabaseLock
    from simulators.ble_backend import SimulatedAir
    from simulators.oximeter import SimulatedOximeter
    from simulators.scenario import parse_scenario

    db = Path(a.db)
    config = json.loads(Path(a.config_json).read_text())
    lock = DatabaseLock(db).acquire()
    clock = VirtualClock(start=a.start, speed=a.speed)
    last = latest_stored_time(db)
    before = [x for x in (last, a.resume_after) if x is not None]
    if before:
        clock.jump_to(max(before) + 1.0)  # never earlier than what is stored or was sent before the kill
    air = SimulatedAir(clock)
    devices = []
    for bed in range(a.beds):
        dev = air.add(SimulatedOximeter(parse_scenario(bed_scenario(bed, a.hours, a.drop_every_s, a.drop_s)), clock))
        dev.delivered = SentLog(Path(a.sent_dir) / f"bed{bed + 1}.log", clock)
        devices.append(dev)
    daemon = build_daemon(db, clock=clock, config=config, ble_backend=air.client_backend, scanner_backend=air.scanner_backend,
                          origin="simulated")
    tasks = [asyncio.create_task(clock.run())] + [asyncio.create_task(d.run()) for d in devices]
    resumed = await daemon.resume_open_sessions()
    if not resumed and not a.resume_after:
        for bed, dev in enumerate(devices):
            await daemon.add_subject(SUBJECTS.format(bed + 1))
            await daemon.start_night(SUBJECTS.format(bed + 1), dev.address)
    print(f"ready {os.getpid()} resumed {len(resumed)}", flush=True)
    stepped = a.step_at is None or clock.now() >= a.step_at
    while clock.now() < a.end:
        if not stepped and clock.now() >= a.step_at:
            clock.step_wall(a.step_s)  # the host's wall clock steps; the watch records it
            stepped = True
        print(f"t {clock.now():.3f}", flush=True)
        await asyncio.sleep(0.05)
    result = {}
    conn = daemon.open_reader()
    open_ids = [r[0] for r in conn.execute("SELECT id FROM sessions WHERE state = 'open'")]  # noqa: S608 - bench only
    conn.close()
    for sid in open_ids:
        info = await daemon.stop_session(sid, by="soak")
        result[sid] = {k: info.get(k) for k in ("id", "state", "report_id")}
    await daemon.shutdown()
    for t in tasks:
        t.cancel()
    lock.release()
    print("done " + json.dumps(result), flush=True)
    return 0


# -- the parent -------------------------------------------------------------------------------------------
@dataclass
class Run:
    kills: list[tuple[float, float]] = field(default_factory=list)  # (wall, virtual) of each SIGKILL
    skipped_kills: list[float] = field(default_factory=list)
    rss_kb: list[tuple[float, int]] = field(default_factory=list)  # (virtual, RSS kB) samples
    disk_full: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)


def say(text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def mount_tmpfs(where: Path, size_mb: int) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)], capture_output=True).returncode == 0


def fill(path: Path) -> int:
    """Write a ballast file until the file system is full; bytes written."""
    n = 0
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                n += fh.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                small = b"\0" * 4096
                while True:  # the last blocks too
                    try:
                        n += fh.write(small)
                    except OSError:
                        return n


def spawn(a: argparse.Namespace, work: Path, db: Path, cfg: Path, resume_after: float | None, log: Any) -> subprocess.Popen[str]:
    args = [sys.executable, str(Path(__file__).resolve()), "--child", "--db", str(db), "--config-json", str(cfg),
            "--sent-dir", str(work), "--beds", str(a.beds), "--hours", str(a.hours), "--speed", str(a.speed),
            "--start", str(T0), "--end", str(T0 + a.hours * 3600), "--drop-every-s", str(a.drop_every_s), "--drop-s", str(a.drop_s),
            "--step-at", str(T0 + a.step_at_h * 3600), "--step-s", str(a.step_s)]
    if resume_after is not None:
        args += ["--resume-after", str(resume_after)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        log.flush()
        tail = Path(log.name).read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"the daemon did not start ({line!r}): {' / '.join(tail)}")
    return proc


def last_sent(work: Path) -> float | None:
    best = None
    for p in work.glob("bed*.log"):
        with open(p, "rb") as fh:
            fh.seek(max(0, p.stat().st_size - 200))
            lines = fh.read().splitlines()
        if lines:
            v = int(lines[-1].split()[0]) / 1000
            best = v if best is None else max(best, v)
    return best


def drive(a: argparse.Namespace, work: Path, db: Path, cfg: Path, mnt: Path | None) -> Run:
    run = Run()
    # 137 s past the mark: a kill never coincides with a scheduled BLE drop (those fall on whole 5 min)
    kill_marks = [T0 + k * a.kill_every_h * 3600 + 137 for k in range(1, int(a.hours / a.kill_every_h) + 1)
                  if k * a.kill_every_h * 3600 + 137 < a.hours * 3600 - 60]
    df_start, df_end = T0 + a.disk_full_at_h * 3600, T0 + (a.disk_full_at_h + a.disk_full_h) * 3600
    if mnt is None and a.disk_full_h > 0:
        run.notes.append("disk-full hour skipped: not root, so no tmpfs to fill (run as root for it)")
    ballast = (mnt / "ballast") if mnt is not None else None
    filled = False
    last_said = T0
    log = open(work / "daemon.log", "a", encoding="utf-8")
    proc = spawn(a, work, db, cfg, None, log)
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"the daemon died on its own (exit {proc.wait()}); see {log.name}")
        if line.startswith("done"):
            proc.wait(timeout=120)
            break
        if not line.startswith("t "):
            continue
        v = float(line.split()[1])
        if v - last_said >= 1800:
            last_said = v
            say(f"virtual hour {(v - T0) / 3600:.2f}")
        if not run.rss_kb or v - run.rss_kb[-1][0] >= 600:
            run.rss_kb.append((v, rss_kb(proc.pid)))
        if ballast is not None and not filled and df_start <= v < df_end:
            n = fill(ballast)
            filled = True
            run.disk_full = (v, v)
            run.notes.append(f"disk full from virtual hour {(v - T0) / 3600:.2f} ({n / 2**20:.0f} MiB ballast)")
            say(run.notes[-1])
        if ballast is not None and filled and v >= df_end and ballast.exists():
            ballast.unlink()
            assert run.disk_full is not None
            run.disk_full = (run.disk_full[0], v)
            run.notes.append(f"disk space back at virtual hour {(v - T0) / 3600:.2f}")
            say(run.notes[-1])
        if kill_marks and v >= kill_marks[0]:
            mark = kill_marks.pop(0)
            if ballast is not None and df_start - 60 <= mark <= df_end + 60:
                run.skipped_kills.append(mark)
                continue
            wall = time.time()
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            run.kills.append((wall, v))
            say(f"SIGKILL {len(run.kills)} at virtual hour {(v - T0) / 3600:.2f}")
            proc = spawn(a, work, db, cfg, last_sent(work), log)
            assert proc.stdout is not None
    log.close()
    return run


def check(a: argparse.Namespace, work: Path, db: Path, config: dict[str, Any], run: Run) -> tuple[bool, list[str]]:
    import numpy as np

    from collector.oximetry import store

    out: list[str] = []
    ok = True
    conn = sqlite3.connect(db)
    from collector.clock import parse_utc

    sessions = conn.execute("SELECT s.id, d.address, s.stopped_utc FROM sessions s JOIN devices d ON d.id = s.device_id"
                            " ORDER BY s.id").fetchall()
    kill_walls = np.array(sorted(w for w, _ in run.kills))
    worst_wall = worst_virtual = 0.0
    unexplained = holes_uncovered = 0
    sent_total = stored_total = 0
    for sid, address, stopped in sessions:
        bed = int(address.rsplit("-", 1)[1])
        raw = np.loadtxt(work / f"bed{bed}.log", ndmin=2) if (work / f"bed{bed}.log").stat().st_size else np.zeros((0, 2))
        if stopped:  # ticks from the second the stop began are not part of the night (the recorder is being stopped)
            raw = raw[raw[:, 0] < parse_utc(stopped) * 1000 - 1000]
        sent_ms, sent_wall = raw[:, 0].astype(np.int64), raw[:, 1]
        stored = np.array([r[0] for r in conn.execute("SELECT host_utc_ms FROM spo2_samples WHERE session_id = ? ORDER BY host_utc_ms",
                                                      (sid,))], dtype=np.int64)
        sent_total += sent_ms.size
        stored_total += stored.size
        i = np.clip(np.searchsorted(stored, sent_ms), 1, max(1, stored.size - 1)) if stored.size else np.zeros(0, int)
        if stored.size:
            near = np.minimum(np.abs(stored[np.minimum(i, stored.size - 1)] - sent_ms), np.abs(stored[i - 1] - sent_ms))
            lost = near > 500
        else:
            lost = np.ones(sent_ms.size, bool)
        for k in np.nonzero(lost)[0]:
            j = np.searchsorted(kill_walls, sent_wall[k])
            before = kill_walls[j] - sent_wall[k] if j < kill_walls.size else np.inf
            if before > a.window:
                unexplained += 1
                if unexplained <= 5:
                    out.append(f"session {sid}: tick at virtual hour {(sent_ms[k] / 1000 - T0) / 3600:.4f} not stored "
                               f"({before:.1f} s wall before the next kill)")
                continue
            worst_wall = max(worst_wall, float(before))
            # virtual seconds lost before this kill on this bed
            kv = [v for w, v in run.kills if w == kill_walls[j]][0]
            worst_virtual = max(worst_virtual, kv - sent_ms[k] / 1000)
        gaps = conn.execute("SELECT start_utc_ms, end_utc_ms, cause FROM gaps WHERE session_id = ?", (sid,)).fetchall()
        if any(not c or e is None for _, e, c in gaps):
            ok = False
            out.append(f"session {sid}: a gap without a cause or never closed")
        downs = sum(1 for *_, c in gaps if c == "daemon_down")
        for _, kv in run.kills:  # each kill lies in a gap: daemon_down, or the BLE drop it fell into
            kms = int(kv * 1000)
            j = int(np.searchsorted(stored, kms))
            x, y = (stored[j - 1] if j else kms), (stored[j] if j < stored.size else kms)
            if not any(s <= y and (e or s) >= x for s, e, _ in gaps):
                ok = False
                out.append(f"session {sid}: the kill at virtual hour {(kv - T0) / 3600:.2f} left no gap")
        for x, y in zip(stored[:-1], stored[1:]):
            if y - x > HOLE_S * 1000 and not any(s <= y and (e or s) >= x for s, e, _ in gaps):
                holes_uncovered += 1
        stored_report = store.latest_report(conn, sid)
        again = store.compute_report(conn, sid, config)
        if stored_report is None:
            ok = False
            out.append(f"session {sid}: no stored night report")
            continue
        for k in ("t90_pct", "t90_s", "analysed_s", "recording_s", "n_samples"):
            if stored_report.get(k) != again.get(k):
                ok = False
                out.append(f"session {sid}: stored {k} {stored_report.get(k)} but recomputed {again.get(k)}")
        steps = conn.execute("SELECT COUNT(*) FROM events WHERE session_id = ? AND kind = 'clock_step'", (sid,)).fetchone()[0]
        if steps < 1:
            ok = False
            out.append(f"session {sid}: the clock step is not recorded")
        out.append(f"session {sid} ({address}): T90 {again['t90_pct']:.3f} % (stored {stored_report['t90_pct']:.3f} %), "
                   f"analysed {again['analysed_s'] / 3600:.2f} h of {again['recording_s'] / 3600:.2f} h, {len(gaps)} gaps "
                   f"({downs} daemon_down for {len(run.kills)} kills; a kill in a BLE drop extends that gap), "
                   f"{steps} clock step event(s)")
    if unexplained:
        ok = False
        out.append(f"LOST: {unexplained} ticks that reached the daemon are not stored and not within {a.window} s before a kill")
    if holes_uncovered:
        ok = False
        out.append(f"{holes_uncovered} stretches over {HOLE_S:g} s without samples have no gap")
    if worst_wall > a.window:
        ok = False
    out.insert(0, f"ticks sent {sent_total}, samples stored {stored_total}; worst loss {worst_wall:.2f} s wall "
                  f"({worst_virtual:.0f} s of virtual time at {a.speed:g}x) per kill; unexplained losses {unexplained}")
    return ok, out


def parent(a: argparse.Namespace) -> int:
    from collector.config import defaults

    base = Path(tempfile.mkdtemp(prefix="soak-"))
    work = base / "sent"
    work.mkdir()
    mnt = base / "disk"
    mounted = mount_tmpfs(mnt, a.disk_mb) if a.disk_full_h > 0 else False
    if not mounted:
        mnt.mkdir(exist_ok=True)
    db = mnt / "collector.sqlite"
    config = defaults()
    config["ble"]["scan_timeout_s"] = 0.5
    config["ble"]["max_beds_per_adapter"] = max(5, a.beds)  # the simulated air is one adapter (a ward uses two for 8 beds)
    config["storage"]["synchronous"] = "NORMAL"  # tmpfs: FULL would only add fsync calls that do nothing
    cfg = work / "config.json"
    cfg.write_text(json.dumps(config))
    wall0 = time.time()
    try:
        run = drive(a, work, db, cfg, mnt if mounted else None)
        wall = time.time() - wall0
        ok, lines = check(a, work, db, config, run)
        refused = (work / "daemon.log").read_text(errors="replace").count("cannot commit")
    finally:
        if not a.keep:
            if mounted:
                subprocess.run(["umount", "-l", str(mnt)], check=False)
            shutil.rmtree(base, ignore_errors=True)
    rss = run.rss_kb
    print(f"soak: {a.beds} beds, {a.hours:g} virtual hours at {a.speed:g}x in {wall:.0f} s wall; BLE drop every "
          f"{a.drop_every_s:g} s ({a.drop_s:g} s each); clock step {a.step_s:+g} s at virtual hour {a.step_at_h:g}")
    print(f"kills survived: {len(run.kills)} (SIGKILL; {len(run.skipped_kills)} skipped in the disk-full hour)")
    print(f"RSS of the daemon: start {rss[0][1] / 1024:.0f} MiB, end {rss[-1][1] / 1024:.0f} MiB, max {max(r for _, r in rss) / 1024:.0f} MiB"
          if rss else "RSS: not measured")
    print(f"commits refused while the disk was full: {refused} (samples kept in memory and committed when space came back)")
    for n in run.notes:
        print("note:", n)
    for line in lines:
        print(line)
    print("soak: OK" if ok else "soak: FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=float, default=24.0, help="virtual hours (24: a whole day)")
    p.add_argument("--beds", type=int, default=8)
    p.add_argument("--speed", type=float, default=120.0, help="virtual seconds per wall second")
    p.add_argument("--kill-every-h", type=float, default=1.0)
    p.add_argument("--drop-every-s", type=float, default=300.0)
    p.add_argument("--drop-s", type=float, default=20.0)
    p.add_argument("--step-at-h", type=float, default=None, help="virtual hour of the clock step (default: 55 %% of --hours)")
    p.add_argument("--step-s", type=float, default=-3600.0, help="size of the host clock step, s")
    p.add_argument("--disk-full-at-h", type=float, default=None, help="virtual hour the disk fills (default: 25 %% of --hours)")
    p.add_argument("--disk-full-h", type=float, default=1.0, help="how long it stays full, virtual hours (0: never)")
    p.add_argument("--disk-mb", type=int, default=512, help="size of the database's tmpfs")
    p.add_argument("--window", type=float, default=1.5, help="wall seconds before a kill in which a sample may be lost")
    p.add_argument("--keep", action="store_true", help="keep the work folder (and the tmpfs mounted)")
    # the daemon process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--db", "--config-json", "--sent-dir"):
        p.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--start", "--end", "--step-at", "--resume-after"):
        p.add_argument(name, type=float, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return asyncio.run(child(a))
    a.step_at_h = a.hours * 0.55 if a.step_at_h is None else a.step_at_h
    a.disk_full_at_h = a.hours * 0.25 if a.disk_full_at_h is None else a.disk_full_at_h
    return parent(a)


if __name__ == "__main__":
    sys.exit(main())

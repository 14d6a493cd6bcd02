"""Benchmark 4, footprint: resident memory of ``ftbridge run`` plus its wandb-core child.

The bridge runs as users run it (the CLI, a subprocess, poll every 2 s) against the emulator
in its own process, with M finished jobs to backfill and N running jobs that emit a step per
second for the whole benchmark. The RSS of the bridge's process tree (psutil, summed over
the process and all its descendants: the bridge and wandb-core) is sampled every second;
the peak covers the whole run. Once the backfill is done (every finished job synced, read
from the state database), the soak starts: a sample every 10 s for ``--soak-seconds``.
"Flat" means the least-squares slope of the soak samples after its first minute (while the
running jobs' runs fill their first buffers) is under 1 MB per minute; the slope over the
whole soak is reported too.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil

from bench.backfill import ftbridge_command
from bench.common import (
    EmulatorProcess,
    Result,
    bridge_env,
    finished_jobs,
    running_jobs,
    say,
    slope_per_minute,
    table,
    tree_rss,
    verdict,
)
from bridge.emulator import Scenario
from bridge.wandbfile import read_merged

MB = 1024 * 1024
TARGET_MB = 400.0
FLAT_MB_PER_MIN = 1.0
SOAK_SAMPLE_S = 10.0
SETTLE_S = 60.0


def synced_counts(db: Path) -> tuple[int, int]:
    """(jobs known, jobs synced) in the bridge's state database; (0, 0) before it exists."""
    if not db.exists():
        return 0, 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
            row = c.execute("SELECT count(*), coalesce(sum(synced), 0) FROM jobs").fetchone()
    except sqlite3.Error:
        return 0, 0
    return int(row[0]), int(row[1])


def _split_rss(pid: int) -> tuple[float, float]:
    """(bridge process RSS, RSS of its descendants) in MB."""
    try:
        root = psutil.Process(pid)
        own = root.memory_info().rss
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    return own / MB, tree_rss(pid) / MB - own / MB


def run_footprint(n_total: int, n_running: int, soak_seconds: float, workdir: Path) -> Result:
    n_finished = n_total - n_running
    say(
        f"\n== 4. Footprint: {n_total} jobs ({n_running} running, {n_finished} finished), "
        f"soak {soak_seconds:g} s =="
    )
    workdir.mkdir(parents=True, exist_ok=True)
    # The running jobs must outlast the backfill (~0.2 s per finished job) and the soak.
    steps = int(soak_seconds + 0.3 * n_finished + 300)
    scenario = Scenario(
        seed=4,
        jobs=running_jobs(n_running, steps) + finished_jobs(n_finished, 20),
    )
    samples: list[tuple[float, float]] = []  # (seconds since bridge start, MB), every second
    soak: list[tuple[float, float, float, float]] = []  # (s into soak, total, bridge, children)
    with EmulatorProcess(scenario, workdir) as emu:
        env = bridge_env(emu.base_url, workdir, FTBRIDGE_POLL_INTERVAL="2")
        log = (workdir / "bridge.log").open("wb")
        started = time.monotonic()
        proc = subprocess.Popen(
            [*ftbridge_command(), "run"], env=env, cwd=workdir, stdout=log, stderr=log
        )
        backfill_s: float | None = None
        soak_started = 0.0
        next_soak_sample = 0.0
        try:
            while proc.poll() is None:
                now = time.monotonic()
                samples.append((now - started, tree_rss(proc.pid) / MB))
                if backfill_s is None:
                    known, synced = synced_counts(workdir / "state.db")
                    if known >= n_total and synced >= n_finished:
                        backfill_s = now - started
                        soak_started = next_soak_sample = now
                        say(f"  backfill of {n_finished} finished jobs done in {backfill_s:.0f} s")
                if backfill_s is not None and now >= next_soak_sample:
                    bridge_mb, children_mb = _split_rss(proc.pid)
                    soak.append((now - soak_started, samples[-1][1], bridge_mb, children_mb))
                    say(
                        f"  soak {now - soak_started:5.0f} s: {samples[-1][1]:6.1f} MB "
                        f"(bridge {bridge_mb:.1f}, wandb-core {children_mb:.1f})"
                    )
                    next_soak_sample += SOAK_SAMPLE_S
                    if now - soak_started >= soak_seconds:
                        break
                time.sleep(1.0)
        finally:
            stop_started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            stop_s = time.monotonic() - stop_started
            log.close()
    return _report(
        n_total,
        n_running,
        soak_seconds,
        workdir,
        scenario,
        samples,
        soak,
        backfill_s,
        code,
        stop_s,
    )


def _report(  # noqa: PLR0917 - one call site, in order
    n_total: int,
    n_running: int,
    soak_seconds: float,
    workdir: Path,
    scenario: Scenario,
    samples: list[tuple[float, float]],
    soak: list[tuple[float, float, float, float]],
    backfill_s: float | None,
    exit_code: int,
    stop_s: float,
) -> Result:
    peak = max((mb for _, mb in samples), default=0.0)
    soak_points = [(t, total) for t, total, _, _ in soak]
    slope = slope_per_minute(soak_points)
    after = [(t, mb) for t, mb in soak_points if t >= SETTLE_S]
    # A soak shorter than the settling minute is judged on all its samples.
    settled = slope_per_minute(after) if len(after) >= 3 else slope
    flat = abs(settled) < FLAT_MB_PER_MIN
    growth = soak_points[-1][1] - soak_points[0][1] if soak_points else 0.0
    written = _runs_written(workdir, n_total)
    say()
    say(
        table(
            f"Footprint, {n_total} jobs ({n_running} running), RSS of bridge + wandb-core",
            [
                "peak MB",
                "target MB",
                "result",
                "soak s",
                "slope MB/min",
                "slope after 1st min",
                "soak growth MB",
                "flat",
            ],
            [
                [
                    peak,
                    f"< {TARGET_MB:g}",
                    verdict(peak < TARGET_MB),
                    soak[-1][0] if soak else 0.0,
                    slope,
                    settled,
                    growth,
                    verdict(flat) if len(soak) > 2 else "-",
                ]
            ],
        )
    )
    say(
        f"  backfill {backfill_s if backfill_s is None else round(backfill_s)} s; SIGTERM -> "
        f"exit {exit_code} in {stop_s:.1f} s; runs written {written}/{n_total}"
    )
    say(
        "  RSS curve during the soak (every 10 s): "
        + ", ".join(f"{t:.0f}s={mb:.0f}" for t, mb in soak_points)
    )
    return {
        "jobs": n_total,
        "running": n_running,
        "jobs_in_scenario": len(scenario.jobs),
        "peak_mb": peak,
        "target_mb": TARGET_MB,
        "target_met": peak < TARGET_MB,
        "backfill_s": backfill_s,
        "soak_s": soak[-1][0] if soak else 0.0,
        "soak_slope_mb_per_min": slope,
        "soak_slope_after_first_minute_mb_per_min": settled,
        "soak_growth_mb": growth,
        "flat": flat,
        "soak_curve": [
            {
                "t": round(t),
                "total_mb": round(a, 1),
                "bridge_mb": round(b, 1),
                "wandb_core_mb": round(c, 1),
            }
            for t, a, b, c in soak
        ],
        "exit_code": exit_code,
        "shutdown_s": stop_s,
        "runs_written": written,
    }


def _runs_written(workdir: Path, n_total: int) -> int:
    """Jobs whose run has at least one history row on disk (after the bridge stopped)."""
    db = workdir / "state.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        ids = [row[0] for row in conn.execute("SELECT job_id FROM jobs")]
    written = 0
    for job_id in ids[:n_total]:
        try:
            if read_merged(workdir, job_id).history:
                written += 1
        except FileNotFoundError:
            continue
    return written

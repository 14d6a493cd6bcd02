"""Benchmark 1, backfill: finished jobs into offline W&B, three ways, side by side.

(a) ``ftbridge sync --all`` (the real CLI, a subprocess, fresh state and WANDB_DIR);
(b) wandb's own ``WandbLogger.sync`` looped over the same jobs (bench/backfill_workers.py,
    with its W&B-server look-ups bypassed);
(c) the floor: one offline run per job, one after another, the same rows, no API calls.

Each contender is timed from process start to exit (interpreter start-up and imports
included, the same for all), then every run it wrote is read back from its ``.wandb`` files.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.backfill_workers import BYPASSES
from bench.common import (
    API_KEY,
    EmulatorProcess,
    Result,
    bridge_env,
    clean_env,
    finished_jobs,
    say,
    table,
    verdict,
)
from bridge import mapping
from bridge.emulator import Scenario
from bridge.sources.openai import OpenAISource
from bridge.wandbfile import read_merged

RowsByJob = dict[str, list[list[Any]]]


@dataclass
class Contender:
    name: str
    label: str
    command: list[str]
    env: dict[str, str]
    workdir: Path


def ftbridge_command() -> list[str]:
    script = Path(sys.executable).parent / "ftbridge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bridge.cli"]


def expected_rows(base_url: str) -> RowsByJob:
    """Every job's history rows as the bridge maps them, read once before any timing."""
    source = OpenAISource.create(api_key=API_KEY, base_url=base_url, timeout=30, max_retries=2)
    job_ids = [str(job["id"]) for page in source.job_pages() for job in page]
    rows: RowsByJob = {}
    for job_id in reversed(job_ids):  # oldest first, as a loop over the jobs would go
        events = [event for page in source.event_pages(job_id) for event in page]
        metric_rows = [r for e in reversed(events) if (r := mapping.metric_row(e)) is not None]
        rows[job_id] = [[r.step, r.values] for r in mapping.merge_rows(metric_rows)]
    return rows


def check_runs(wandb_dir: Path, rows_by_job: RowsByJob) -> tuple[int, list[str]]:
    """How many runs hold every expected step with its train_loss; and what is wrong."""
    good, problems = 0, []
    for job_id, rows in rows_by_job.items():
        try:
            history = read_merged(wandb_dir, job_id).history
        except FileNotFoundError:
            problems.append(f"{job_id}: no run")
            continue
        got = {int(r["_step"]): r["train_loss"] for r in history if "train_loss" in r}
        want = {int(step): values.get("train_loss") for step, values in rows}
        if sorted(got) != sorted(want):
            problems.append(f"{job_id}: steps {len(got)} of {len(want)}")
        elif any(not math.isclose(got[s], want[s], rel_tol=1e-6) for s in want if want[s]):
            problems.append(f"{job_id}: train_loss differs")
        else:
            good += 1
    return good, problems


CONTENDERS = ("ftbridge", "wandblogger", "wandblogger_lean", "floor")


@dataclass(frozen=True)
class Targets:
    """What ftbridge must reach at one API latency: times faster than WandbLogger, and at
    most this multiple of the floor's time."""

    speedup: float
    vs_floor: float


def targets_at(latency: float) -> Targets:
    """Loopback: 2.5x WandbLogger and faster than the floor (W&B writes must overlap);
    with a latency per request: 4x WandbLogger and within 1.3x of the floor."""
    return Targets(2.5, 1.0) if latency == 0 else Targets(4.0, 1.3)


def run_backfill(
    n_jobs: int,
    n_steps: int,
    workdir: Path,
    *,
    only: Sequence[str] = CONTENDERS,
    latency: float = 0.0,
    rounds: int = 1,
) -> Result:
    """Each contender timed ``rounds`` times, in turns (round 1: every contender, then
    round 2...), so that a slow minute of a shared machine weighs on all of them; the
    figures and ratios are of each contender's median wall time."""
    say(
        f"\n== 1. Backfill: {n_jobs} finished jobs x {n_steps} steps into offline W&B, "
        f"{latency * 1000:g} ms per API request, {rounds} round(s) =="
    )
    scenario = Scenario(seed=1, jobs=finished_jobs(n_jobs, n_steps))
    workdir.mkdir(parents=True, exist_ok=True)
    with EmulatorProcess(scenario, workdir) as emu:
        rows = expected_rows(emu.base_url)
        if latency:
            emu.control("faults", {"latency": latency})  # after the untimed reads
        ids_file, rows_file = workdir / "job_ids.json", workdir / "rows.json"
        ids_file.write_text(json.dumps(list(rows)), encoding="utf-8")
        rows_file.write_text(json.dumps(rows), encoding="utf-8")
        worker = [sys.executable, "-m", "bench.backfill_workers"]
        logger_args = ["wandblogger", "--base-url", emu.base_url, "--api-key", API_KEY]
        logger_args += ["--jobs", str(ids_file)]
        contenders = [
            Contender(
                "ftbridge",
                "ftbridge sync --all",
                [*ftbridge_command(), "sync", "--all"],
                bridge_env(emu.base_url, workdir / "ftbridge"),
                workdir / "ftbridge",
            ),
            Contender(
                "wandblogger",
                "WandbLogger.sync, looped (defaults)",
                [*worker, *logger_args],
                clean_env(workdir / "wandblogger"),
                workdir / "wandblogger",
            ),
            Contender(
                "wandblogger_lean",
                "WandbLogger.sync, looped (no datasets, lean settings)",
                [*worker, *logger_args, "--lean"],
                clean_env(workdir / "wandblogger_lean"),
                workdir / "wandblogger_lean",
            ),
            Contender(
                "floor",
                "floor: one offline run per job, same rows",
                [*worker, "floor", "--rows", str(rows_file)],
                clean_env(workdir / "floor"),
                workdir / "floor",
            ),
        ]
        contenders = [c for c in contenders if c.name in only]
        timed: dict[str, list[Result]] = {c.name: [] for c in contenders}
        for round_no in range(1, max(1, rounds) + 1):
            for contender in contenders:
                one = _time(contender, emu, rows)
                timed[contender.name].append(one)
                say(
                    f"  round {round_no}, {contender.label}: {one['wall_s']:.2f} s, "
                    f"{one['runs_ok']}/{n_jobs} runs complete"
                )
    figures = {name: _median(results) for name, results in timed.items()}
    return _report(n_jobs, n_steps, contenders, figures, latency)


def _median(results: list[Result]) -> Result:
    """One contender's rounds as one: the median wall time (and every round's), the fewest
    runs complete, the most requests, every problem seen."""
    middle = statistics.median(r["wall_s"] for r in results)
    worst = min(results, key=lambda r: r["runs_ok"])
    return {
        **worst,
        "wall_s": middle,
        "walls_s": [r["wall_s"] for r in results],
        "requests": max(r["requests"] for r in results),
        "problems": [p for r in results for p in r["problems"]][:10],
        "exit_code": max(results, key=lambda r: abs(r["exit_code"]))["exit_code"],
    }


def _time(contender: Contender, emu: EmulatorProcess, rows: RowsByJob) -> Result:
    shutil.rmtree(contender.workdir, ignore_errors=True)
    contender.workdir.mkdir(parents=True)
    before = emu.stats()["counts"]
    log_path = contender.workdir / "output.log"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        code = subprocess.run(
            contender.command,
            env=contender.env,
            cwd=contender.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=3600,
        ).returncode
        wall = time.perf_counter() - started
    after = emu.stats()["counts"]
    requests = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    good, problems = check_runs(contender.workdir, rows)
    if code != 0 or problems:
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        say(f"  !! {contender.name}: exit {code}; {problems[:3]}; log tail: {tail}")
    return {
        "wall_s": wall,
        "exit_code": code,
        "runs_ok": good,
        "problems": problems[:10],
        "requests": sum(requests.values()),
        "requests_by_kind": {k: v for k, v in requests.items() if v},
    }


def _report(
    n_jobs: int,
    n_steps: int,
    contenders: list[Contender],
    figures: dict[str, Result],
    latency: float,
) -> Result:
    nan = {"wall_s": math.nan}
    bridge = figures.get("ftbridge", nan)["wall_s"]
    logger = figures.get("wandblogger", nan)["wall_s"]
    floor = figures.get("floor", nan)["wall_s"]
    rows = [
        [
            c.label,
            figures[c.name]["wall_s"],
            " ".join(f"{w:.1f}" for w in figures[c.name]["walls_s"]),
            figures[c.name]["wall_s"] / n_jobs * 1000,
            figures[c.name]["requests"],
            f"{figures[c.name]['runs_ok']}/{n_jobs}",
            figures[c.name]["wall_s"] / bridge,
        ]
        for c in contenders
    ]
    say()
    say(
        table(
            f"Backfill, {n_jobs} jobs x {n_steps} steps, {latency * 1000:g} ms per API "
            "request (median wall time of the rounds, process start to exit)",
            [
                "contender",
                "wall s",
                "rounds s",
                "ms/job",
                "API requests",
                "runs complete",
                "x ftbridge",
            ],
            rows,
        )
    )
    speedup = logger / bridge
    vs_floor = bridge / floor
    target = targets_at(latency)
    all_written = all(f["runs_ok"] == n_jobs for f in figures.values())
    say(
        f"  ftbridge vs WandbLogger: {speedup:.2f}x faster (target >= {target.speedup:g}x): "
        f"{verdict(speedup >= target.speedup)}"
    )
    say(
        f"  ftbridge vs floor: {vs_floor:.2f}x the floor's time "
        f"(target <= {target.vs_floor:g}): {verdict(vs_floor <= target.vs_floor)}"
    )
    if "wandblogger_lean" in figures:
        lean = figures["wandblogger_lean"]["wall_s"] / bridge
        say(f"  ftbridge vs WandbLogger like-for-like (no datasets, lean settings): {lean:.2f}x")
    say(f"  every run written and complete: {all_written}")
    say("  WandbLogger bypasses (monkeypatched in its process, W&B offline):")
    for line in BYPASSES:
        say(f"    - {line}")
    return {
        "jobs": n_jobs,
        "steps": n_steps,
        "latency_s": latency,
        "contenders": figures,
        "speedup_vs_wandblogger": speedup,
        "ratio_vs_floor": vs_floor,
        "target_speedup": target.speedup,
        "target_vs_floor": target.vs_floor,
        "target_speedup_met": speedup >= target.speedup,
        "target_floor_met": vs_floor <= target.vs_floor,
        "all_runs_written": all_written,
        "wandblogger_bypasses": list(BYPASSES),
    }

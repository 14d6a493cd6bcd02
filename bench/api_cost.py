"""Benchmark 3, API cost: requests per poll cycle when nothing new happened.

The emulator runs in this process with its clock frozen (``time_scale=0``): N jobs stay
``running`` and M stay finished, and no new event ever appears. The bridge is the real one
(``OpenAISource`` over HTTP, ``SqlStore`` on a SQLite file) with an in-memory W&B sink: the
sink makes no API request, and this benchmark counts API requests only. After the first
sync (and one more cycle), each of a few idle ``Bridge.poll()`` cycles is counted with the
emulator's per-kind request counters.

Two layouts: the active jobs are the newest (the common case: long jobs started recently)
or the oldest (jobs that started before the M finished ones were created; they sit past
the first page of the job list).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Literal

from bench.common import API_KEY, Result, say, table, verdict
from bridge.emulator import Emulator, JobScenario, Scenario
from bridge.engine import Bridge
from bridge.logs import configure_logging
from bridge.mapping import WandbDefaults
from bridge.memory import MemorySink
from bridge.sources.openai import OpenAISource
from bridge.store import SqlStore

Layout = Literal["active newest", "active oldest"]
IDLE_CYCLES = 3


def scenario(n_active: int, m_finished: int, layout: Layout) -> Scenario:
    finished = [
        JobScenario(n_steps=5, n_epochs=1, created_offset=-10_000.0 - i * 60.0)
        for i in range(m_finished)
    ]
    if layout == "active newest":
        # Started a minute ago, a step per second: running, ~55 steps in.
        active = [
            JobScenario(n_steps=1000, created_offset=-60.0 - i, step_seconds=1.0)
            for i in range(n_active)
        ]
    else:
        # Started before every finished job, a step every 1,000 s: running, ~100 steps in.
        active = [
            JobScenario(
                n_steps=1000,
                created_offset=-100_000.0 - m_finished * 60.0 - i,
                step_seconds=1000.0,
            )
            for i in range(n_active)
        ]
    return Scenario(seed=3, time_scale=0.0, jobs=active + finished)


def measure(n_active: int, m_finished: int, layout: Layout, workdir: Path) -> Result:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    with Emulator(scenario(n_active, m_finished, layout), api_key=API_KEY) as emu:
        source = OpenAISource.create(
            api_key=API_KEY, base_url=emu.base_url, timeout=30, max_retries=0
        )
        store = SqlStore(f"sqlite:///{workdir / 'state.db'}")
        bridge = Bridge(source, MemorySink(), store, WandbDefaults(project="bench"))
        try:
            before = emu.counts
            first = bridge.poll()
            first_requests = sum((emu.counts - before).values())
            bridge.poll()
            cycles: list[tuple[Counter[str], float]] = []
            for _ in range(IDLE_CYCLES):
                before = emu.counts
                started = time.perf_counter()
                stats = bridge.poll()
                duration = time.perf_counter() - started
                cycles.append((emu.counts - before, duration))
                if stats.events or stats.rows_logged:
                    say(f"  !! an idle cycle found {stats.events} new events")
        finally:
            store.close()
    per_cycle = [sum(c.values()) for c, _ in cycles]
    worst = max(range(len(cycles)), key=lambda i: per_cycle[i])
    return {
        "layout": layout,
        "active": n_active,
        "finished": m_finished,
        "first_sync_requests": first_requests,
        "first_sync_jobs_seen": first.jobs_seen,
        "requests_per_idle_cycle": per_cycle,
        "max_requests": per_cycle[worst],
        "by_kind": dict(cycles[worst][0]),
        "cycle_s": [round(d, 4) for _, d in cycles],
        "target": n_active + 1,
        "target_met": per_cycle[worst] <= n_active + 1,
    }


def run_api_cost(ns: list[int], ms: list[int], workdir: Path) -> Result:
    say(f"\n== 3. API cost: requests per idle poll cycle, N active in {ns}, M finished in {ms} ==")
    configure_logging(level="warning", fmt="json")
    layouts: tuple[Layout, ...] = ("active newest", "active oldest")
    cases = [
        measure(n, m, layout, workdir / f"{layout.split()[1]}-{n}-{m}")
        for layout in layouts
        for n in ns
        for m in ms
    ]
    rows = [
        [
            c["layout"],
            c["active"],
            c["finished"],
            c["first_sync_requests"],
            c["max_requests"],
            " ".join(f"{k}={v}" for k, v in sorted(c["by_kind"].items())),
            max(c["cycle_s"]) * 1000,
            f"<= {c['target']}",
            verdict(c["target_met"]),
        ]
        for c in cases
    ]
    say()
    say(
        table(
            "API cost per poll cycle with nothing new (frozen emulator clock)",
            [
                "layout",
                "N active",
                "M finished",
                "first sync req",
                "idle cycle req",
                "by kind",
                "cycle ms",
                "target",
                "result",
            ],
            rows,
        )
    )
    for layout in layouts:
        for n in ns:
            costs = {c["max_requests"] for c in cases if c["layout"] == layout and c["active"] == n}
            how = "independent of" if len(costs) == 1 else "varies with"
            say(f"  {layout}, N={n}: idle cost {how} M ({sorted(costs)})")
    return {
        "cases": cases,
        "target_met": all(c["target_met"] for c in cases),
        "independent_of_m": all(
            len({c["max_requests"] for c in cases if c["layout"] == lay and c["active"] == n}) == 1
            for lay in layouts
            for n in ns
        ),
    }

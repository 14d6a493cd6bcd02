"""Shared pieces of the benchmarks: scenarios, the emulator as a process, tables, RSS."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

from bridge.emulator import JobScenario, Scenario

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sk-bench-0123456789abcdef"
PROJECT = "bench"
Result = dict[str, Any]


# -- scenarios ---------------------------------------------------------------------------------


def finished_jobs(count: int, steps: int, *, newest_offset: float = -86_400.0) -> list[JobScenario]:
    """Jobs that finished long before "now", one every 10 minutes going back in time."""
    return [
        JobScenario(
            n_steps=steps,
            n_epochs=min(3, steps),
            created_offset=newest_offset - i * 600.0,
            result_csv_base64=True,  # as the real API serves it (WandbLogger decodes it)
        )
        for i in range(count)
    ]


def running_jobs(count: int, steps: int, *, step_seconds: float = 1.0) -> list[JobScenario]:
    """Jobs that started a few seconds before "now" and emit a step every ``step_seconds``.

    Creation offsets are whole seconds: with a whole-second scenario start, every event then
    happens at a whole emulated second, so its ``created_at`` is its exact time.
    """
    return [
        JobScenario(
            n_steps=steps,
            n_epochs=min(3, steps),
            step_seconds=step_seconds,
            validate_seconds=1.0,
            queue_seconds=1.0,
            created_offset=-float(3 + i % 5),
        )
        for i in range(count)
    ]


# -- the emulator in its own process ---------------------------------------------------------


class EmulatorProcess:
    """``python -m bridge.emulator`` on a free port, so that it does not share our GIL.

    ``latency``: seconds every API request waits before it is answered (the emulator's
    latency fault; requests wait in parallel, as on a real server far away)."""

    def __init__(self, scenario: Scenario, workdir: Path, *, latency: float = 0.0) -> None:
        self.path = workdir / "scenario.json"
        self.path.write_text(scenario.model_dump_json(), encoding="utf-8")
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.latency = latency

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bridge.emulator",
                "--scenario",
                str(self.path),
                "--api-key",
                API_KEY,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"emulator did not start: {line!r}")
        self.base_url = line.removeprefix("listening on ")
        if self.latency:
            self.control("faults", {"latency": self.latency})
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the emulator is not started")
        return self.proc.pid

    def control(self, what: str, body: Result) -> Result:
        """``POST /_emulator/<what>`` (faults, jobs, advance): steer the emulator."""
        request = urllib.request.Request(  # noqa: S310 - our own server
            self.base_url.removesuffix("/v1") + f"/_emulator/{what}",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            answer: Result = json.loads(response.read())
        return answer

    def stats(self) -> Result:
        """``/_emulator/stats``: request counts and the emulated "now" (not counted itself)."""
        url = self.base_url.removesuffix("/v1") + "/_emulator/stats"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our own server
            body: Result = json.loads(response.read())
        return body

    def clock_offset(self, samples: int = 5) -> float:
        """Emulated time minus real time, from the sample with the shortest round trip."""
        best: tuple[float, float] | None = None
        for _ in range(samples):
            before = time.time()
            now = float(self.stats()["now"])
            after = time.time()
            candidate = (after - before, now - (before + after) / 2)
            best = candidate if best is None or candidate < best else best
        assert best is not None
        return best[1]


def bridge_env(base_url: str, workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of an ``ftbridge`` subprocess: emulator, offline W&B, SQLite in workdir."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "OPENAI_", "FTBRIDGE_"))
    }
    env.update(
        OPENAI_API_KEY=API_KEY,
        OPENAI_BASE_URL=base_url,
        WANDB_MODE="offline",
        WANDB_DIR=str(workdir),
        WANDB_PROJECT=PROJECT,
        FTBRIDGE_DATABASE_URL=f"sqlite:///{workdir / 'state.db'}",
        FTBRIDGE_LOG_FORMAT="json",
    )
    env.update(extra)
    return env


def clean_env(workdir: Path) -> dict[str, str]:
    """The environment of a non-bridge worker: offline W&B in workdir, nothing else inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "OPENAI_"))}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(workdir), WANDB_SILENT="true")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


# -- measuring -------------------------------------------------------------------------------


def tree_rss(pid: int, exclude: Sequence[int] = ()) -> int:
    """Resident memory of a process and all its descendants, in bytes (0 once it is gone);
    ``exclude``: processes left out with their own descendants (the emulator, which the
    benchmark starts beside the bridge)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        left_out = set(exclude)
        for other in exclude:
            with contextlib.suppress(psutil.NoSuchProcess):
                left_out.update(child.pid for child in psutil.Process(other).children(True))
    except psutil.NoSuchProcess:
        return 0
    procs = [proc for proc in procs if proc.pid not in left_out]
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute; 0 for fewer than 2."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var


# -- output ----------------------------------------------------------------------------------


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with a title line."""
    cells = [[str(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [title, "-" * len(title)]
    for index, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def say(text: str = "") -> None:
    print(text, flush=True)

"""ftbridge benchmarks, on the built-in emulator and offline W&B. They print; they never assert.

    python bench/run.py --help
    python bench/run.py all              # every benchmark at the sizes of issue 7
    python bench/run.py all --quick      # small sizes, a couple of minutes
    python bench/run.py backfill         # one benchmark

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BENCHMARKS = ("backfill", "lag", "live", "api", "footprint")
DESCRIPTIONS = {
    "backfill": "100 finished jobs x 200 steps: ftbridge sync --all vs WandbLogger.sync vs floor",
    "lag": "100 running jobs, a step per second, poll 2 s: event creation -> row handed to W&B",
    "live": "1,000 running jobs, a step every 5 s, 150 ms per request, poll 5 s: lag, "
    "requests per cycle, RSS",
    "api": "requests per idle poll cycle with N active and M finished jobs",
    "footprint": "peak RSS of bridge + wandb-core, 1,000 jobs of which 100 running; soak",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="ftbridge benchmarks (issue 7). They print figures and never assert.",
        epilog="benchmarks:\n"
        + "\n".join(f"  {name:<10} {text}" for name, text in DESCRIPTIONS.items())
        + "\n  all        every one of them, in this order",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("which", nargs="+", choices=[*BENCHMARKS, "all"], metavar="BENCHMARK")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument(
        "--soak-seconds", type=float, default=None, help="footprint soak (default 600, quick 30)"
    )
    parser.add_argument(
        "--lag-seconds", type=float, default=None, help="live-lag run (default 75, quick 20)"
    )
    parser.add_argument(
        "--latency",
        type=float,
        action="append",
        help="seconds per API request in the backfill (repeatable; default 0 and 0.15)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="times each backfill contender runs, in turns; medians compared (default 3, quick 1)",
    )
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the JSON figures to this file")
    return parser


def run(
    which: list[str],
    *,
    quick: bool,
    workdir: Path,
    soak_seconds: float | None = None,
    lag_seconds: float | None = None,
    latencies: list[float] | None = None,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Run the chosen benchmarks; returns their figures (also printed)."""
    from bench.api_cost import run_api_cost  # noqa: PLC0415 - after the sys.path fix
    from bench.backfill import run_backfill  # noqa: PLC0415
    from bench.footprint import run_footprint  # noqa: PLC0415
    from bench.lag import run_lag  # noqa: PLC0415

    chosen = list(BENCHMARKS) if "all" in which else [b for b in BENCHMARKS if b in which]
    soak = soak_seconds if soak_seconds is not None else (30.0 if quick else 600.0)
    lag_for = lag_seconds if lag_seconds is not None else (20.0 if quick else 75.0)
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "backfill": lambda: {
            f"latency_{latency * 1000:g}ms": run_backfill(
                *((10, 20) if quick else (100, 200)),
                workdir / f"backfill-{latency * 1000:g}ms",
                latency=latency,
                rounds=rounds if rounds is not None else (1 if quick else 3),
            )
            for latency in (latencies or [0.0, 0.15])
        },
        "lag": lambda: run_lag(10 if quick else 100, lag_for, workdir / "lag"),
        "live": lambda: run_lag(
            50 if quick else 1000,
            lag_for if lag_seconds is not None or quick else 120.0,
            workdir / "live",
            poll=5.0,
            step_seconds=5.0,
            latency=0.15,
            slack=2.0,
        ),
        "api": lambda: run_api_cost(
            [1, 5] if quick else [1, 10, 50], [0, 20] if quick else [0, 100, 1000], workdir / "api"
        ),
        "footprint": lambda: run_footprint(
            *((60, 10) if quick else (1000, 100)), soak, workdir / "footprint"
        ),
    }
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "quick": quick,
        "revision": _revision(),
    }
    for name in chosen:
        started = time.perf_counter()
        results[name] = steps[name]()
        results[name]["bench_seconds"] = round(time.perf_counter() - started, 1)
    return results


def _revision() -> str:
    """The checkout measured: commit, plus "+dirty" when the tree has changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _jsonable(value: Any) -> Any:
    """NaN and infinities as null, so that the JSON line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    print(f"ftbridge benchmarks at revision {_revision()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ftbridge-bench-") as tmp:
        workdir = Path(tmp)
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            workdir = args.workdir.resolve()
        results = run(
            args.which,
            quick=args.quick,
            workdir=workdir,
            soak_seconds=args.soak_seconds,
            lag_seconds=args.lag_seconds,
            latencies=args.latency,
            rounds=args.rounds,
        )
    print(f"revision measured: {results['revision']}", flush=True)
    line = json.dumps(_jsonable(results), default=str, allow_nan=False, separators=(",", ":"))
    if args.json is not None:
        args.json.write_text(line + "\n", encoding="utf-8")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``ftbridge demo``: the built-in emulator, offline W&B and SQLite, no keys at all.

The emulator serves three providers' APIs (OpenAI, Together AI, Fireworks AI), and the demo
reads all three as three sources of one bridge. On a terminal it shows the live view of the
jobs training (``bridge.views.live``) and writes its logs to a file it names; otherwise the
logs go to stderr as for ``ftbridge run``.
"""

from __future__ import annotations

import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from bridge.app import build_bridge
from bridge.daemon import run_daemon
from bridge.emulator import Emulator, Scenario
from bridge.logs import configure_logging
from bridge.metrics import BridgeMetrics
from bridge.settings import load_settings
from bridge.views.live import watch
from bridge.views.reader import pulse_of

DEMO_KEY = "demo-key"


def demo_sources(emulator: Emulator) -> list[dict[str, Any]]:
    """The three sources of the demo, all on the one emulator."""
    host = emulator.base_url.removesuffix("/v1")
    return [
        {"name": "openai", "api_key": DEMO_KEY, "base_url": emulator.base_url},
        {"name": "together", "kind": "together", "api_key": DEMO_KEY, "base_url": host},
        {
            "name": "fireworks",
            "kind": "fireworks",
            "api_key": DEMO_KEY,
            "account_id": emulator.scenario.fireworks_account_id,
            "base_url": host,
        },
    ]


def run_demo(directory: Path, *, time_scale: float = 1.0, live: bool | None = None) -> int:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    show_live = sys.stdout.isatty() if live is None else live
    scenario = Scenario.demo()
    with ExitStack() as stack:
        emulator = stack.enter_context(Emulator(scenario, time_scale=time_scale))
        settings = load_settings(
            None,
            sources=demo_sources(emulator),
            wandb_mode="offline",
            wandb_dir=directory,
            database_url=f"sqlite:///{directory / 'state.db'}",
            poll_interval=1.0,
        )
        log_path = directory / "ftbridge.log"
        stream = stack.enter_context(log_path.open("a")) if show_live else None
        configure_logging(level=settings.log_level, fmt=settings.log_format, stream=stream)
        print(
            "ftbridge demo: emulated fine-tuning APIs (OpenAI, Together, Fireworks) at "
            + emulator.base_url
        )
        print(f"ftbridge demo: {len(scenario.jobs)} jobs; W&B runs go to {directory / 'wandb'}")
        if show_live:
            print(f"ftbridge demo: logs go to {log_path}")
        bridge = build_bridge(settings)
        store = bridge.store
        metrics = BridgeMetrics()

        def all_synced() -> bool:
            return len(store.all_jobs()) >= len(scenario.jobs) and not store.unsynced_jobs()

        done = threading.Event()
        viewer = None
        if show_live:
            engine = getattr(store, "engine", None)
            viewer = threading.Thread(
                target=watch,
                args=(engine, Console()),
                kwargs={"stop": done, "pulse": lambda: pulse_of(metrics)},
                name="ftbridge-demo-view",
                daemon=True,
            )
            viewer.start()
        try:
            code = run_daemon(
                bridge,
                interval=settings.poll_interval,
                backoff_max=10.0,
                shutdown_timeout=settings.shutdown_timeout,
                until=all_synced,
                metrics=metrics,
            )
            jobs = store.all_jobs()
        finally:
            done.set()
            if viewer is not None:
                viewer.join(timeout=5)
            store.close()
    print()
    print("ftbridge demo: done. Jobs mirrored into offline W&B runs:")
    for job in jobs:
        note = "  (its own W&B integration: left to OpenAI)" if job.run_state == "skipped" else ""
        provider = job.job.get("provider") or "openai"
        print(f"  {provider:<9}  {job.job_id:<32}  {job.status:<10}  {job.job.get('model')}{note}")
    database = f"sqlite:///{directory / 'state.db'}"
    print(f"\nA job's curves: FTBRIDGE_DATABASE_URL={database} ftbridge show JOB_ID")
    print(f"Runs: {directory / 'wandb'}/offline-run-*")
    print("Upload them to W&B with:")
    print(f"  wandb login && wandb sync {directory / 'wandb'}/offline-run-*")
    return code

"""``ftbridge demo``: the built-in emulator, offline W&B and SQLite, no keys at all."""

from __future__ import annotations

from pathlib import Path

from bridge.app import build_bridge
from bridge.daemon import run_daemon
from bridge.emulator import Emulator, Scenario
from bridge.logs import configure_logging
from bridge.settings import load_settings


def run_demo(directory: Path, *, time_scale: float = 1.0) -> int:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    scenario = Scenario.demo()
    with Emulator(scenario, time_scale=time_scale) as emulator:
        settings = load_settings(
            None,
            openai_api_key="demo-key",
            openai_base_url=emulator.base_url,
            wandb_mode="offline",
            wandb_dir=directory,
            database_url=f"sqlite:///{directory / 'state.db'}",
            poll_interval=1.0,
        )
        configure_logging(level=settings.log_level, fmt=settings.log_format)
        print(f"ftbridge demo: emulated fine-tuning API at {emulator.base_url}")
        print(f"ftbridge demo: {len(scenario.jobs)} jobs; W&B runs go to {directory / 'wandb'}")
        bridge = build_bridge(settings)
        store = bridge.store

        def all_synced() -> bool:
            return len(store.all_jobs()) >= len(scenario.jobs) and not store.unsynced_jobs()

        try:
            code = run_daemon(
                bridge,
                interval=settings.poll_interval,
                backoff_max=10.0,
                shutdown_timeout=settings.shutdown_timeout,
                until=all_synced,
            )
            jobs = store.all_jobs()
        finally:
            store.close()
    print()
    print("ftbridge demo: done. Jobs mirrored into offline W&B runs:")
    for job in jobs:
        note = "  (its own W&B integration: left to OpenAI)" if job.run_state == "skipped" else ""
        print(f"  {job.job_id}  {job.status:<10}  {job.job.get('model')}{note}")
    print(f"\nRuns: {directory / 'wandb'}/offline-run-*")
    print("Upload them to W&B with:")
    print(f"  wandb login && wandb sync {directory / 'wandb'}/offline-run-*")
    return code

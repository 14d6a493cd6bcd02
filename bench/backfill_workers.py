"""The two non-bridge contenders of the backfill benchmark, each run as its own process:

    python -m bench.backfill_workers wandblogger --base-url URL --jobs ids.json [--lean]
    python -m bench.backfill_workers floor --rows rows.json

``wandblogger`` is wandb's own ``WandbLogger.sync`` looped over the jobs. Offline it would call
``wandb.login()``, look runs and artifacts up on the W&B server, and link the dataset
artifacts it uses on the server (``run.use_artifact`` raises offline); those four calls are
replaced here (BYPASSES) so that it runs offline: no login, no run has been logged yet, no
dataset artifact exists yet, linking is a no-op. Everything else (the API reads, the results
CSV, the config, the artifacts and tables it writes) is wandb's own code. ``--lean`` runs it with
``log_datasets=False`` and the bridge's wandb settings, for a like-for-like comparison.

``floor`` only opens one offline run per job, one after another, and logs the same rows the
bridge logs (precomputed: no API calls), then finishes the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

PROJECT = "bench"
BYPASSES = (
    "WandbLogger._ensure_logged_in -> no-op (it calls wandb.login())",
    "WandbLogger._get_wandb_run -> None (no W&B server to ask whether the run exists)",
    "WandbLogger._get_wandb_artifact -> None (no W&B server to ask for dataset artifacts)",
    "wandb.Run.use_artifact -> no-op (it links the dataset artifact on the W&B server and "
    "raises 'Cannot use artifact when in offline mode')",
)


def lean_settings() -> Any:
    """The wandb settings the bridge's sink uses (minus its crash-safety flush interval)."""
    from bridge.sink_wandb import quiet_settings  # noqa: PLC0415 - imports wandb, timed on purpose

    return quiet_settings(mode="offline")


def run_wandblogger(base_url: str, api_key: str, job_ids: list[str], *, lean: bool) -> None:
    import openai  # noqa: PLC0415
    import wandb  # noqa: PLC0415
    from wandb.integration.openai.fine_tuning import WandbLogger  # noqa: PLC0415

    def no_login(cls: type[Any]) -> None:
        return None

    def no_lookup(cls: type[Any], path: str) -> None:
        return None

    def no_use(self: Any, artifact: Any, *args: Any, **kwargs: Any) -> Any:
        return artifact

    # The bypasses (see BYPASSES): W&B-server look-ups that cannot work offline.
    setattr(WandbLogger, "_ensure_logged_in", classmethod(no_login))  # noqa: B010
    setattr(WandbLogger, "_get_wandb_run", classmethod(no_lookup))  # noqa: B010
    setattr(WandbLogger, "_get_wandb_artifact", classmethod(no_lookup))  # noqa: B010
    setattr(wandb.Run, "use_artifact", no_use)  # noqa: B010
    client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0)
    extra: dict[str, Any] = {"settings": lean_settings()} if lean else {}
    for job_id in job_ids:
        WandbLogger.sync(
            fine_tune_job_id=job_id,
            openai_client=client,
            project=PROJECT,
            log_datasets=not lean,
            **extra,
        )


def run_floor(rows_by_job: dict[str, list[list[Any]]]) -> None:
    import wandb  # noqa: PLC0415

    settings = lean_settings()
    for job_id, rows in rows_by_job.items():
        run = wandb.init(id=job_id, project=PROJECT, name=job_id, settings=settings)
        for step, values in rows:
            run.log({**values, "step": step}, step=step)
        run.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill_workers")
    parser.add_argument("which", choices=["wandblogger", "floor"])
    parser.add_argument("--base-url")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--jobs", type=Path, help="JSON list of job ids (wandblogger)")
    parser.add_argument("--rows", type=Path, help="JSON {job id: [[step, values]]} (floor)")
    parser.add_argument("--lean", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.which == "wandblogger":
        job_ids = json.loads(args.jobs.read_text(encoding="utf-8"))
        run_wandblogger(args.base_url, args.api_key, job_ids, lean=args.lean)
    else:
        run_floor(json.loads(args.rows.read_text(encoding="utf-8")))
    print(json.dumps({"in_process_s": time.perf_counter() - started}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

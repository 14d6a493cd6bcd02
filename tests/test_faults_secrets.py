"""Secrets stay secret: a full scenario at debug level, with API keys (environment, TOML
``[[sources]]`` api_key and api_key_env), a W&B key, a webhook secret and a chat URL with a
token; none of them appears in any log line, in any W&B file, or in any webhook or chat body."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.emulator import Emulator, JobScenario, Scenario
from bridge.wandbfile import find_run_files, read_run
from tests.conftest import BridgeProcess, wait_until
from tests.webhook_receiver import SECRET, Receiver, Reply

pytestmark = pytest.mark.e2e

MakeBridge = Callable[..., BridgeProcess]

KEY_MAIN = "sk-main-SECRET-a1b2c3d4e5f6a7b8c9d0"  # TOML [[sources]] api_key
KEY_OTHER = "sk-other-SECRET-0f9e8d7c6b5a4f3e2d1c"  # TOML api_key_env -> environment
KEY_ENV = "sk-env-SECRET-00112233445566778899"  # OPENAI_API_KEY, unused with [[sources]]
WANDB_KEY = "wandbSECRETkey0123456789abcdef0123456789"[:40]
CHAT_TOKEN = "chatSECRETtoken9876543210"


def emulator(jobs: list[JobScenario], key: str) -> Emulator:
    started = Emulator(Scenario(jobs=jobs, time_scale=2, seed=3), api_key=key)
    started.start()
    return started


@pytest.fixture
def emulators() -> Iterator[tuple[Emulator, Emulator]]:
    main = emulator(
        [
            JobScenario(id="ftjob-s-ok", n_steps=16, metadata={"team": "nlp"}),
            JobScenario(
                id="ftjob-s-bad",
                n_steps=10,
                outcome="failed",
                fail_at_step=5,
                error_code="quota",
                error_message="out of credits",
            ),
        ],
        KEY_MAIN,
    )
    other = emulator([JobScenario(id="ftjob-s-other", n_steps=8)], KEY_OTHER)
    yield main, other
    main.stop()
    other.stop()


def files_under(root: Path) -> Iterator[Path]:
    yield from (path for path in root.rglob("*") if path.is_file())


def test_no_secret_in_logs_wandb_or_webhook_bodies(
    emulators: tuple[Emulator, Emulator], bridge_process: MakeBridge, tmp_path: Path
) -> None:
    main, other = emulators
    secrets = [KEY_MAIN, KEY_OTHER, KEY_ENV, WANDB_KEY, SECRET, CHAT_TOKEN]
    # The chat target fails its first attempt, so that the failure path logs too.
    with Receiver([SECRET]) as hooks, Receiver([], replies=[Reply(500)]) as chat:
        toml = tmp_path / "ftbridge.toml"
        toml.write_text(
            "[[sources]]\n"
            f'name = "main"\napi_key = "{KEY_MAIN}"\nbase_url = "{main.base_url}"\n'
            "[[sources]]\n"
            f'name = "other"\napi_key_env = "OTHER_KEY"\nbase_url = "{other.base_url}"\n'
        )
        bridge = bridge_process(
            main,
            FTBRIDGE_CONFIG=str(toml),
            OPENAI_API_KEY=KEY_ENV,
            OTHER_KEY=KEY_OTHER,
            WANDB_API_KEY=WANDB_KEY,  # set, though offline: it must not reach the run files
            FTBRIDGE_LOG_LEVEL="debug",
            FTBRIDGE_WEBHOOK_URLS=hooks.url,
            FTBRIDGE_WEBHOOK_SECRET=SECRET,
            FTBRIDGE_CHAT_URLS=f"json://bot:{CHAT_TOKEN}@127.0.0.1:{chat.port}/chat",
            FTBRIDGE_WEBHOOK_ALLOW_PRIVATE="true",
            FTBRIDGE_NOTIFY_BACKFILL="true",  # jobs that end before the first look notify too
        )
        proc = bridge.start("run")
        wait_until(lambda: bridge.all_synced(3), 90, "every job of both sources synced")
        changes = [line for line in bridge.logs() if line.get("event") == "job.status"]
        received = hooks.wait_for(len(changes), timeout=30)
        chats = chat.wait_for(len(changes) + 1, timeout=60)  # + the failed first attempt
        assert bridge.stop(proc) == 0

    assert any(line.get("level") == "debug" for line in bridge.logs()), "debug lines checked"
    assert all(r.verified for r in received)
    assert any("Basic" in c.headers.get("authorization", "") for c in chats), (
        "the chat token was used"
    )

    log = bridge.raw_log()
    wandb_files = list(files_under(bridge.wandb_dir / "wandb"))
    runs = [
        read_run(path)
        for job_id in ("ftjob-s-ok", "ftjob-s-bad", "ftjob-s-other")
        for path in find_run_files(bridge.wandb_dir, job_id)
    ]
    assert len(runs) == 3 and any(run.alerts for run in runs)
    decoded = json.dumps(
        [
            [r.config, r.summary, r.history, r.alerts, r.artifacts, r.tags, r.display_name]
            for r in runs
        ],
        default=str,
    )
    for secret in secrets:
        assert secret not in log, f"{secret[:8]}... in the log"
        assert secret not in decoded, f"{secret[:8]}... in a W&B config/summary/history"
        for path in wandb_files:  # .wandb files, wandb's own debug logs, metadata
            assert secret.encode() not in path.read_bytes(), f"{secret[:8]}... in {path}"
        for r in received:
            assert secret.encode() not in r.body, f"{secret[:8]}... in a webhook body"
        for c in chats:
            assert secret.encode() not in c.body, f"{secret[:8]}... in a chat body"

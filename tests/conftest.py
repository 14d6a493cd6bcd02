"""Shared fixtures: the emulator in-process, the bridge as a subprocess, waiting helpers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.emulator import Emulator, JobScenario, Scenario
from bridge.store import SqlStore

API_KEY = "sk-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """In-process runs configure structlog globally (level, renderer); give the next test
    the defaults back, so that ``capture_logs`` sees every level."""
    yield
    structlog.reset_defaults()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def new_emulator(jobs: list[JobScenario], time_scale: float = 1.0, **kwargs: Any) -> Emulator:
    """A started emulator that wants ``API_KEY``; stop it when done."""
    emulator = Emulator(
        Scenario(jobs=jobs, time_scale=time_scale, seed=7), api_key=API_KEY, **kwargs
    )
    emulator.start()
    return emulator


@pytest.fixture
def start_emulator() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def start(jobs: list[JobScenario], time_scale: float = 1.0, **kwargs: Any) -> Emulator:
        emulator = new_emulator(jobs, time_scale, **kwargs)
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@dataclass
class BridgeProcess:
    """``ftbridge`` run as a user would: a subprocess with its environment."""

    workdir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def wandb_dir(self) -> Path:
        return self.workdir

    @property
    def db_path(self) -> Path:
        return self.workdir / "state.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / "bridge.log"

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", *(args or ("run",))],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=log,
                # Its own process group: wandb-core, its child, can be killed with it.
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def kill_tree(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the bridge and every process it started (wandb-core), as a lost node
        or an OOM kill of the container would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge.cli", *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            # What the bridge was doing when it did not stop: the failure says it.
            tail = "\n".join(self.raw_log().splitlines()[-25:])
            raise AssertionError(
                f"the bridge did not stop within 40 s; its log ends:\n{tail}"
            ) from None

    def kill_all(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def store(self) -> SqlStore:
        return SqlStore(f"sqlite:///{self.db_path}")

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def raw_log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def starts(self) -> int:
        """How many daemons started so far (each logs ``daemon.started`` once)."""
        return self.raw_log().count('"daemon.started"')

    def start_and_wait(self, *args: str, timeout: float = 60) -> subprocess.Popen[bytes]:
        """Start the daemon and return once it logged its start."""
        before = self.starts()
        proc = self.start(*args)
        wait_until(lambda: self.starts() > before, timeout, "the daemon started")
        return proc

    def started(self) -> bool:
        return '"daemon.started"' in self.raw_log() or "sync." in self.raw_log()

    def all_synced(self, n_jobs: int) -> bool:
        if not self.started():
            return False
        store = self.store()
        try:
            jobs = store.all_jobs()
            return len(jobs) >= n_jobs and all(j.synced for j in jobs)
        finally:
            store.close()


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """wandb in offline mode for the tests of a module that call ``wandb.init`` in process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.delenv("WANDB_SILENT", raising=False)  # set but empty makes init raise
        yield


@pytest.fixture
def bridge_process(tmp_path: Path) -> Iterator[Callable[..., BridgeProcess]]:
    made: list[BridgeProcess] = []

    def make(emulator: Emulator | str, **extra: str) -> BridgeProcess:
        process = new_bridge_process(tmp_path, emulator, **extra)
        made.append(process)
        return process

    yield make
    for process in made:
        process.kill_all()


def new_bridge_process(workdir: Path, emulator: Emulator | str, **extra: str) -> BridgeProcess:
    """``ftbridge`` against the emulator, offline W&B and SQLite in ``workdir``."""
    base_url = emulator if isinstance(emulator, str) else emulator.base_url
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "OPENAI_"))}
    env.pop("FTBRIDGE_CONFIG", None)
    env.update(
        {
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_BASE_URL": base_url,
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(workdir),
            "WANDB_PROJECT": "e2e",
            "FTBRIDGE_DATABASE_URL": f"sqlite:///{workdir / 'state.db'}",
            "FTBRIDGE_POLL_INTERVAL": "0.5",
            "FTBRIDGE_LOG_FORMAT": "json",
            "FTBRIDGE_REQUEST_TIMEOUT": "5",
            "FTBRIDGE_MAX_RETRIES": "0",
            "FTBRIDGE_BACKOFF_MAX": "2",
            **extra,
        }
    )
    return BridgeProcess(workdir, env)

"""wandb-core's Go runtime settings (GC target, soft memory limit) as the bridge starts it:
read from the environment of the real wandb-core process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import os, sys, psutil
from bridge.app import wandb_options
from bridge.mapping import RunSpec
from bridge.settings import load_settings
from bridge.sink_wandb import WandbSink
sink = WandbSink(wandb_options(load_settings(None)))
sink.open(RunSpec(run_id="probe", project="p", entity=None, name="probe", tags=(), config={}))
core = [p for p in psutil.Process().children(recursive=True) if p.name() == "wandb-core"]
env = core[0].environ()
print(env.get("GOGC"), env.get("GOMEMLIMIT"))
sink.finish("probe", 0)
"""


def _core_env(tmp_path: Path, **env: str) -> list[str]:
    tmp_path.mkdir()
    base = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "FTBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}",
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**base, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()[-2:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_wandb_core_gets_the_gc_target_and_the_memory_limit_when_set(tmp_path: Path) -> None:
    assert _core_env(tmp_path / "a") == ["10", "None"]
    assert _core_env(tmp_path / "b", FTBRIDGE_WANDB_CORE_MEMORY_LIMIT="170") == ["10", "170MiB"]
    # The operator's own Go settings win.
    assert _core_env(
        tmp_path / "c", FTBRIDGE_WANDB_CORE_MEMORY_LIMIT="170", GOGC="50", GOMEMLIMIT="1GiB"
    ) == ["50", "1GiB"]

"""The `wandb_server` fixture: a `WandbServer` per test, and a W&B environment kept off $HOME.

Import the fixture into a test module (`from tests.wandb_server import wandb_server_fixture`);
after the test it fails if the installed wandb sent a GraphQL operation the server does not know.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wandb

from bridge.sink_wandb import WandbOptions, quiet_settings
from bridge.testing import WandbServer


def wandb_env(home: Path, server: WandbServer | None = None) -> dict[str, str]:
    """An environment for a wandb subprocess: no WANDB_* from outside, config and cache in
    `home`; with `server`, its URL and key as WANDB_BASE_URL / WANDB_API_KEY."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "HOME": str(home),
            "WANDB_CONFIG_DIR": str(home / ".config" / "wandb"),
            "WANDB_CACHE_DIR": str(home / ".cache" / "wandb"),
            "WANDB_DATA_DIR": str(home / ".local" / "wandb"),
            "WANDB_DIR": str(home),
        }
    )
    if server is not None:
        env["WANDB_BASE_URL"] = server.url
        env["WANDB_API_KEY"] = server.api_key
    return env


def online_settings(server: WandbServer, **extra: Any) -> Any:
    """`wandb.Settings` for a quiet online run against `server` that uploads every second."""
    options: dict[str, Any] = {
        "mode": "online",
        "base_url": server.url,
        "api_key": server.api_key,
        "x_file_stream_transmit_interval": 1,
        "init_timeout": 60,
        "finish_timeout": 90,
        "finish_timeout_raises": True,
        **extra,
    }
    settings = quiet_settings(**{k: v for k, v in options.items() if k != "console"})
    settings.console = options.get("console", "off")
    return settings


def online_options(server: WandbServer, directory: Path, init_timeout: float = 10) -> WandbOptions:
    """The bridge's W&B options for runs online to `server`, uploading every second."""
    return WandbOptions(
        mode="online",
        directory=directory,
        api_key=server.api_key,
        base_url=server.url,
        init_timeout=init_timeout,
        finish_timeout=30,
        upload_interval=1,
    )


@pytest.fixture(name="wandb_server")
def wandb_server_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WandbServer]:
    """A started server; wandb's files and config under `tmp_path`."""
    home = tmp_path / "home"
    home.mkdir()
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    for key, value in wandb_env(home).items():
        if key == "HOME" or key.startswith("WANDB_"):
            monkeypatch.setenv(key, value)
    server = WandbServer()
    server.start()
    try:
        yield server
    finally:
        if wandb.run is not None:
            wandb.finish()
        server.stop()
    assert server.unknown_operations == [], (
        f"wandb {wandb.__version__} sent GraphQL operations the test server does not answer: "
        f"{server.unknown_operations}"
    )

"""The samples' settings per source and per route (TOML): the most specific wins, key by key;
a bad value is one clear line naming the key and the table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.app import build_bridge
from bridge.errors import ConfigError
from bridge.evals.bounds import Bounds, bounds_of
from bridge.group import BridgeGroup
from bridge.routing import Route
from bridge.settings import load_settings
from bridge.sources import routes_of, source_configs

CONFIG = """
eval_max_tokens = 64
database_url = "sqlite:///{db}"
wandb_mode = "offline"
wandb_dir = "{dir}"

[[sources]]
name = "research"
api_key = "sk-research"
base_url = "http://127.0.0.1:9/v1"
eval_samples = 5
eval_token_budget = 2000

[[sources]]
name = "quiet"
api_key = "sk-quiet"
base_url = "http://127.0.0.1:9/v1"

[[routes]]
models = ["gpt-4.1*"]
project = "big"
eval_samples = 2
eval_deadline = 30

[[routes]]
metadata = {{ team = "nlp" }}
eval_samples = 0
"""


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ftbridge.toml"
    path.write_text(text)
    return path


def test_route_over_source_over_global_key_by_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    path = toml(tmp_path, CONFIG.format(db=tmp_path / "state.db", dir=tmp_path))
    built = build_bridge(load_settings(path), environ={}, claim_lock=False)
    assert isinstance(built, BridgeGroup)
    research, quiet = built.bridges
    assert research.sampler is not None
    of = research.sampler.bounds_of
    assert of({"model": "gpt-4o-mini"}) == Bounds(5, 64, 2000, 120.0)
    assert of({"model": "gpt-4.1-2025-04-14"}) == Bounds(2, 64, 2000, 30.0)
    assert of({"model": "gpt-4o", "metadata": {"team": "nlp"}}).limit == 0  # a route turns it off
    # Off for the quiet source's jobs but where a route turns it on.
    assert quiet.sampler is not None
    assert quiet.sampler.bounds_of({"model": "gpt-4o-mini"}).limit == 0
    assert quiet.sampler.bounds_of({"model": "gpt-4.1"}) == Bounds(2, 64, 100_000, 30.0)
    built.store.close()


def test_without_any_eval_setting_nothing_samples() -> None:
    of = bounds_of(Bounds(), [Route(project="x")])
    assert of({"model": "m"}) == Bounds()


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"eval_samples": 500}, "eval_samples: Input should be less than or equal to 200"),
        ({"eval_samples": "many"}, "eval_samples: Input should be a valid integer"),
        ({"eval_max_tokens": 0}, "eval_max_tokens: Input should be greater than or equal to 1"),
        ({"eval_token_budget": -5}, "eval_token_budget: Input should be greater than or equal"),
        ({"eval_deadline": float("inf")}, "eval_deadline: Input should be a finite number"),
        ({"eval_sample": 3}, "eval_sample: Extra inputs are not permitted"),
    ],
)
def test_a_bad_value_names_the_key_and_the_table(table: dict[str, Any], says: str) -> None:
    source = {"name": "research", "api_key": "sk-x", **table}
    with pytest.raises(ConfigError) as raised:
        source_configs(load_settings(sources=[source]))
    assert str(raised.value).startswith("source 'research': ")
    assert says in str(raised.value)
    route = {"project": "big", **table}
    with pytest.raises(ConfigError) as raised:
        routes_of(load_settings(sources=[{"name": "a", "api_key": "k"}], routes=[route]))
    assert str(raised.value).startswith("route #1 (project 'big'): ")
    assert says in str(raised.value)
    assert "sk-x" not in str(raised.value)

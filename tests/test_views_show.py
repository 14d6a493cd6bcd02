"""``ftbridge show``: the curves of supervised, DPO and RFT jobs (with and without validation
metrics, OpenAI's and Together's metric names) from a real store, in the terminal and as a
PNG read back by a real decoder."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from bridge.cli import main
from bridge.errors import BridgeError
from bridge.views.board import Point
from bridge.views.curves import charts, family
from bridge.views.reader import job_curves
from bridge.views.show import MissingExtra, run_show, write_png
from tests.views_store import NOW, Scenario, job

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    s = Scenario(tmp_path / "state.db")
    s.start()
    s.advance()
    together = job("ft-together", "running", "llama-3-8b", NOW, provider="together")
    s.store.record_job("together", together)
    s.store.add_events(
        "ft-together",
        [
            {
                "id": f"t-{i}",
                "type": "metrics",
                "created_at": NOW + i,
                "data": {"step": i, "train/loss": 3.0 / i, "eval/loss": 3.3 / i},
            }
            for i in range(1, 11)
        ],
    )
    yield s
    s.close()


def shown(scenario: Scenario, job_id: str, **kwargs: object) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    assert run_show(scenario.store.engine, job_id, console, **kwargs) == 0  # type: ignore[arg-type]
    return console.export_text()


def test_supervised_job_with_validation(scenario: Scenario) -> None:
    text = shown(scenario, "ftjob-sft")
    assert "─ loss " in text and "─ mean_token_accuracy " in text
    assert "train_loss (0.0667)" in text and "valid_loss (0.0733)" in text
    assert "▲ checkpoint" in text and "step 10" in text, "checkpoint at step 10 marked"
    assert sum(0x2801 <= ord(c) <= 0x28FF for c in text) > 50, "braille dots drawn"
    assert "succeeded" in text and "gpt-4.1" in text, "job, config and summary beside"


def test_dpo_job_without_validation(scenario: Scenario) -> None:
    text = shown(scenario, "ftjob-dpo")
    assert "─ loss " in text and "─ dpo_margin " in text and "─ chosen_logprob " in text
    assert "valid_loss" not in text
    assert "▲ checkpoint" not in text, "no checkpoint known"


def test_rft_job_rewards(scenario: Scenario) -> None:
    text = shown(scenario, "ft-rft")
    assert "─ reward_mean " in text
    assert "train_reward_mean" in text and "valid_reward_mean" in text
    assert "─ scores/exact/reward_mean " in text, "a grader's own chart"


def test_together_metric_names_share_a_chart(scenario: Scenario) -> None:
    text = shown(scenario, "ft-together", metric="loss")
    assert "train/loss (0.3)" in text and "eval/loss (0.33)" in text
    assert text.count("╭─") == 1, "only the chart asked for"


def test_metric_picks_one_key(scenario: Scenario) -> None:
    text = shown(scenario, "ftjob-sft", metric="valid_loss")
    assert "valid_loss" in text and "train_loss (" not in text


def test_unknown_metric_and_job_are_one_line(scenario: Scenario) -> None:
    with pytest.raises(BridgeError, match=r"has no metric 'nope'; it has: .*train_loss"):
        shown(scenario, "ftjob-sft", metric="nope")
    with pytest.raises(BridgeError, match="no job 'ftjob-none'"):
        shown(scenario, "ftjob-none")


def test_png_is_a_real_image(scenario: Scenario, tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    shown(scenario, "ftjob-sft", png=path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        assert image.size == (1280, 360), "two charts side by side"
    one = tmp_path / "loss.png"
    curves = job_curves(scenario.store.engine, "ft-rft")
    assert curves is not None
    write_png(curves, one, metric="reward_mean")
    with Image.open(one) as image:
        assert image.size == (640, 360)
    print(f"charts written to {path} and {one}")


def test_png_without_matplotlib_says_what_to_install(
    scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    curves = job_curves(scenario.store.engine, "ftjob-sft")
    assert curves is not None
    with pytest.raises(MissingExtra, match=r"pip install 'ftbridge\[plots\]'"):
        write_png(curves, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_the_command(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FTBRIDGE_CONFIG", raising=False)
    monkeypatch.setenv("FTBRIDGE_DATABASE_URL", scenario.url)
    monkeypatch.setenv("COLUMNS", "150")
    assert main(["show", "ftjob-dpo", "--metric", "loss"]) == 0
    assert "train_loss" in capsys.readouterr().out
    assert main(["show", "ftjob-none"]) == 1
    assert capsys.readouterr().err.startswith("ftbridge: error: no job 'ftjob-none'")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("train_loss", ("loss", "train")),
        ("full_valid_mean_token_accuracy", ("mean_token_accuracy", "full_valid")),
        ("eval/loss", ("loss", "eval")),
        ("scores/exact/train_reward_mean", ("scores/exact/reward_mean", "train")),
        ("usage/prompt_tokens_mean", ("usage/prompt_tokens_mean", "")),
    ],
)
def test_family(key: str, expected: tuple[str, str]) -> None:
    assert family(key) == expected


def test_loss_comes_first_and_train_before_valid() -> None:
    points = [
        Point(
            1,
            {
                "valid_loss": 1.0,
                "train_loss": 1.1,
                "a_thing": 2.0,
                "train_mean_token_accuracy": 0.5,
            },
        )
    ]
    specs = charts(points)
    assert [s.name for s in specs] == ["loss", "mean_token_accuracy", "a_thing"]
    assert [s.key for s in specs[0].series] == ["train_loss", "valid_loss"]

"""bridge.wandbfile against `.wandb` files written by the real wandb SDK, offline."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import wandb

from bridge.wandbfile import (
    FILE_HEADER,
    RunLog,
    WandbFileError,
    find_run_files,
    iter_records,
    merge,
    read_merged,
    read_run,
    steps,
    wait_for_exit,
    wait_for_exit_record,
)

BIG_NOTE = "x" * 70_000  # a config value spanning three 32 KiB blocks (FIRST, MIDDLE, LAST)
ROWS: list[dict[str, Any]] = [
    {"_step": 1, "train_loss": 2.5, "train_mean_token_accuracy": 0.25, "phase": "warmup"},
    {"_step": 2, "train_loss": float("nan"), "valid_loss": float("inf")},
    {"_step": 5, "train_loss": 1.25, "scores": {"train_reward_mean": 0.5}},
    {"_step": 6, "train_loss": 1.0, "done": True},
]


@dataclass(frozen=True)
class Written:
    root: Path
    path: Path


def _settings() -> Any:
    return wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True)


@pytest.fixture(scope="module")
def written(offline: None, tmp_path_factory: pytest.TempPathFactory) -> Written:
    root = tmp_path_factory.mktemp("wandb")
    run: Any = wandb.init(
        mode="offline",
        id="ftjob-abc",
        dir=root,
        project="ft-project",
        entity="ft-team",
        name="gpt-mini ft",
        tags=["openai", "supervised"],
        config={"n_epochs": 3, "model": "gpt-mini", "note": BIG_NOTE},
        reinit="create_new",
        settings=_settings(),
    )
    run.define_metric("train_loss", step_metric="_step")
    for row in ROWS:
        run.log({k: v for k, v in row.items() if k != "_step"}, step=row["_step"])
    run.log({"train_loss": 9.0}, step=3)  # lower than the current step: dropped by wandb
    run.config.update({"n_epochs": 4, "suffix": "x"}, allow_val_change=True)
    run.summary.update({"fine_tuned_model": "ft:gpt-mini:abc"})
    run.alert(title="job failed", text="ftjob-abc failed", level="ERROR")
    artifact = wandb.Artifact("ftjob-abc-results", type="result", metadata={"rows": 4})
    with artifact.new_file("results.csv") as file:
        file.write("step,train_loss\n1,2.5\n")
    artifact.add_reference("https://example.com/ckpt", name="checkpoint", checksum=False)
    run.log_artifact(artifact, aliases=["latest", "final"])
    path = Path(run.settings.sync_file)
    run.finish(exit_code=3)
    wait_for_exit(path)  # finish() returns just before the file's tail is written
    return Written(root, path)


@pytest.fixture(scope="module")
def log(written: Written) -> RunLog:
    return read_run(written.path)


def nan_safe(value: Any) -> Any:
    """NaN != NaN: make rows comparable with ==."""
    if isinstance(value, dict):
        return {k: nan_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_safe(v) for v in value]
    return "NaN" if isinstance(value, float) and math.isnan(value) else value


def test_run_identity(log: RunLog) -> None:
    assert (log.run_id, log.project, log.entity) == ("ftjob-abc", "ft-project", "ft-team")
    assert log.display_name == "gpt-mini ft"
    assert log.tags == ("openai", "supervised")


def test_config_merges_updates(log: RunLog) -> None:
    assert log.config == {"n_epochs": 4, "model": "gpt-mini", "note": BIG_NOTE, "suffix": "x"}


def test_every_history_row(log: RunLog) -> None:
    assert nan_safe(log.history) == nan_safe(ROWS)
    assert log.steps == [1, 2, 5, 6]
    assert math.isinf(log.history_by_step[2]["valid_loss"])


def test_steps_reads_the_file(written: Written) -> None:
    assert steps(written.path) == [1, 2, 5, 6]


def test_summary_exit_code_alert_metric(log: RunLog) -> None:
    assert log.summary["fine_tuned_model"] == "ft:gpt-mini:abc"
    assert log.summary["train_loss"] == 1.0
    assert log.summary["_step"] == 6
    assert log.exit_code == 3
    assert log.alerts == [{"title": "job failed", "text": "ftjob-abc failed", "level": "ERROR"}]
    assert {"name": "train_loss", "step_metric": "_step"} in log.metrics


def test_artifact(log: RunLog) -> None:
    (artifact,) = log.artifacts
    assert (artifact["name"], artifact["type"]) == ("ftjob-abc-results", "result")
    assert sorted(artifact["aliases"]) == ["final", "latest"]  # wandb keeps no order
    assert artifact["metadata"] == {"rows": 4}
    entries = {entry["path"]: entry for entry in artifact["entries"]}
    assert entries["results.csv"]["size"] == len("step,train_loss\n1,2.5\n")
    assert entries["results.csv"]["ref"] is None
    assert entries["checkpoint"]["ref"] == "https://example.com/ckpt"


def test_truncated_at_any_byte_yields_a_prefix(written: Written, tmp_path: Path) -> None:
    data = written.path.read_bytes()
    full = [r.SerializeToString() for r in iter_records(written.path)]
    assert len(data) > 2 * 32 * 1024  # cuts fall in all three blocks and inside BIG_NOTE
    cut_file, seen = tmp_path / "run-ftjob-abc.wandb", 0
    for cut in [*range(0, len(data), 97), len(data) - 1]:
        cut_file.write_bytes(data[:cut])
        got = [r.SerializeToString() for r in iter_records(cut_file)]
        assert got == full[: len(got)]
        assert len(got) >= seen  # more bytes never mean fewer records
        seen = len(got)
    assert seen == len(full) - 1  # one byte short loses exactly the last record


def test_the_exit_record_is_found_from_the_tail_as_a_whole_read_finds_it(
    written: Written, tmp_path: Path
) -> None:
    """``wait_for_exit_record`` reads only the last two blocks: at every cut of a file
    whose first record spans three blocks, it says what reading the whole file says."""
    data = written.path.read_bytes()
    cut_file = tmp_path / "run-ftjob-abc.wandb"
    ends = 0
    for cut in [*range(len(FILE_HEADER), len(data), 97), len(data) - 1, len(data)]:
        cut_file.write_bytes(data[:cut])
        records = list(iter_records(cut_file))
        whole = bool(records) and records[-1].WhichOneof("record_type") == "exit"
        try:
            wait_for_exit_record(cut_file, timeout=0)
        except TimeoutError:
            tail = False
        else:
            tail = True
        assert tail == whole, cut
        ends += tail
    assert ends >= 1  # the whole file ends with its exit record


def test_corrupt_byte_stops_reading_there(written: Written, tmp_path: Path) -> None:
    """A bad chunk ends the log: nothing after it is read, even in later blocks."""
    data = bytearray(written.path.read_bytes())
    full = [r.SerializeToString() for r in iter_records(written.path)]
    middle = len(data) // 2
    data[middle] ^= 0xFF
    broken = tmp_path / "run-ftjob-abc.wandb"
    broken.write_bytes(bytes(data))
    got = [r.SerializeToString() for r in iter_records(broken)]
    assert got == full[: len(got)]
    assert 0 < len(got) < len(full)


def test_empty_or_torn_header_means_no_records(tmp_path: Path) -> None:
    path = tmp_path / "run-ftjob-empty.wandb"
    for size in range(len(FILE_HEADER) + 1):
        path.write_bytes(FILE_HEADER[:size])
        assert list(iter_records(path)) == []
    assert read_run(path).run_id == "ftjob-empty"
    assert read_run(path).exit_code is None


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"SQLite format 3\x00", "not a W&B transaction log"), (FILE_HEADER[:6] + b"\x07", "version")],
)
def test_not_a_wandb_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "run-x.wandb"
    path.write_bytes(content + bytes(100))
    with pytest.raises(WandbFileError, match=message) as raised:
        list(iter_records(path))
    assert str(path) in str(raised.value)
    assert isinstance(raised.value, ValueError)


@pytest.fixture(scope="module")
def segments(offline: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two processes' worth of one run id: the second re-inits it, as after a crash."""
    root = tmp_path_factory.mktemp("segments")
    for first_step, last_step, exit_code in ((1, 3, 1), (3, 5, 0)):
        run: Any = wandb.init(
            mode="offline",
            id="ftjob-seg",
            dir=root,
            project="ft",
            config={"attempt": first_step},
            reinit="create_new",
            settings=_settings(),
        )
        for step in range(first_step, last_step + 1):
            run.log({"loss": step / 10, "attempt": first_step}, step=step)
        path = run.settings.sync_file
        run.finish(exit_code=exit_code)
        wait_for_exit(path)
    return root


def test_find_run_files_orders_segments(segments: Path) -> None:
    files = find_run_files(segments, "ftjob-seg")
    assert len(files) == 2
    assert [read_run(f).config["attempt"] for f in files] == [1, 3]
    assert find_run_files(segments, "ftjob") == []
    assert find_run_files(segments, "seg") == []


def test_find_run_files_sorts_by_folder_time_then_suffix(segments: Path) -> None:
    source = find_run_files(segments, "ftjob-seg")[0]
    names = [
        "offline-run-20260102_000000-ftjob-seg",
        "offline-run-20260101_000000-ftjob-seg-1",
        "run-20260101_000000-ftjob-seg",
    ]
    for name in names:
        (segments / "copies" / "wandb" / name).mkdir(parents=True)
        shutil.copy(source, segments / "copies" / "wandb" / name / source.name)
    found = [f.parent.name for f in find_run_files(segments / "copies", "ftjob-seg")]
    assert found == [names[2], names[1], names[0]]


def test_read_merged_appends_segments(segments: Path) -> None:
    merged = read_merged(segments, "ftjob-seg")
    assert merged.steps == [1, 2, 3, 4, 5]
    assert merged.history_by_step[3]["attempt"] == 1  # step 3 again: not above 3, dropped
    assert merged.history_by_step[4]["attempt"] == 3
    assert merged.config == {"attempt": 3}
    assert merged.exit_code == 0


def test_wait_for_exit_times_out_on_an_unfinished_run(tmp_path: Path) -> None:
    path = tmp_path / "run-ftjob-live.wandb"
    path.write_bytes(FILE_HEADER)
    with pytest.raises(TimeoutError, match="no exit record"):
        wait_for_exit(path, timeout=0.05)


def test_read_merged_without_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ftjob-none"):
        read_merged(tmp_path, "ftjob-none")


def _segment(history: list[dict[str, Any]], exit_code: int | None, **fields: Any) -> RunLog:
    base: dict[str, Any] = dict(run_id="r", project="", entity="", display_name="", tags=())
    base |= dict(config={}, summary={}, alerts=[], artifacts=[], metrics=[])
    return RunLog(**(base | fields), history=history, exit_code=exit_code)


def test_merge_keeps_later_names_and_drops_old_steps() -> None:
    first = _segment(
        [{"_step": 1}, {"_step": 4}], 1, project="p", tags=("a",), summary={"x": 1, "y": 1}
    )
    second = _segment([{"_step": 2}, {"_step": 4}, {"_step": 7}], None, summary={"y": 2})
    merged = merge([first, second])
    assert merged.steps == [1, 4, 7]
    assert (merged.project, merged.tags) == ("p", ("a",))
    assert merged.summary == {"x": 1, "y": 2}
    assert merged.exit_code is None  # the last segment never finished
    with pytest.raises(ValueError, match="no segments"):
        merge([])

"""The run folders index (bridge.folder_index): the same answers as globbing, one listing."""

from __future__ import annotations

from pathlib import Path

from bridge.folder_index import FolderIndex
from bridge.wandbfile import run_folders

IDS = ["ftjob-a", "ftjob-a-2", "ftjob-ab", "ftjob-7", "ftjob-b"]
NAMES = [
    "offline-run-20261201_100000-ftjob-a",
    "offline-run-20261201_100000-ftjob-a-1",  # ftjob-a, second folder of that second
    "offline-run-20261201_090000-ftjob-a",  # older
    "run-20261201_110000-ftjob-a",  # online
    "offline-run-20261201_100000-ftjob-a-2",  # ftjob-a's third, or the id ftjob-a-2
    "offline-run-20261201_100500-ftjob-ab",  # an id ftjob-a is a prefix of
    "offline-run-20261201_100000-ftjob-7",
    "offline-run-20261201_100000-ftjob-7-3",
    "latest-run",
    "debug.log",
    "offline-run-bad-ftjob-a",
]


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "wandb"
    root.mkdir()
    for name in NAMES:
        if name.endswith(".log"):
            (root / name).write_text("x")
        else:
            (root / name).mkdir()
    return tmp_path


def test_each_run_ids_folders_are_those_a_glob_finds_in_the_same_order(tmp_path: Path) -> None:
    wandb_dir = _tree(tmp_path)
    index = FolderIndex(wandb_dir)
    for run_id in IDS:
        assert index.folders(run_id) == run_folders(wandb_dir, run_id), run_id
    assert [p.name for p in index.folders("ftjob-a")] == [
        "offline-run-20261201_090000-ftjob-a",
        "offline-run-20261201_100000-ftjob-a",
        "offline-run-20261201_100000-ftjob-a-1",
        "offline-run-20261201_100000-ftjob-a-2",
        "run-20261201_110000-ftjob-a",
    ]
    assert index.listings == 1


def test_a_folder_made_here_is_known_at_once_and_others_after_a_new_pass(tmp_path: Path) -> None:
    wandb_dir = _tree(tmp_path)
    index = FolderIndex(wandb_dir)
    assert index.folders("ftjob-c") == []
    mine = wandb_dir / "wandb" / "offline-run-20261201_120000-ftjob-c"
    mine.mkdir()
    index.add(mine)
    theirs = wandb_dir / "wandb" / "offline-run-20261201_120000-ftjob-b"
    theirs.mkdir()  # another process's, unseen until the next pass
    assert index.folders("ftjob-c") == [mine]
    assert theirs not in index.folders("ftjob-b")
    index.stale()
    assert index.folders("ftjob-b") == run_folders(wandb_dir, "ftjob-b")
    assert theirs in index.folders("ftjob-b")
    assert index.listings == 2


def test_no_wandb_folder_yet_means_no_runs(tmp_path: Path) -> None:
    assert FolderIndex(tmp_path).folders("ftjob-a") == []

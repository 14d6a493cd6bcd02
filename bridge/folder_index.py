"""Which run folders each run id has under ``<wandb dir>/wandb/``, from one listing.

Every run opened offline is a folder in one directory. Before each open the sink needs the
run id's earlier folders (segments to make whole for ``wandb sync``, and what a failed init
left). Globbing the directory for each open read every entry each time: 3.5 ms an open at
2,000 folders, O(jobs squared) for a backfill of years of jobs. The index lists the
directory once and then answers from memory; folders this process opens are added as they
are made.

It is listed again after :meth:`FolderIndex.stale`, which the engine says at the start of
each pass once it holds its jobs' leases: another process (a replica that held a job
before, an earlier process killed mid-open) makes a job's folders only while it holds the
job, so a listing taken after the leases are held has every folder of the jobs held.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from bridge.wandbfile import in_order, run_id_candidates


class FolderIndex:
    def __init__(self, wandb_dir: str | Path) -> None:
        self.root = Path(wandb_dir) / "wandb"
        self._by_id: dict[str, list[Path]] | None = None
        self._lock = threading.Lock()
        self.listings = 0

    def stale(self) -> None:
        """Folders may have been made by others since the last listing: list again on next use."""
        with self._lock:
            self._by_id = None

    def folders(self, run_id: str) -> list[Path]:
        """The run id's folders, oldest first, whether or not their ``.wandb`` file exists."""
        with self._lock:
            by_id = self._listed()
            return in_order(run_id, by_id.get(run_id, ()))

    def add(self, folder: Path) -> None:
        """A folder this process just made (a run it opened)."""
        with self._lock:
            if self._by_id is not None:
                self._file(self._by_id, folder)

    def _listed(self) -> dict[str, list[Path]]:
        if self._by_id is None:
            by_id: dict[str, list[Path]] = {}
            try:
                with os.scandir(self.root) as entries:
                    for entry in entries:
                        self._file(by_id, Path(entry.path))
            except FileNotFoundError:
                pass  # no run written here yet
            self._by_id = by_id
            self.listings += 1
        return self._by_id

    @staticmethod
    def _file(by_id: dict[str, list[Path]], folder: Path) -> None:
        for run_id in run_id_candidates(folder.name):
            known = by_id.setdefault(run_id, [])
            if folder not in known:
                known.append(folder)

"""The W&B sink online against the W&B test server: a failed init leaves no folder and, once
W&B answers again, does not keep its run id blocked while other runs are open; a reopened run
learns where the server's history ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.engine import Bridge
from bridge.errors import SinkUnavailable
from bridge.mapping import MetricRow, RunSpec, WandbDefaults
from bridge.memory import MemorySource
from bridge.ports import PlacedRow
from bridge.sink_wandb import WandbSink
from bridge.store import SqlStore
from bridge.testing import WandbServer
from tests.factories import job, metrics
from tests.wandb_server import online_options, wandb_server_fixture

pytestmark = pytest.mark.e2e

__all__ = ["wandb_server_fixture"]


def online_sink(server: WandbServer, directory: Path) -> WandbSink:
    return WandbSink(online_options(server, directory, init_timeout=3))


def spec(run_id: str) -> RunSpec:
    return RunSpec(run_id=run_id, project="p", entity=None, name=run_id, tags=())


def test_a_failed_init_blocks_nothing_once_w_and_b_is_back(
    wandb_server: WandbServer, tmp_path: Path
) -> None:
    source = MemorySource()
    for job_id in ("ftjob-a", "ftjob-b"):
        source.put_job(job(job_id))
        source.add_event(job_id, metrics(f"{job_id}-1", 1))
    sink = online_sink(wandb_server, tmp_path)
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    bridge = Bridge(source, sink, store, WandbDefaults(project="p"))
    sink.open(spec("ftjob-a"))
    wandb_server.refuse_connections()
    with pytest.raises(SinkUnavailable):
        sink.open(spec("ftjob-b"))
    assert not list((tmp_path / "wandb").glob("run-*-ftjob-b")), "no folder left behind"
    assert sink.blocked() == {"ftjob-b"}
    with pytest.raises(SinkUnavailable, match="unreachable"):
        sink.open(spec("ftjob-b"))  # while W&B does not answer: at once, no init wait
    wandb_server.accept_connections()
    bridge.unblock_sink()  # closes ftjob-a (it resumes) and restarts wandb-core
    assert sink.blocked() == set() and sink.open_runs() == []
    bridge.poll()
    for job_id in ("ftjob-a", "ftjob-b"):
        assert sink.is_open(job_id)
    bridge.close_runs()
    for job_id in ("ftjob-a", "ftjob-b"):
        run = wandb_server.run(job_id, project="p")
        assert run is not None and run.steps("step") == [1]


def test_a_reopened_run_resumes_where_the_server_ends(
    wandb_server: WandbServer, tmp_path: Path
) -> None:
    sink = online_sink(wandb_server, tmp_path)
    opened = sink.open(spec("ftjob-r"))
    assert opened.resumed_at == 0
    sink.log("ftjob-r", [PlacedRow(s, MetricRow(s, {"loss": 1.0 / (s + 1)})) for s in range(5)])
    sink.finish("ftjob-r", 143, preempted=True)
    again = sink.open(spec("ftjob-r"))
    assert again.resumed_at == 5
    sink.finish("ftjob-r", 0)
    run = wandb_server.run("ftjob-r", project="p")
    assert run is not None and run.steps() == [0, 1, 2, 3, 4]
    assert run.state == "finished" and run.exit_code == 0

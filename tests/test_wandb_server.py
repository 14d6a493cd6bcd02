"""The W&B test server against the real wandb SDK (online), the real `wandb sync` and the Public
API: no mocks. What each test checks is what the server holds afterwards."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import wandb
from wandb.sdk.wandb_alerts import AlertLevel

from bridge.testing import RunRecord, WandbServer
from bridge.testing.wandb_server import graphql
from bridge.testing.wandb_server.app import HANDLERS
from bridge.testing.wandb_server.runs import apply_file_stream, mark_crashed
from tests.conftest import wait_until
from tests.wandb_server import online_settings, wandb_env, wandb_server_fixture

__all__ = ["wandb_server_fixture"]  # the fixture, imported for pytest

PROJECT = "p"

# Logs rows start..end-1 (one per `delay` s) into run `run_id`, resumed if it exists; prints one
# JSON line after init.
WRITER = """
import json, sys, time, wandb
url, key, run_id, end, delay = sys.argv[1:6]
settings = wandb.Settings(
    mode="online", base_url=url, api_key=key, console="off", silent=True, x_disable_stats=True,
    x_disable_machine_info=True, x_disable_meta=True, x_save_requirements=False,
    disable_git=True, save_code=False, x_file_stream_transmit_interval=1, init_timeout=60,
)
run = wandb.init(project="p", id=run_id, resume="allow", settings=settings)
print(json.dumps({"resumed": run.resumed, "starting_step": run.starting_step}), flush=True)
for step in range(run.starting_step, int(end)):
    run.log({"loss": 1.0 / (step + 1), "row": step}, step=step, commit=True)
    time.sleep(float(delay))
run.finish()
"""


def start_writer(
    server: WandbServer, home: Path, run_id: str, end: int, delay: float
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, server.url, server.api_key, run_id, str(end), str(delay)],
        env=wandb_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: python and wandb-core
    )


def stored(server: WandbServer, run_id: str) -> RunRecord:
    run = server.run(run_id, project=PROJECT)
    assert run is not None, f"the server has no run {run_id}"
    return run


def history_length(server: WandbServer, run_id: str) -> int:
    run = server.run(run_id, project=PROJECT)
    return 0 if run is None else len(run.history)


def log_rows(run: Any, steps: range, pause: float = 0.0) -> None:
    for step in steps:
        run.log({"loss": 1.0 / (step + 1), "row": step}, step=step, commit=True)
        if pause:
            time.sleep(pause)


def test_online_run_is_stored_whole(wandb_server: WandbServer, tmp_path: Path) -> None:
    run: Any = wandb.init(
        project=PROJECT,
        id="online-1",
        name="Online one",
        tags=["ft", "test"],
        notes="a note",
        config={"lr": 0.1, "model": "gpt-4o-mini"},
        dir=tmp_path,
        settings=online_settings(wandb_server),
    )
    run.define_metric("row")
    run.define_metric("*", step_metric="row")
    log_rows(run, range(50))
    run.config.update({"batch_size": 8})
    run.summary.update({"best_loss": 0.02})
    run.alert(title="Job failed", text="ft-job-1 failed", level=AlertLevel.ERROR)
    model = wandb.Artifact("ft-model", type="model")
    model.add_reference("openai://ft:gpt-4o-mini:org::abc123", name="model", checksum=False)
    run.log_artifact(model, aliases=["best", "succeeded"]).wait()
    (tmp_path / "results.csv").write_text("step,train_loss\n1,0.5\n")
    results = wandb.Artifact("ft-results", type="results")
    results.add_file(str(tmp_path / "results.csv"))
    results.add(wandb.Table(columns=["step", "loss"], data=[[1, 0.5], [2, 0.4]]), "table")
    run.log_artifact(results, aliases=["final"])
    run.finish(exit_code=1)

    stored_run = stored(wandb_server, "online-1")
    assert stored_run.steps() == list(range(50))
    assert stored_run.steps("row") == list(range(50))
    assert stored_run.duplicates() == []
    assert stored_run.display_name == "Online one"
    assert stored_run.tags == ["ft", "test"]
    assert stored_run.notes == "a note"
    assert stored_run.config == {"lr": 0.1, "model": "gpt-4o-mini", "batch_size": 8}
    assert "t" in stored_run.wandb_config
    assert stored_run.summary["best_loss"] == 0.02
    assert stored_run.summary["_step"] == 49
    assert (stored_run.state, stored_run.exit_code) == ("failed", 1)
    assert [(a.title, a.text, a.severity) for a in stored_run.alerts] == [
        ("Job failed", "ft-job-1 failed", "ERROR")
    ]
    ref = stored_run.artifact("ft-model")
    assert ref is not None
    assert (ref.type, ref.version, ref.state) == ("model", 0, "COMMITTED")
    assert sorted(ref.aliases) == ["best", "latest", "succeeded"]
    assert ref.references == {"model": "openai://ft:gpt-4o-mini:org::abc123"}
    files = stored_run.artifact("ft-results")
    assert files is not None
    assert sorted(files.aliases) == ["final", "latest"]
    assert set(files.entries) == {"results.csv", "table.table.json"}
    assert files.files["results.csv"] == len("step,train_loss\n1,0.5\n")
    assert files.files["table.table.json"] > 0
    assert {"wandb-summary.json", "config.yaml"} <= set(stored_run.uploaded_files)
    assert stored_run.upserts >= 2


def test_public_api_reads_back_what_was_logged(wandb_server: WandbServer, tmp_path: Path) -> None:
    run = wandb.init(
        project=PROJECT,
        id="read-1",
        config={"lr": 0.5},
        dir=tmp_path,
        settings=online_settings(wandb_server),
    )
    log_rows(run, range(30))
    run.log({"eval": 1.0}, step=30, commit=True)
    run.finish()

    api = wandb.Api(api_key=wandb_server.api_key, overrides={"base_url": wandb_server.url})
    remote = api.run(f"{wandb_server.entity}/{PROJECT}/read-1")
    assert remote.summary["_step"] == 30
    assert remote.state == "finished"
    assert remote.config == {"lr": 0.5}
    assert remote.lastHistoryStep == 30
    loss_rows = list(remote.scan_history(keys=["loss"]))
    assert [r["_step"] for r in loss_rows] == list(range(30))  # rows that have every key
    assert len(list(remote.scan_history())) == 31
    assert len(remote.history(pandas=False)) == 31
    listed = api.runs(f"{wandb_server.entity}/{PROJECT}", filters={"name": {"$in": ["read-1"]}})
    assert [r.id for r in listed] == ["read-1"]
    assert list(api.runs(f"{wandb_server.entity}/{PROJECT}", filters={"state": "crashed"})) == []


@pytest.mark.e2e
def test_resume_after_kill_keeps_every_step_once(wandb_server: WandbServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    writer = start_writer(wandb_server, home, "resume-1", end=1000, delay=0.05)
    try:
        wait_until(lambda: history_length(wandb_server, "resume-1") >= 20, 60, "20 rows")
    finally:
        os.killpg(writer.pid, signal.SIGKILL)  # python and wandb-core, mid-run
        writer.wait()
    killed = stored(wandb_server, "resume-1")
    assert killed.state == "running"  # nobody said it ended
    assert killed.steps() == list(range(len(killed.history)))  # an in-order prefix

    again = start_writer(wandb_server, home, "resume-1", end=killed.last_step + 31, delay=0)
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 0
    opened = json.loads(output.splitlines()[0])
    assert opened == {"resumed": True, "starting_step": killed.last_step + 1}
    resumed = stored(wandb_server, "resume-1")
    assert resumed.steps() == list(range(killed.last_step + 31))
    assert resumed.duplicates() == []
    assert (resumed.state, resumed.exit_code) == ("finished", 0)
    assert "RunResumeStatus" in wandb_server.operations


@pytest.mark.e2e
def test_wandb_sync_uploads_offline_segments_in_order(
    wandb_server: WandbServer, tmp_path: Path
) -> None:
    folders: list[str] = []
    for segment, steps in enumerate([range(0, 10), range(10, 25)]):
        root = tmp_path / f"segment-{segment}"
        root.mkdir()
        run = wandb.init(
            project=PROJECT,
            id="offline-1",
            dir=root,
            config={"segment": segment},
            settings=online_settings(wandb_server, mode="offline"),
        )
        log_rows(run, steps)
        run.finish()
        folders.extend(str(p) for p in (root / "wandb").glob("offline-run-*"))
        time.sleep(1.1)  # folders are named, and synced, by their start second

    result = subprocess.run(
        ["wandb", "sync", "--entity", wandb_server.entity, "--project", PROJECT, *folders],
        env=wandb_env(tmp_path / "home", wandb_server),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        executable=str(Path(sys.executable).with_name("wandb")),
    )
    assert result.returncode == 0, result.stderr
    synced = stored(wandb_server, "offline-1")
    assert synced.steps() == list(range(25))
    assert synced.config == {"segment": 1}
    assert (synced.state, synced.exit_code) == ("finished", 0)


def test_artifact_use_console_and_preempting(wandb_server: WandbServer, tmp_path: Path) -> None:
    writer = wandb.init(
        project=PROJECT,
        id="producer-1",
        dir=tmp_path,
        settings=online_settings(wandb_server, console="wrap"),
    )
    print("hello from the job")  # console capture is under test
    for version, ref in enumerate(["openai://ft:a", "openai://ft:b", "openai://ft:b"]):
        model = wandb.Artifact("ft-model", type="model")
        model.add_reference(ref, name="model", checksum=False)
        logged = writer.log_artifact(model, aliases=[f"try-{version}"])
        logged.wait()
    writer.log({"loss": 1.0}, commit=True)
    writer.mark_preempting()
    wait_until(lambda: stored(wandb_server, "producer-1").preempting, 30, "preempting")
    assert stored(wandb_server, "producer-1").state == "preempting"
    writer.finish()
    produced = stored(wandb_server, "producer-1")
    assert any("hello from the job" in line for line in produced.logs)
    assert [a.version for a in produced.artifacts] == [0, 1]  # the same digest again: no v2
    newest = produced.artifact("ft-model")
    assert newest is not None
    assert sorted(newest.aliases) == ["latest", "try-1", "try-2"]
    assert produced.state == "finished"

    reader = wandb.init(
        project=PROJECT, id="consumer-1", dir=tmp_path, settings=online_settings(wandb_server)
    )
    used = reader.use_artifact("ft-model:try-0")
    assert (used.version, used.type) == ("v0", "model")
    reader.finish()
    assert stored(wandb_server, "consumer-1").used_artifacts == [produced.artifacts[0].id]


def test_gzip_bodies_are_read(wandb_server: WandbServer) -> None:
    lines = [json.dumps({"_step": i}) for i in range(3)]
    body = gzip.compress(
        json.dumps({"files": {"wandb-history.jsonl": {"offset": 0, "content": lines}}}).encode()
    )
    request = urllib.request.Request(  # noqa: S310 - our server
        f"{wandb_server.url}/files/{wandb_server.entity}/{PROJECT}/gz-1/file_stream",
        body,
        {"content-type": "application/json", "content-encoding": "gzip"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our server
        assert json.loads(response.read()) == {}
    assert stored(wandb_server, "gz-1").steps() == [0, 1, 2]


def run_through_fault(
    server: WandbServer, tmp_path: Path, run_id: str, fault: Any, heal: Any = None
) -> RunRecord:
    """Log 40 rows; break the server after row 10 and heal it after row 30; finish."""
    run = wandb.init(project=PROJECT, id=run_id, dir=tmp_path, settings=online_settings(server))
    log_rows(run, range(10), pause=0.05)
    wait_until(lambda: history_length(server, run_id) > 0, 30, "a first upload")
    fault()
    log_rows(run, range(10, 30), pause=0.05)
    if heal is not None:
        heal()
    log_rows(run, range(30, 40))
    run.finish()
    return stored(server, run_id)


def test_refused_connections_lose_nothing(wandb_server: WandbServer, tmp_path: Path) -> None:
    stored_run = run_through_fault(
        wandb_server,
        tmp_path,
        "refused-1",
        wandb_server.refuse_connections,
        wandb_server.accept_connections,
    )
    assert stored_run.steps() == list(range(40))
    assert stored_run.state == "finished"


def test_server_errors_are_retried(wandb_server: WandbServer, tmp_path: Path) -> None:
    stored_run = run_through_fault(
        wandb_server, tmp_path, "errors-1", lambda: wandb_server.fail(500, count=3)
    )
    assert stored_run.steps() == list(range(40))
    assert wandb_server.faults.state.status is None  # all three were used


def restart_and_stall(server: WandbServer) -> None:
    server.restart()
    server.stall(0.3)


def test_restart_and_stall_keep_data(wandb_server: WandbServer, tmp_path: Path) -> None:
    durable = WandbServer(data_dir=tmp_path / "data")
    durable.start()
    try:
        stored_run = run_through_fault(
            durable,
            tmp_path,
            "restart-1",
            lambda: restart_and_stall(durable),
            lambda: durable.stall(0),
        )
        assert stored_run.steps() == list(range(40))
        assert durable.unknown_operations == []
    finally:
        durable.stop()
    reloaded = WandbServer(data_dir=tmp_path / "data")
    assert reloaded.run("restart-1", project=PROJECT) == stored_run


def test_unknown_operation_is_answered_and_recorded() -> None:
    with WandbServer() as server:
        answer = post_json(f"{server.url}/graphql", {"query": "#graphql\nquery Bogus { x }"})
        assert answer == {"data": None, "errors": [{"message": "unknown operation Bogus"}]}
        assert server.unknown_operations == ["Bogus"]
        assert get_json(f"{server.url}/_test/operations")["unknown"] == ["Bogus"]


def test_every_operation_in_wandb_core_is_known() -> None:
    """Fails when an upgraded wandb-core can send an operation this server has not reviewed."""
    binary = Path(wandb.__file__).parent / "bin" / "wandb-core"
    names = set(re.findall(rb"(?:query|mutation) ([A-Z][A-Za-z]+) ?[({]", binary.read_bytes()))
    sent = {name.decode() for name in names}
    assert len(sent) > 20, "the operation names were not found in the wandb-core binary"
    unreviewed = sent - set(HANDLERS) - graphql.NOT_SERVED
    assert not unreviewed, (
        f"wandb-core {wandb.__version__} can send GraphQL operations the test server has no "
        f"answer for: {sorted(unreviewed)}"
    )


def post_json(url: str, payload: Any) -> Any:
    request = urllib.request.Request(  # noqa: S310 - our server
        url, json.dumps(payload).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our server
        return json.loads(response.read())


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our server
        return json.loads(response.read())


@pytest.mark.e2e
def test_server_process_keeps_state_across_restarts(tmp_path: Path) -> None:
    """`python -m bridge.testing.wandb_server` with a data dir, read and steered over HTTP."""
    command = [sys.executable, "-m", "bridge.testing.wandb_server", "--data-dir", str(tmp_path)]

    def start(port: int) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        return proc, proc.stdout.readline().split()[-1]

    proc, url = start(0)
    try:
        upsert = {
            "operationName": "UpsertBucket",
            "query": "mutation UpsertBucket { upsertBucket { bucket { id } } }",
            "variables": {"name": "r1", "project": PROJECT, "tags": ["x"]},
        }
        post_json(f"{url}/graphql", upsert)
        rows = [json.dumps({"_step": i}) for i in range(3)]
        body = {"files": {"wandb-history.jsonl": {"offset": 0, "content": rows}}}
        post_json(f"{url}/files/ftbridge-tests/{PROJECT}/r1/file_stream", body)
        post_json(f"{url}/_test/faults", {"status": 503, "count": 1})
        with pytest.raises(urllib.error.HTTPError) as refused:
            post_json(f"{url}/graphql", upsert)
        assert refused.value.code == 503
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    proc, url = start(int(url.rsplit(":", 1)[1]))
    try:
        run = get_json(f"{url}/_test/runs/ftbridge-tests/{PROJECT}/r1")
        assert [row["_step"] for row in run["history"]] == [0, 1, 2]
        assert run["tags"] == ["x"]
        assert [r["run_id"] for r in get_json(f"{url}/_test/runs")] == ["r1"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_file_stream_lines_overwrite_by_offset() -> None:
    run = RunRecord("e", "p", "r", storage_id="s")
    lines = [json.dumps({"_step": i}) for i in range(5)]
    apply_file_stream(run, {"files": {"wandb-history.jsonl": {"offset": 0, "content": lines}}}, 0)
    again = [json.dumps({"_step": i, "again": True}) for i in (3, 4, 5)]
    apply_file_stream(run, {"files": {"wandb-history.jsonl": {"offset": 3, "content": again}}}, 0)
    assert run.steps() == [0, 1, 2, 3, 4, 5]
    assert run.history[3]["again"]
    dup = [json.dumps({"_step": 1})]
    apply_file_stream(run, {"files": {"wandb-history.jsonl": {"offset": 6, "content": dup}}}, 0)
    assert run.duplicates() == [1]
    apply_file_stream(run, {"complete": True, "exitcode": 0, "preempting": False}, 0)
    assert (run.state, run.exit_code) == ("finished", 0)


def test_silent_run_is_crashed_until_it_streams_again() -> None:
    run = RunRecord("e", "p", "r", storage_id="s", heartbeat_at=100.0)
    mark_crashed(run, now=110.0, silence=30)
    assert run.state == "running"
    mark_crashed(run, now=131.0, silence=30)
    assert run.state == "crashed"
    apply_file_stream(run, {"files": {}}, now=140.0)
    assert run.state == "running"


def test_concurrent_runs_are_kept_apart(wandb_server: WandbServer, tmp_path: Path) -> None:
    """Same run id in two projects; requests from several threads."""
    errors: list[BaseException] = []

    def upsert(project: str) -> None:
        try:
            for i in range(20):
                post_json(
                    f"{wandb_server.url}/graphql",
                    {
                        "query": "mutation UpsertBucket { x }",
                        "variables": {"name": "same", "project": project, "notes": str(i)},
                    },
                )
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=upsert, args=(p,)) for p in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    runs = {r.project: r for r in wandb_server.runs()}
    assert set(runs) == {"a", "b"}
    assert {r.upserts for r in runs.values()} == {20}
    assert runs["a"].storage_id != runs["b"].storage_id

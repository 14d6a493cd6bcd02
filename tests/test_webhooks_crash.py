"""kill -9 of the bridge between the outbox write and the delivery: delivered after a restart,
under the same webhook-id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.ports import StatusChange
from bridge.store import SqlStore
from bridge.webhooks import Dispatcher, HttpSender, recent, status_event, targets_from_settings
from tests.factories import job
from tests.webhook_receiver import SECRET, Receiver, Reply

BRIDGE = textwrap.dedent(
    """
    import os, sys, time
    from bridge.ports import StatusChange
    from bridge.store import SqlStore
    from bridge.webhooks import Dispatcher, enqueue, status_event, targets_from_settings
    from tests.factories import job

    engine = SqlStore(os.environ["DB"]).engine
    targets = targets_from_settings([os.environ["URL"]], os.environ["SECRET"], allow_private=True)
    change = StatusChange("ftjob-k", "running", "succeeded", job("ftjob-k", status="succeeded"))
    event = status_event(change, seq=3, run_url=None, created_at=1)
    with engine.begin() as conn:
        enqueue(conn, event, targets)
    print("committed", flush=True)
    if os.environ["MODE"] == "before-dispatch":
        os.kill(os.getpid(), 9)
    Dispatcher(engine, targets, owner=os.environ.get("OWNER") or None).start()
    time.sleep(60)
    """
)


@pytest.mark.parametrize(
    ("mode", "owner"),
    [("before-dispatch", ""), ("during-delivery", ""), ("during-delivery", "replica-a")],
)
def test_kill_9_then_restart_delivers_with_the_same_id(
    tmp_path: Path, mode: str, owner: str
) -> None:
    """With ``owner`` the killed dispatcher had claimed the delivery as the daemon's does (a
    claim outlives the process by minutes); the restarted daemon, the one process on its
    SQLite file, drops the dead one's claims and delivers at once."""
    db = f"sqlite:///{tmp_path / 'bridge.db'}"
    expected = status_event(
        StatusChange("ftjob-k", "running", "succeeded", job("ftjob-k", status="succeeded")),
        seq=3,
        run_url=None,
        created_at=1,
    ).id
    with Receiver(replies=[Reply(delay=30)]) as receiver:
        env = {**os.environ, "DB": db, "URL": receiver.url, "SECRET": SECRET, "MODE": mode}
        env["OWNER"] = owner
        bridge = subprocess.Popen(
            [sys.executable, "-c", BRIDGE],
            env=env,
            cwd=Path(__file__).parent.parent,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert bridge.stdout is not None
        assert bridge.stdout.readline().strip() == "committed"
        if mode == "during-delivery":
            receiver.wait_for(1, timeout=10)  # the attempt is under way: kill it now
            bridge.send_signal(signal.SIGKILL)
        assert bridge.wait(timeout=10) == -signal.SIGKILL
        bridge.stdout.close()
        receiver.released.set()

        store = SqlStore(db)
        engine = store.engine
        if owner:
            store.claim_single_process()
        targets = targets_from_settings([receiver.url], SECRET, allow_private=True)
        sender = HttpSender(timeout=5, allow_private=True)
        restarted = Dispatcher(engine, targets, sender=sender, owner=owner and "replica-b")
        assert restarted.run_once() == 1
        restarted.stop()

    ids = [r.webhook_id for r in receiver.received]
    assert ids == ([expected] if mode == "before-dispatch" else [expected, expected])
    assert all(r.verified for r in receiver.received)
    (row,) = recent(engine)
    assert row.state == "delivered"
    engine.dispose()

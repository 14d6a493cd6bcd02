"""History rows handed to wandb-core many at a time.

wandb 0.31's ``run.log`` turns one row into one request and waits while wandb's asyncio
thread writes it to wandb-core's socket: about 0.3-0.5 ms of Python per row, most of it that
hand-off between threads (a 200-step job: 60-100 ms). ``log_rows`` builds the very requests
``run.log(values, step=at, commit=True)`` builds (the same items, value encoding,
``_timestamp``, step and flush) and writes a batch of them in one hand-off.

The rule it keeps: what reaches wandb-core, in what order, is what the ``run.log`` loop would
send. It reaches into wandb's run interface (``run._interface``); when that is not there (a
wandb version that changed it), or the run is finished, it falls back to ``run.log`` per row.
``tests/test_wandb_history.py`` checks that both ways write the same history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: Rows written per hand-off (bounds the requests held in memory at once).
BATCH_ROWS = 500

Row = tuple[int, Mapping[str, Any]]
Sender = Callable[[Sequence[Row]], None]


def log_rows(run: Any, rows: Sequence[Row]) -> None:
    """Each ``(step, values)`` row logged at its step and committed, in order."""
    send = batch_sender(run)
    if send is None:
        for at, values in rows:
            run.log(dict(values), step=at, commit=True)
        return
    for start in range(0, len(rows), BATCH_ROWS):
        send(rows[start : start + BATCH_ROWS])
    if rows:
        # What ``run.log`` keeps in the run object: the step after the highest one logged.
        high = max(at for at, _ in rows)
        run._local_step = max(int(run._local_step), high + 1)


def batch_sender(run: Any) -> Sender | None:
    """A function writing rows of ``run`` in one hand-off, or None when wandb's internals
    are not the ones this module knows (or the run is finished)."""
    try:
        from wandb.proto import wandb_internal_pb2 as internal  # noqa: PLC0415
        from wandb.proto import wandb_server_pb2 as server  # noqa: PLC0415
        from wandb.sdk.interface.history_value import set_history_value  # noqa: PLC0415
        from wandb.sdk.wandb_settings import (  # noqa: PLC0415
            HISTORY_VALUE_ENCODING_JSON,
            HISTORY_VALUE_ENCODING_TYPED,
        )
    except ImportError:
        return None
    interface: Any = getattr(run, "_interface", None)
    asyncer: Any = getattr(interface, "_asyncer", None)
    client: Any = getattr(interface, "_client", None)
    needed = (
        getattr(interface, "_make_request", None),
        getattr(interface, "_assign", None),
        getattr(asyncer, "run", None),
        getattr(client, "publish", None),
    )
    if any(part is None for part in needed) or getattr(run, "_is_finished", True):
        return None
    if not isinstance(getattr(run, "_local_step", None), int):
        return None
    # Generated protobuf modules: their classes are not visible to mypy.
    messages: Any = internal
    envelopes: Any = server
    encoding = str(run._settings.x_history_value_encoding).split(",")
    json_form = HISTORY_VALUE_ENCODING_JSON in encoding
    typed_form = HISTORY_VALUE_ENCODING_TYPED in encoding

    def request(at: int, values: Mapping[str, Any]) -> Any:
        partial = messages.PartialHistoryRequest()
        for key, value in {**values, "_timestamp": time.time()}.items():
            if key == "_step":
                continue  # as ``run.log``: the step is the request's
            item = partial.item.add()
            item.key = key
            set_history_value(item, value, json_form=json_form, typed_form=typed_form)
        partial.step.num = at
        partial.action.flush = True
        record = interface._make_request(partial_history=partial)
        interface._assign(record)
        wrapped = envelopes.ServerRequest()
        wrapped.record_publish.CopyFrom(record)
        return wrapped

    def send(rows: Sequence[Row]) -> None:
        requests = [request(at, values) for at, values in rows]

        async def publish_all() -> None:
            for one in requests:
                await client.publish(one)

        asyncer.run(publish_all)

    return send


__all__ = ["BATCH_ROWS", "batch_sender", "log_rows"]

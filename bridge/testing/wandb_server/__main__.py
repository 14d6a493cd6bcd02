"""`python -m bridge.testing.wandb_server --port N [--host H] [--data-dir DIR] [--entity E]
[--crash-after SECONDS]`.

Prints `listening on URL` and `api key KEY`, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from bridge.testing.wandb_server.server import DEFAULT_ENTITY, WandbServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.testing.wandb_server", description="A W&B server for tests."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--data-dir", help="keep the state here, across restarts")
    parser.add_argument("--entity", default=DEFAULT_ENTITY, help="the default entity")
    parser.add_argument(
        "--crash-after", type=float, help="seconds of silence after which a run has crashed"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = WandbServer(
        args.port, args.data_dir, args.entity, host=args.host, crash_after=args.crash_after
    )
    with server:
        print(f"listening on {server.url}", flush=True)
        print(f"api key {server.api_key}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bridge.emulator --port 0 --scenario FILE --api-key KEY --time-scale X`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from bridge.emulator.emulator import Emulator
from bridge.emulator.scenario import Scenario


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.emulator", description="Emulate the OpenAI fine-tuning API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--scenario", help="JSON or TOML scenario file (default: built-in demo)")
    parser.add_argument("--api-key", help="accept only this key (default: any key)")
    parser.add_argument("--time-scale", type=float, help="emulated seconds per real second")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenario = Scenario.load(args.scenario) if args.scenario else Scenario.demo()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with Emulator(scenario, args.host, args.port, args.api_key, time_scale=args.time_scale) as emu:
        print(f"listening on {emu.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``ftbridge`` command's entry point: the CLI imported inside a guard, so that Ctrl-C
during the second or so the imports take exits quietly with code 130, as it does later."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

INTERRUPTED = 130


def leave_interrupted() -> NoReturn:
    """Say so and exit 130 at once. A Ctrl-C that reaches Python as KeyboardInterrupt came
    before the signal handlers were in place (start-up): no run is open and every store write
    is a whole transaction, so nothing is lost; going through the interpreter's finalization
    instead (joining start-up threads, atexit hooks) was seen ending with the signal itself
    (exit -2) rather than 130."""
    print("ftbridge: interrupted", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INTERRUPTED)


def main() -> int:
    try:
        from bridge.cli import main as cli_main  # noqa: PLC0415 - imported under the guard

        return cli_main()
    except KeyboardInterrupt:
        leave_interrupted()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``ftbridge`` command's entry point: the CLI imported inside a guard, so that Ctrl-C
during the second or so the imports take exits quietly with code 130, as it does later."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import NoReturn

#: The conventional exit code of a process stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED = 130

_interrupts: list[int] = []
"""Ctrl-Cs received before the daemon's own signal handlers were in place."""


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """Python's default Ctrl-C (KeyboardInterrupt), remembered: a KeyboardInterrupt raised
    where start-up code swallows it (an import, a finalizer) still stops the daemon."""
    _interrupts.append(signum)
    raise KeyboardInterrupt


def interrupted_early() -> bool:
    """Whether a Ctrl-C came during start-up; said once."""
    early = bool(_interrupts)
    _interrupts.clear()
    return early


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


_closed: list[bool] = []
"""Set by a one-shot command whose work is all closed (see :func:`all_closed`)."""


def all_closed() -> None:
    """Said by a one-shot command (``sync``, a writer process) once every run is finished,
    the store closed and wandb-core told to stop: the exit may skip the interpreter's
    finalization, which with wandb, SQLAlchemy and the SDKs loaded takes 0.3-0.5 s (freeing
    every object and module) and holds nothing that is not already on disk."""
    _closed.append(True)


def leave(code: int) -> int:
    """Exit with ``code``: at once (``os._exit``, output flushed) after :func:`all_closed`,
    else the usual way."""
    if _closed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main() -> int:
    signal.signal(signal.SIGINT, _interrupt)
    try:
        from bridge.cli import main as cli_main  # noqa: PLC0415 - imported under the guard

        return leave(cli_main())
    except KeyboardInterrupt:
        leave_interrupted()


if __name__ == "__main__":  # pragma: no cover
    # As ``python -m bridge.entry`` this file is ``__main__``: run the copy the daemon
    # imports (``bridge.entry``), whose record of early Ctrl-Cs it reads.
    from bridge import entry  # noqa: PLW0406 - on purpose, see above

    sys.exit(entry.main())

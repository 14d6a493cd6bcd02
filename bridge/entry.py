"""The ``ftbridge`` command's entry point: the CLI imported inside a guard, so that Ctrl-C
during the second or so the imports take exits quietly with code 130, as it does later."""

from __future__ import annotations

import sys

INTERRUPTED = 130


def main() -> int:
    try:
        from bridge.cli import main as cli_main  # noqa: PLC0415 - imported under the guard

        return cli_main()
    except KeyboardInterrupt:
        print("ftbridge: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

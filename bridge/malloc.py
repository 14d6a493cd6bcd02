"""How many malloc arenas glibc keeps for the process's threads.

glibc gives threads that allocate at once arenas of their own, up to eight per core, and an
arena's freed memory mostly stays with it. The bridge reads the API from up to 64 threads:
with glibc's default their arenas held tens of MB that a few shared arenas do not (see the
README's performance section). ``M_ARENA_MAX`` applies to arenas made after it is set, so
it is set before the reading threads start. Elsewhere than glibc (musl, macOS) nothing is
done. ``MALLOC_ARENA_MAX`` in the environment, read by glibc at start, wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import structlog

log = structlog.get_logger(__name__)

#: ``mallopt`` parameter (glibc's malloc.h).
M_ARENA_MAX = -8


def limit_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` (0: leave glibc's default); True when set."""
    if arenas <= 0 or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_ARENA_MAX, arenas))
    if not done:
        log.debug("malloc.arenas_not_set", arenas=arenas)
    return done

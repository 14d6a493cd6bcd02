"""Deterministic, random-looking identifiers."""

from __future__ import annotations

import hashlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
HEX = "0123456789abcdef"


def token(*parts: object, length: int = 24, alphabet: str = ALPHABET) -> str:
    """`length` characters of `alphabet` derived from `parts` (same parts, same token)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=32).digest()
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(length):
        number, index = divmod(number, len(alphabet))
        chars.append(alphabet[index])
    return "".join(chars)


def number(*parts: object, bits: int = 31) -> int:
    """A non-negative integer derived from `parts`."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (1 << bits)


def job_id(seed: int, index: int, *, azure: bool = False) -> str:
    """`ftjob-` plus 24 alphanumerics (32 hex digits for Azure)."""
    if azure:
        return "ftjob-" + token("job", seed, index, length=32, alphabet=HEX)
    return "ftjob-" + token("job", seed, index)


def file_id(*parts: object) -> str:
    """`file-` plus 22 alphanumerics."""
    return "file-" + token("file", *parts, length=22)


def event_id(job: str, index: int) -> str:
    """`ftevent-` plus 24 alphanumerics; not sortable."""
    return "ftevent-" + token("event", job, index)


def checkpoint_id(job: str, step: int) -> str:
    """`ftckpt_` plus 24 alphanumerics."""
    return "ftckpt_" + token("ckpt", job, step)

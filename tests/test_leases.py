"""bridge.leases on a SQLite file: many leases taken at once obey the one-lease rules."""

from __future__ import annotations

from pathlib import Path

from bridge.leases import Leases
from bridge.store import SqlStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_many_leases_at_once_follow_the_rules_of_one(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'state.db'}")
    clock = Clock()
    one = Leases(store.engine, owner="one", ttl=30, clock=clock)
    two = Leases(store.engine, owner="two", ttl=30, clock=clock)
    names = [f"job:{i}" for i in range(700)]  # more than one statement's chunk

    assert one.acquire_many(names[:600]) == set(names[:600])
    # Another live replica gets only what nobody holds; the holder renews its own.
    assert two.acquire_many(names) == set(names[600:])
    clock.now += 20
    assert one.acquire_many(names[:10]) == set(names[:10])
    assert two.held() == set(names[600:])
    # Once expired (10 renewed at +20 s live on), the others go to whoever asks.
    clock.now += 15
    assert two.acquire_many(names) == set(names[10:])
    assert not one.acquire("job:20")
    assert one.holds("job:5") and not one.holds("job:20")
    assert one.renew() == 10  # it learns what it lost when it renews
    assert one.held() == set(names[:10])
    store.close()

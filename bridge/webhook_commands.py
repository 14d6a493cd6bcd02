"""``ftbridge webhooks ...``: recent deliveries, replay, a signed test ping, re-enable."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

from bridge.errors import BridgeError, ConfigError
from bridge.notify import targets_of
from bridge.settings import Settings
from bridge.status import open_store
from bridge.store import SqlStore
from bridge.webhooks import enable_target, recent, replay, send_test

EPILOG = """examples:
  ftbridge webhooks list                   the last 50 deliveries
  ftbridge webhooks list --state failed    those that gave up
  ftbridge webhooks replay evt_3f2a...     send an event again (same webhook-id)
  ftbridge webhooks test                   a signed ping to every webhook target
  ftbridge webhooks enable ops             re-enable a target that answered 410 Gone
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "webhooks",
        help="list, replay and test webhook deliveries",
        description="Inspect and steer webhook and chat deliveries.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="recent deliveries and failures")
    listing.add_argument("--state", choices=["held", "pending", "delivered", "failed", "disabled"])
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    again = sub.add_parser("replay", help="send a delivery or event again (same webhook-id)")
    again.add_argument("id", help="a delivery number or an evt_... event id")
    test = sub.add_parser("test", help="send a signed test ping now")
    test.add_argument("target", nargs="?", help="a target's name (default: every webhook)")
    enable = sub.add_parser("enable", help="re-enable a target disabled by a 410 answer")
    enable.add_argument("name")


def run(settings: Settings, args: argparse.Namespace) -> int:
    action = args.webhooks_command
    if action == "test":
        return _test(settings, args.target)
    if action == "enable":
        _known_target(settings, args.name)
    # Never creates a database: a mistyped FTBRIDGE_DATABASE_URL is said, not filled.
    store = open_store(settings.database_url)
    try:
        if action == "list":
            return _list(store, args)
        if action == "replay":
            ident: str | int = int(args.id) if args.id.isdigit() else args.id
            count = replay(store.engine, ident)
            if not count:
                raise BridgeError(
                    f"no delivery or event {args.id!r} to replay (a delivery number or an "
                    "evt_... id from `ftbridge webhooks list`)"
                )
            print(f"queued {count} delivery(ies) again")
            return 0
        count = enable_target(store.engine, args.name)
        print(f"target {args.name!r} enabled; {count} delivery(ies) queued again")
        return 0
    finally:
        store.close()


def _known_target(settings: Settings, name: str) -> None:
    names = [target.name for target in targets_of(settings)]
    if name not in names:
        known = ", ".join(repr(n) for n in names) or "none configured"
        raise BridgeError(f"no webhook or chat target named {name!r} (targets: {known})")


def _list(store: SqlStore, args: argparse.Namespace) -> int:
    rows = recent(store.engine, args.limit, state=args.state)
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
        return 0
    print(f"{'#':>5}  {'state':<9} {'tries':>5}  {'target':<14} {'type':<32} {'job':<30} last")
    for row in rows:
        last = row.last_error or (str(row.last_status) if row.last_status else "")
        if row.state == "pending":
            last = f"next in {max(0, int(row.next_attempt_at - time.time()))} s; {last}"
        print(
            f"{row.id:>5}  {row.state:<9} {row.attempts:>5}  {row.target:<14} "
            f"{row.type:<32} {row.job_id:<30} {last}"
        )
    return 0


def _test(settings: Settings, name: str | None) -> int:
    targets = targets_of(settings)
    chosen = [t for t in targets if name is None or t.name == name]
    if not chosen:
        raise ConfigError(f"no webhook or chat target named {name!r}" if name else "no targets")
    failed = 0
    for target in chosen:
        event, result = send_test(
            target, allow_private=settings.webhook_allow_private, timeout=settings.webhook_timeout
        )
        ok = result.ok
        failed += not ok
        detail = result.status if result.status is not None else result.error
        print(f"{target.name}: {'delivered' if ok else 'FAILED'} ({detail}); id {event.id}")
    return 1 if failed else 0

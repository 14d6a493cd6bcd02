"""The ``ftbridge`` command."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bridge import __version__, health, migrate, webhook_commands
from bridge.daemon import install_signal_handlers, run_daemon, say_stop_requested
from bridge.engine import Bridge, CycleStats
from bridge.entry import INTERRUPTED, leave, leave_interrupted
from bridge.errors import BridgeError, ConfigError, Interrupted, JobNotFound, StoreUnavailable
from bridge.group import BridgeGroup
from bridge.logs import configure_logging
from bridge.notify import targets_of
from bridge.ports import JobState
from bridge.settings import Settings, load_settings, unknown_variables
from bridge.status import open_store, run_status
from bridge.store import SqlStore, create_db_engine
from bridge.views.live import watch_status
from bridge.views.show import run_show
from bridge.writers import WriterPool, share_out, writer_count

log = structlog.get_logger(__name__)

# ``bridge.app``, ``bridge.check`` and ``bridge.demo`` import wandb and the providers' SDKs
# (a second or two): they are imported by the commands that need them, so that ``status``,
# ``show``, ``webhooks`` and the other operator commands start at once.

EPILOG = """examples:
  ftbridge run                         poll every FTBRIDGE_POLL_INTERVAL seconds until SIGTERM
  ftbridge sync --all                  backfill every job the key can see, then exit
  ftbridge sync ftjob-abc ftjob-def    sync two jobs, then exit
  ftbridge demo                        no keys: built-in emulator, offline W&B, SQLite
  ftbridge --config ftbridge.toml run  settings from a TOML file (the environment wins)
  ftbridge check                       is this configuration good? (exit 0 or 1)
  ftbridge status --json               tracked jobs, for scripts
  ftbridge status --watch              a live view of the jobs (Ctrl-C to leave)
  ftbridge show ftjob-abc              the curves of one job, in the terminal
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftbridge",
        description="Mirror fine-tuning jobs into Weights & Biases, live.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ftbridge {__version__}")
    parser.add_argument("--config", type=Path, help="TOML settings file (or FTBRIDGE_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run",
        help="run the daemon until SIGTERM",
        description="Poll jobs and events every FTBRIDGE_POLL_INTERVAL seconds until SIGTERM.",
        epilog="example:\n  OPENAI_API_KEY=sk-... WANDB_PROJECT=fine-tunes ftbridge run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sync = commands.add_parser(
        "sync",
        help="sync jobs once, then exit",
        description="Sync jobs once (what they have so far), then exit.",
        epilog="examples:\n  ftbridge sync --all\n  ftbridge sync ftjob-abc ftjob-def",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sync.add_argument("jobs", nargs="*", metavar="JOB_ID", help="job ids to sync")
    sync.add_argument("--all", action="store_true", help="every job the key can see")
    demo = commands.add_parser(
        "demo",
        help="try it with no keys: emulator + offline W&B + SQLite",
        description="Run the built-in emulator of the fine-tuning API and mirror its jobs "
        "into offline W&B runs, then say where they are.",
        epilog="example:\n  ftbridge demo --dir ./ftbridge-demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--dir", type=Path, default=Path("ftbridge-demo"), help="where to write")
    demo.add_argument("--time-scale", type=float, default=1.0, help="emulated seconds per second")
    webhook_commands.add_parser(commands)
    db = commands.add_parser(
        "db",
        help="schema migrations of the state store",
        description="The state store's schema is versioned (Alembic). ftbridge upgrades it at "
        "start-up and refuses a schema newer than it knows; these commands do it by hand.",
        epilog="examples:\n  ftbridge db upgrade\n  ftbridge db current",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    db.add_argument("db_command", choices=["upgrade", "current"], metavar="upgrade|current")
    _operator_parsers(commands)
    return parser


def _operator_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status",
        help="a table of tracked jobs",
        description="Tracked jobs from the state store: status, steps logged / total, last "
        "event age, W&B run (URL or offline folder), webhook deliveries pending.",
        epilog="examples:\n  ftbridge status\n  ftbridge status --json | jq '.[].status'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--json", action="store_true", help="JSON for scripts")
    status.add_argument(
        "--watch",
        action="store_true",
        help="a live view, refreshed every second until Ctrl-C (the table when not a terminal)",
    )
    show = commands.add_parser(
        "show",
        help="the curves of one job, in the terminal (or --png)",
        description="Every metric of a job against its training step, from the state store "
        "(offline too, before any wandb sync): train and valid curves on one chart, "
        "checkpoints marked, the run's config and summary beside.",
        epilog="examples:\n  ftbridge show ftjob-abc\n  ftbridge show ftjob-abc --metric loss"
        "\n  ftbridge show ftjob-abc --png curves.png   (needs ftbridge[plots])",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("job", metavar="JOB_ID")
    show.add_argument("--metric", help="one chart (loss, mean_token_accuracy) or one key")
    show.add_argument("--png", type=Path, metavar="FILE", help="also write the charts as a PNG")
    commands.add_parser(
        "check",
        help="check the configuration, the API, W&B, webhooks and the store",
        description="Validate the settings, call the API once (jobs.list, limit=1), check W&B "
        "(or say offline), webhook targets against the SSRF guard, and that the state store "
        "is reachable and writable. Prints a table; exit code 0 when all is fine, else 1.",
        epilog="examples:\n  ftbridge check\n  ftbridge --config ftbridge.toml check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    probe = commands.add_parser(
        "health",
        help="exit 0 when the running daemon is ready (GET /readyz)",
        description="Ask the running daemon's health server whether it is ready; exit 0 or 1 "
        "with the reason. The container's HEALTHCHECK runs the same probe "
        "(python -m bridge.health).",
        epilog="examples:\n  ftbridge health\n  ftbridge health --url http://127.0.0.1:9464/readyz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    probe.add_argument("--url", help="default: /readyz on FTBRIDGE_HTTP_HOST:FTBRIDGE_HTTP_PORT")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers are in place
        leave_interrupted()


def _command(args: argparse.Namespace) -> int:
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "check":
            from bridge.check import run_check  # noqa: PLC0415 - heavy: only when needed

            return run_check(args.config, sys.stdout)
        if args.command == "health":
            return _health(args)
        settings = load_settings(args.config)
        if args.command == "status":
            if args.watch and not args.json and sys.stdout.isatty():
                return watch_status(settings.database_url)
            return run_status(settings.database_url, as_json=args.json, out=sys.stdout)
        if args.command == "show":
            return _show(settings, args)
        _configure(settings)
        if args.command == "run":
            return _run(settings)
        if args.command == "db":
            return _db(settings, args.db_command)
        if args.command == "webhooks":
            return webhook_commands.run(settings, args)
        return _sync(settings, args)
    except ConfigError as error:
        print(f"ftbridge: configuration error: {error}", file=sys.stderr)
        return 2
    except BridgeError as error:
        print(f"ftbridge: error: {error}", file=sys.stderr)
        return 1


def _configure(settings: Settings) -> None:
    secrets = settings.secrets() + targets_of(settings).secrets()
    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=secrets)
    for line in unknown_variables(os.environ):
        log.warning("settings.unknown_variable", detail=line)


def _build_when_reachable(settings: Settings, stop: threading.Event) -> Bridge | BridgeGroup | None:
    """Build the bridge, waiting while the database does not answer (a server restarting,
    a network blip) instead of exiting into a crash loop; None if told to stop meanwhile."""
    delay = 1.0
    while True:
        try:
            from bridge.app import build_daemon_bridge  # noqa: PLC0415 - heavy: only when needed

            return build_daemon_bridge(settings)
        except StoreUnavailable as error:
            if delay == 1.0:
                log.warning("store.unreachable", error=str(error), detail="waiting for it")
            if stop.wait(delay):
                say_stop_requested()
                return None
            delay = min(delay * 2, 30.0)


def _run(settings: Settings) -> int:
    # One stop for the whole start-up and the daemon: a SIGTERM or Ctrl-C while the bridge
    # is being built stops the daemon as soon as it is up.
    stop = threading.Event()
    install_signal_handlers(stop)
    bridge = _build_when_reachable(settings, stop)
    if bridge is None:
        return 0
    from bridge.app import observe  # noqa: PLC0415 - heavy: only when needed

    metrics, server = observe(settings, bridge)
    cycle_left = threading.Event()
    try:
        if server is not None:
            server.start()
        code = run_daemon(
            bridge,
            interval=settings.poll_interval,
            backoff_max=settings.backoff_max,
            shutdown_timeout=settings.shutdown_timeout,
            metrics=metrics,
            stop=stop,
            left_running=cycle_left,
        )
    finally:
        if server is not None:
            server.stop()
        bridge.store.close()
    return _leave(code, cycle_left.is_set())


def _leave(code: int, cycle_left: bool = False) -> int:
    """Exit now when a cycle or an API read is still under way (a slow or hostile API): the
    interpreter would wait for its thread, past the shutdown timeout. Its job was left
    unsynced in the store and is read again at the next start."""
    readers = [t for t in threading.enumerate() if t.name.startswith("ftbridge-fetch")]
    for thread in readers:
        thread.join(timeout=0.2)
    stuck = [t.name for t in readers if t.is_alive()]
    if stuck or cycle_left:
        log.warning("shutdown.reads_abandoned", readers=len(stuck), cycle=cycle_left)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _db(settings: Settings, action: str) -> int:
    # ``current`` only looks: it never creates a database at a mistyped path.
    store = SqlStore(settings.database_url) if action == "upgrade" else None
    if store is None:
        open_store(settings.database_url).close()
    engine = store.engine if store else create_db_engine(settings.database_url)
    try:
        print(
            f"schema revision: {migrate.current(engine) or 'none'} (newest known: {migrate.head()})"
        )
    finally:
        engine.dispose()
    return 0


def _show(settings: Settings, args: argparse.Namespace) -> int:
    store = open_store(settings.database_url)
    try:
        return run_show(store.engine, args.job, Console(), metric=args.metric, png=args.png)
    finally:
        store.close()


def _health(args: argparse.Namespace) -> int:
    if args.url:
        return health.probe(args.url)
    settings = load_settings(args.config)
    if settings.http_port is None:
        raise ConfigError("the health server is off: set FTBRIDGE_HTTP_PORT (or use --url)")
    return health.probe(health.readyz_url(settings.http_host, settings.http_port))


def _sync(settings: Settings, args: argparse.Namespace) -> int:
    if bool(args.all) == bool(args.jobs):
        raise ConfigError("sync takes either --all or one or more job ids")
    from bridge.app import build_bridge  # noqa: PLC0415 - heavy: only when needed
    from bridge.sink_wandb import preload  # noqa: PLC0415

    pool = None
    if args.all:
        preload()  # before the writers are forked: they start with it in memory
        pool = _writer_pool(settings)
    try:
        return _sync_with(settings, args, build_bridge(settings), pool)
    finally:
        if pool is not None:
            pool.close()


def _sync_with(
    settings: Settings,
    args: argparse.Namespace,
    bridge: Bridge | BridgeGroup,
    pool: WriterPool | None,
) -> int:
    from bridge.app import close_one_shot  # noqa: PLC0415 - imported by _sync already

    # SIGTERM and Ctrl-C stop the walk over the API's pages and the wait for jobs; the runs
    # opened so far are finished before the exit (code 130).
    install_signal_handlers(bridge.stopping)
    if bridge.dispatcher is not None:
        bridge.dispatcher.start()
    try:
        stats = sync_once(bridge, None if args.all else list(args.jobs), pool)
    except Interrupted:
        stats = CycleStats(errors=["interrupted"])
    finally:
        if bridge.dispatcher is not None:
            # One round of attempts; what is left is delivered by the daemon.
            bridge.dispatcher.stop(timeout=settings.webhook_timeout)
        bridge.store.close()
        close_one_shot(bridge)
    if bridge.stopping.is_set():
        say_stop_requested()
        log.warning("sync.interrupted", jobs=stats.jobs_seen, rows_logged=stats.rows_logged)
        return _leave(INTERRUPTED)
    log.info("sync.done", jobs=stats.jobs_seen, rows_logged=stats.rows_logged)
    return 1 if stats.errors else 0


def _writer_pool(settings: Settings) -> WriterPool | None:
    """The writer processes (``bridge.writers``) a backfill may be shared out among, started
    before the bridge is built; None for one process, or an in-memory store, which other
    processes cannot open."""
    if settings.database_url in ("sqlite://", "sqlite:///:memory:"):
        return None
    extra = writer_count(settings.sync_writers, None) - 1
    if extra < 1:
        return None
    return WriterPool(settings, extra, shutdown_timeout=settings.shutdown_timeout)


def sync_once(
    bridge: Bridge | BridgeGroup, job_ids: list[str] | None, writers: WriterPool | None = None
) -> CycleStats:
    """One pass over every job (``None``) or the given ones; open runs are finished after.
    A backfill of many jobs is shared out among this process and the ``writers``: this one
    writes the first share."""
    stats = CycleStats()
    bridge.recover()
    try:
        if job_ids is None:
            stats.jobs_seen = bridge.discover(full=True)
            unsynced = [state.job_id for state in bridge.store.unsynced_jobs()]
            leases = bridge.leases
            count = 1 if writers is None or leases is None else len(writers) + 1
            shares = share_out(unsynced, writer_count(count, len(unsynced)))
            if writers is not None and leases is not None:
                writers.deal(shares[1:], replica_id=leases.owner, timings=bridge.timings())
            with SyncProgress(len(shares[0])) as progress:
                if writers is None or len(shares) == 1:
                    bridge.sync_unsynced(stats, progress.advance)
                else:
                    bridge.sync_unsynced(stats, progress.advance, only=set(shares[0]))
                    writers.wait(stats, bridge.stopping)
        else:
            for job_id in job_ids:
                _sync_one(bridge, job_id, stats)
    finally:
        bridge.close_runs()
    return stats


class SyncProgress:
    """A progress bar (rich) on a terminal; a plain log line per job otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._bar: Progress | None = None
        if sys.stderr.isatty():
            self._bar = Progress(
                TextColumn("syncing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task("", total=total)

    def __enter__(self) -> SyncProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description="")
            self._bar.stop()

    def advance(self, state: JobState) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=state.job_id)
        else:
            log.info("sync.job", job_id=state.job_id, n=self.done + 1, of=self.total)
        self.done += 1


def _sync_one(bridge: Bridge | BridgeGroup, job_id: str, stats: CycleStats) -> None:
    try:
        bridge.sync_one(job_id, stats)
    except JobNotFound as error:
        stats.errors.append(str(error))
        log.error("sync.unknown_job", job_id=job_id, error=str(error))


def _demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo  # noqa: PLC0415 - heavy: only when needed

    return run_demo(args.dir, time_scale=args.time_scale)


if __name__ == "__main__":  # pragma: no cover
    # As the ``ftbridge`` command does (``bridge.entry.main``): a one-shot command whose
    # work is all closed exits at once.
    sys.exit(leave(main()))

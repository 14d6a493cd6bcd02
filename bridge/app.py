"""Wiring: settings in, a ready ``Bridge`` out."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import sqlalchemy as sa
import structlog

from bridge import mapping, prices, status
from bridge.engine import Bridge
from bridge.entry import all_closed
from bridge.evals.bounds import bounds_of, may_sample
from bridge.evals.sampler import Sampler
from bridge.group import BridgeGroup
from bridge.health import CycleReadiness, HealthServer, max_cycle_age, store_ping
from bridge.leases import Leases
from bridge.malloc import limit_arenas
from bridge.mapping import WandbDefaults
from bridge.metrics import BridgeMetrics, Watched
from bridge.notify import OutboxWriter, dispatcher_for, release_notifications, targets_of
from bridge.settings import Settings
from bridge.sink_wandb import WandbOptions, WandbSink, shut_down
from bridge.sources import make_source, routes_of, source_configs
from bridge.store import SqlStore
from bridge.views.page import StatusPage
from bridge.views.reader import pulse_of

log = structlog.get_logger(__name__)


def wandb_options(settings: Settings) -> WandbOptions:
    mode = settings.effective_wandb_mode
    return WandbOptions(
        mode=mode,
        directory=settings.wandb_dir or Path.cwd(),
        api_key=settings.wandb_api_key.get_secret_value() if settings.wandb_api_key else None,
        base_url=settings.wandb_base_url,
        init_timeout=settings.wandb_init_timeout,
        finish_timeout=settings.wandb_finish_timeout,
        flush_interval=settings.wandb_flush_interval,
        upload_interval=settings.wandb_upload_interval,
        core_memory_limit_mib=settings.wandb_core_memory_limit or None,
    )


def close_one_shot(bridge: Bridge | BridgeGroup) -> None:
    """The end of a one-shot command (``sync``, a writer process), its store closed: when no
    run is left open, stop wandb-core and let the exit skip the interpreter's finalization
    (``bridge.entry.leave``)."""
    if not bridge.sink.open_runs():
        shut_down()
        all_closed()


def build_daemon_bridge(settings: Settings) -> Bridge | BridgeGroup:
    """The bridge as ``ftbridge run`` builds it (the live benchmark builds it here too): a
    cycle waits ``job_time_budget`` for one job's reads, and the look at jobs off the
    listing's first pages runs beside later cycles."""
    return build_bridge(settings, job_budget=settings.job_time_budget, sweep_apart=True)


def build_bridge(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    job_budget: float | None = None,
    claim_lock: bool = True,
    sweep_apart: bool = False,
) -> Bridge | BridgeGroup:
    """One ``Bridge`` for one source; a ``BridgeGroup`` for the TOML file's ``[[sources]]``.
    ``environ`` is where ``api_key_env`` names are looked up (the process environment);
    ``job_budget``: seconds a cycle waits for one job's reads (the daemon's; None for a
    one-shot sync, which waits for every job); ``claim_lock=False`` for a writer process of
    a sync, whose parent holds the SQLite lock (``bridge.writers``); ``sweep_apart`` (the
    daemon's): the look at jobs off the listing's first pages runs beside later cycles."""
    limit_arenas(settings.malloc_arenas)  # before the reading threads start
    configs = source_configs(settings)
    routes = routes_of(settings)
    env = os.environ if environ is None else environ
    sources = [make_source(config, settings, env) for config in configs]
    options = wandb_options(settings)
    if options.mode == "offline" and settings.wandb_mode is None:
        log.warning(
            "wandb.offline",
            detail="WANDB_API_KEY is not set: runs are written offline (upload: wandb sync)",
            directory=str(options.directory / "wandb"),
        )
    targets = targets_of(settings)
    store = SqlStore(
        settings.database_url,
        on_change=OutboxWriter(targets, settings.notify_backfill, settings.notify_final_wait)
        if targets
        else None,
    )
    if claim_lock:
        store.claim_single_process()
    sink = WandbSink(options)
    leases = Leases(store.engine, owner=settings.replica_id, ttl=settings.lease_seconds)
    dispatcher = dispatcher_for(store.engine, targets, settings, owner=leases.owner)
    price_table = {**prices.DEFAULT_PRICES, **settings.prices}
    bridges = []
    for config, source in zip(configs, sources, strict=True):
        defaults = WandbDefaults(
            project=config.wandb.project or settings.wandb_project,
            entity=config.wandb.entity or settings.wandb_entity,
            extra_tags=tuple(config.wandb.tags),
            app_url=mapping.app_url(settings.wandb_base_url),
        )
        bridge = Bridge(
            source,
            sink,
            store,
            defaults,
            settings.wandb_native_jobs,
            job_filter=config.filters,
            routes=routes,
        )
        bridge.dispatcher = dispatcher
        if dispatcher is not None:
            bridge.on_final = partial(release_notifications, store.engine)
        bridge.leases = leases
        bridge.refresh_after = max(60.0, 10 * settings.poll_interval)
        bridge.fetch_workers = settings.fetch_workers
        bridge.prices = price_table
        bridge.dataset_rows = settings.dataset_sample_rows if settings.log_datasets else 0
        bridge.job_budget = job_budget
        bridge.sweep_apart = sweep_apart
        bounds = config.over(settings.eval_bounds)
        if may_sample(bounds, routes):
            bridge.sampler = Sampler(
                source,
                sink,
                store,
                bounds_of(bounds, routes),
                read_file=source.file_content,
                price_table=price_table,
            )
        bridges.append(bridge)
    built = bridges[0] if len(bridges) == 1 else BridgeGroup(bridges)
    for bridge, source in zip(bridges, sources, strict=True):
        # Every walk over the API's pages is bounded and ends when the bridge stops.
        source.stopping = bridge.stopping
        source.max_pages = settings.max_pages
    return built


def quarantined_jobs(bridge: Bridge | BridgeGroup) -> dict[str, str]:
    """Job ids left out by every source (id -> reason)."""
    bridges = bridge.bridges if isinstance(bridge, BridgeGroup) else [bridge]
    found: dict[str, str] = {}
    for one in bridges:
        found.update(getattr(one.source, "quarantined", {}))
    return found


def observe(
    settings: Settings, bridge: Bridge | BridgeGroup
) -> tuple[BridgeMetrics, HealthServer | None]:
    """The daemon's metrics (live gauges read from the store and the sink at each scrape) and
    its health server, or None when ``FTBRIDGE_HTTP_PORT`` is not set."""
    metrics = BridgeMetrics()
    if bridge.dispatcher is not None:
        bridge.dispatcher.on_attempt = lambda result: metrics.webhook_attempt(result.outcome)
    store = bridge.store
    if not isinstance(store, SqlStore):
        return metrics, None
    engine = store.engine
    metrics.watch(
        Watched(
            jobs_by_status=lambda: status.job_counts(engine),
            deliveries_by_state=lambda: status.delivery_counts(engine),
            open_runs=lambda: len(bridge.sink.open_runs()),
            quarantined=lambda: len(quarantined_jobs(bridge)),
        )
    )
    if settings.http_port is None:
        return metrics, None
    readiness = CycleReadiness(
        lambda: store_ping(engine),
        lambda: metrics.last_success_at,
        max_cycle_age(settings.poll_interval),
    )
    server = HealthServer(
        settings.http_host,
        settings.http_port,
        metrics.registry,
        readiness,
        page=status_page(settings, engine, metrics),
    )
    return metrics, server


def status_page(settings: Settings, engine: sa.Engine, metrics: BridgeMetrics) -> StatusPage | None:
    """The status page of the health port, when ``FTBRIDGE_STATUS_PAGE`` is on."""
    if not settings.status_page:
        return None
    token = settings.status_token.get_secret_value() if settings.status_token else None
    if token is None and settings.http_host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "status_page.open",
            detail="the status page shows job ids and models to anyone who reaches "
            f"{settings.http_host}: set FTBRIDGE_STATUS_TOKEN",
        )
    return StatusPage(engine, token=token, pulse=lambda: pulse_of(metrics))

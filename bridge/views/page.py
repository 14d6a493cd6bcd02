"""The status page: ``GET /`` on the health port, the live view as a small HTML page.

The page is built whole on the server from a :class:`bridge.views.board.Board`: no
JavaScript, no external assets (sparklines and progress bars are inline SVG and CSS), every
value HTML-escaped, and sent with a Content-Security-Policy that forbids anything else. It
reloads itself (a meta refresh). It shows job ids, models and webhook targets, so it is off
unless ``FTBRIDGE_STATUS_PAGE=true``; with ``FTBRIDGE_STATUS_TOKEN`` set it answers 401 to any
request without ``Authorization: Bearer <token>`` (compared in constant time).
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable, Sequence
from html import escape
from http import HTTPStatus

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bridge.views.board import Board, Header, JobView, Pulse, age, board, number
from bridge.views.reader import BoardReader

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
REFRESH_SECONDS = 5
_STATUS_COLOURS = {
    "succeeded": "#1a7f37",
    "failed": "#cf222e",
    "cancelled": "#9a6700",
    "running": "#0969da",
    "paused": "#8250df",
}
_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#1f2328;background:#fff}
h1{font-size:1.3em;margin:0 0 .3em}
p.head{margin:.2em 0;color:#59636e}
table{border-collapse:collapse;margin-top:1em}
th,td{padding:.35em .7em;border-bottom:1px solid #d1d9e0;text-align:left;white-space:nowrap}
th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{font-weight:600}
.bar{display:inline-block;width:90px;height:8px;background:#d1d9e0;border-radius:4px;
vertical-align:middle;margin-right:.4em}
.bar span{display:block;height:8px;background:#0969da;border-radius:4px}
.trouble{color:#cf222e}
td.run{white-space:normal;overflow-wrap:anywhere;max-width:20em}
"""

#: What the page is given: the Authorization header; what it answers: status, body, headers.
Answer = tuple[int, bytes, dict[str, str]]


def svg_sparkline(values: Sequence[float], *, width: int = 120, height: int = 24) -> str:
    """An inline SVG polyline of ``values`` (empty when there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    step = width / max(1, len(finite) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (v - low) / span * (height - 4):.1f}"
        for i, v in enumerate(finite)
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="curve"><polyline fill="none" stroke="#0969da" stroke-width="1.5" '
        f'points="{points}"/></svg>'
    )


def _bar(job: JobView) -> str:
    if job.progress is None:
        return '<span class="bar"></span>'
    return f'<span class="bar"><span style="width:{job.progress * 100:.0f}%"></span></span>'


def _run_cell(job: JobView) -> str:
    text = escape(job.run or "-")
    if job.run_link and job.run_link.startswith(("https://", "http://")):
        return f'<a href="{escape(job.run_link, quote=True)}" rel="noreferrer">{text}</a>'
    return text


def _row(job: JobView) -> str:
    colour = _STATUS_COLOURS.get(job.status, "#59636e")
    metric = "" if job.metric == "loss" else f" ({escape(job.metric)})"
    failed = (
        f' <span class="trouble">{job.webhooks_failed} failed</span>' if job.webhooks_failed else ""
    )
    cells = [
        escape(job.provider if job.source == job.provider else f"{job.provider}/{job.source}"),
        f"<code>{escape(job.job_id)}</code>",
        escape(job.model),
        f'<span class="status" style="color:{colour}">{escape(job.status)}</span>',
        f"{_bar(job)}{escape(job.steps_text)}",
        f'<td class="num">{escape(number(job.train))}{metric}',
        f'<td class="num">{escape(number(job.valid))}',
        svg_sparkline(job.curve),
        escape(job.lag_text),
        f'<td class="run">{_run_cell(job)}',
        f"{job.webhooks_pending}{failed}",
    ]
    tds = "".join(c if c.startswith("<td") else f"<td>{c}" for c in cells)
    return f'<tr id="job-{escape(job.job_id, quote=True)}">{tds}</tr>'


def _header(header: Header) -> str:
    states = ", ".join(f"{n} {escape(s)}" for s, n in sorted(header.by_status.items()))
    pending = header.deliveries.get("pending", 0) + header.deliveries.get("held", 0)
    failed = header.deliveries.get("failed", 0) + header.deliveries.get("disabled", 0)
    lines = [
        f"{header.jobs} job(s), {header.active} active ({states}); "
        f"store written {escape(age(header.last_write_age))} ago",
        f"W&amp;B: {header.runs_open} run(s) open, {header.rows_waiting} row(s) waiting; "
        f"webhooks: {pending} pending, {failed} failed",
        escape(_pulse(header.pulse)),
    ]
    for t in header.targets:
        parts = [f"{t.failed} failed"] if t.failed else []
        parts += [f"{t.retrying} retrying"] if t.retrying else []
        parts += ["disabled"] if t.disabled else []
        parts += [f"last answer HTTP {t.last_status}"] if t.last_status else []
        lines.append(
            f'<span class="trouble">webhook target {escape(t.target)}: '
            f"{escape(', '.join(parts))}</span>"
        )
    return "".join(f'<p class="head">{line}</p>' for line in lines)


def _pulse(pulse: Pulse | None) -> str:
    if pulse is None:
        return "poll cycles and API errors: see /metrics"
    cycle = f"{pulse.mean_cycle_seconds:.2f} s" if pulse.mean_cycle_seconds is not None else "-"
    return (
        f"poll cycles: {pulse.cycles_ok} ok, {pulse.cycles_failed} failed, mean {cycle}; "
        f"API errors: {pulse.api_errors}; W&B errors: {pulse.wandb_errors}"
    )


_COLUMNS = (
    "source",
    "job",
    "model",
    "status",
    "progress",
    "train",
    "valid",
    "curve",
    "lag",
    "W&B run",
    "webhooks",
)


def page_html(view: Board, *, refresh: int = REFRESH_SECONDS, at: float | None = None) -> str:
    """The whole page."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at is not None else ""
    rows = "".join(_row(job) for job in view.jobs) or (
        f'<tr><td colspan="{len(_COLUMNS)}">no jobs tracked yet</td></tr>'
    )
    heads = "".join(f"<th>{escape(c)}</th>" for c in _COLUMNS)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{int(refresh)}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>ftbridge: {view.header.jobs} job(s)</title><style>{_STYLE}</style></head>"
        f"<body><h1>ftbridge</h1>{_header(view.header)}"
        f'<table id="jobs"><thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table>'
        f'<p class="head">read from the state store at {escape(when)}; '
        f"reloads every {int(refresh)} s</p></body></html>\n"
    )


class StatusPage:
    """What ``GET /`` answers. Called by the health server with the request's
    ``Authorization`` header."""

    def __init__(
        self,
        engine: Engine,
        *,
        token: str | None = None,
        pulse: Callable[[], Pulse] | None = None,
        refresh: int = REFRESH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._reader = BoardReader(engine)
        self._token = token.encode() if token else None
        self._pulse = pulse
        self._refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()

    def __call__(self, authorization: str | None) -> Answer:
        if not self.allowed(authorization):
            headers = {"WWW-Authenticate": 'Bearer realm="ftbridge"'}
            return HTTPStatus.UNAUTHORIZED, b"a bearer token is needed\n", headers
        headers = {
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        try:
            with self._lock:  # one reader's cache, shared by the server's threads
                snapshot = self._reader.snapshot()
        except sa.exc.SQLAlchemyError:
            return HTTPStatus.SERVICE_UNAVAILABLE, b"the state store cannot be read\n", {}
        now = self._clock()
        view = board(snapshot, now=now, pulse=self._pulse() if self._pulse else None)
        return HTTPStatus.OK, page_html(view, refresh=self._refresh, at=now).encode(), headers

    def allowed(self, authorization: str | None) -> bool:
        if self._token is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self._token)


__all__ = ["CSP", "StatusPage", "page_html", "svg_sparkline"]

"""Requests in, responses out: routing, auth, faults and counting; no sockets here."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from pydantic import ValidationError

from bridge.emulator import chat, ids
from bridge.emulator.account import Account
from bridge.emulator.errors import ApiError, invalid_url
from bridge.emulator.faults import FaultInjector, Faults
from bridge.emulator.scenario import JobScenario
from bridge.httpserve import Request, Response

# "/v1" is OpenAI's (and Azure's v1 API's) prefix; "/openai" is Azure's dated API versions,
# which the AzureOpenAI client calls with an api-version query parameter.
_API = r"(?:/v1|/openai)"
_JOB = _API + r"/fine_tuning/jobs/(?P<id>[^/]+)"
_FILE = _API + r"/files/(?P<id>[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern + r"\Z"), kind)
    for method, pattern, kind in [
        ("GET", _API + r"/fine_tuning/jobs", "list_jobs"),
        ("POST", _API + r"/fine_tuning/jobs", "create"),
        ("GET", _JOB, "retrieve"),
        ("GET", _JOB + "/events", "list_events"),
        ("GET", _JOB + "/checkpoints", "list_checkpoints"),
        ("POST", _JOB + "/cancel", "cancel"),
        ("POST", _JOB + "/pause", "pause"),
        ("POST", _JOB + "/resume", "resume"),
        ("GET", _FILE, "retrieve_file"),
        ("GET", _FILE + "/content", "file_content"),
        ("POST", _API + r"/chat/completions", "chat"),
    ]
]


def _route(method: str, path: str) -> tuple[str, dict[str, str]]:
    for route_method, pattern, kind in ROUTES:
        match = pattern.match(path)
        if match and route_method == method:
            return kind, match.groupdict()
    return "unknown", {}


def _json_body(request: Request) -> Any:
    if not request.body:
        return {}
    try:
        return json.loads(request.body)
    except ValueError:
        raise ApiError(400, "We could not parse the JSON body of your request.") from None


#: The kinds of request that are chat completions (of any provider).
CHAT_KINDS = frozenset({"chat", "fw_chat"})


class ProviderApi(Protocol):
    """Another provider's API over the same account (``bridge.emulator.providers``): its
    routes (method, path pattern, kind) and what each kind answers."""

    routes: Sequence[tuple[str, re.Pattern[str], str]]

    def tuned_models(self) -> set[str]:
        """The fine-tuned models of its jobs (which chat completions answer as tuned)."""
        ...

    def dispatch(
        self, kind: str, params: dict[str, str], query: dict[str, str], request: Request
    ) -> Any:
        """A JSON-able answer, or bytes (served as a file)."""
        ...


class Api:
    """The emulated HTTP API, minus the HTTP."""

    def __init__(
        self,
        account: Account,
        api_key: str | None,
        faults: FaultInjector,
        providers: Sequence[ProviderApi] = (),
    ) -> None:
        self.account = account
        self.api_key = api_key
        self.faults = faults
        self.providers = list(providers)
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    @property
    def request_count(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def handle(self, request: Request) -> Response:
        url = urlsplit(request.target)
        path = url.path.rstrip("/") or "/"
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            if path.startswith("/_emulator/"):
                return self._control(request.method, path, request)
            return self._api(request, path, query)
        except ApiError as error:
            return Response.json(error.status, error.body(), error.headers)

    def _api(self, request: Request, path: str, query: dict[str, str]) -> Response:
        kind, params = _route(request.method, path)
        provider = None
        if kind == "unknown":
            provider, kind, params = self._provider_route(request.method, path)
        with self.lock:
            self.counts[kind] += 1
            number = sum(self.counts.values())
        headers = {"x-request-id": "req_" + ids.token("request", number, length=32)}
        latency = self.faults.faults.latency
        if kind in CHAT_KINDS:
            latency += self.faults.faults.chat_latency
        if latency:
            time.sleep(latency)
        fault = self.faults.draw()
        if fault is not None:
            raise fault
        # A provider's public kinds (signed URLs) carry their own credentials.
        if provider is None or kind not in getattr(provider, "public_kinds", ()):
            self._authenticate(request.headers)
        if kind == "unknown":
            raise invalid_url(request.method, path)
        if provider is not None:
            result = provider.dispatch(kind, params, query, request)
        else:
            result = self._dispatch(kind, params.get("id", ""), query, request)
        if isinstance(result, bytes):
            return Response(200, result, "application/octet-stream", headers)
        return Response.json(200, result, headers)

    def _provider_route(
        self, method: str, path: str
    ) -> tuple[ProviderApi | None, str, dict[str, str]]:
        for provider in self.providers:
            for route_method, pattern, kind in provider.routes:
                match = pattern.match(path)
                if match and route_method == method:
                    return provider, kind, match.groupdict()
        return None, "unknown", {}

    def _authenticate(self, headers: dict[str, str]) -> None:
        if self.api_key is None:
            return
        given = headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = given or headers.get("api-key", "")
        if given == self.api_key:
            return
        shown = f"{given[:3]}***{given[-4:]}" if len(given) > 8 else "***"
        message = (
            f"Incorrect API key provided: {shown}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        if not given:
            message = "You didn't provide an API key. Provide it in an Authorization header."
        raise ApiError(401, message, code="invalid_api_key" if given else None)

    def _dispatch(
        self, kind: str, ident: str, query: dict[str, str], request: Request
    ) -> dict[str, Any] | bytes:
        account = self.account
        if kind == "list_jobs":
            return account.list_jobs(query)
        if kind == "create":
            return account.create(_json_body(request))
        if kind == "retrieve":
            return account.retrieve(ident)
        if kind == "list_events":
            return account.list_events(ident, query)
        if kind == "list_checkpoints":
            return account.list_checkpoints(ident, query)
        if kind in ("cancel", "pause", "resume"):
            return account.intervene(ident, kind)  # type: ignore[arg-type]
        if kind == "chat":
            return chat.complete(_json_body(request), self.tuned_models())
        if kind == "retrieve_file":
            return account.file(ident)
        return account.file_content(ident)

    def tuned_models(self) -> set[str]:
        """Fine-tuned models of the other providers' jobs (Together's chat path is OpenAI's)."""
        return {model for provider in self.providers for model in provider.tuned_models()}

    def _control(self, method: str, path: str, request: Request) -> Response:
        """`/_emulator/...`: steer a running emulator (no auth, no faults, not counted)."""
        try:
            if (method, path) == ("POST", "/_emulator/faults"):
                self.faults.set(Faults.model_validate(_json_body(request)))
                return Response.json(200, self.faults.faults.model_dump())
            if (method, path) == ("POST", "/_emulator/jobs"):
                job = JobScenario.model_validate(_json_body(request))
                return Response.json(200, {"id": self.account.add(job)})
            if (method, path) == ("POST", "/_emulator/advance"):
                seconds = float(_json_body(request).get("seconds", 0))
                self.account.clock.advance(seconds)
                return Response.json(200, {"now": self.account.now()})
        except (ValidationError, ValueError, TypeError, AttributeError) as error:
            raise ApiError(400, str(error)) from None
        if (method, path) == ("GET", "/_emulator/stats"):
            with self.lock:
                counts = dict(self.counts)
            return Response.json(
                200,
                {
                    "request_count": sum(counts.values()),
                    "counts": counts,
                    "now": self.account.now(),
                },
            )
        raise invalid_url(method, path)

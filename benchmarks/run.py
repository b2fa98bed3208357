"""Benchmarks for requests-opsnow: ``python benchmarks/run.py`` (about three minutes).

Everything is measured in one run, interleaved, and reported as ratios, because
the machines these run on are shared and noisy. Peers (requests-auth, and
httpx-auth for the httpx sections) are used when installed; matplotlib, when
installed, draws ``benchmarks/latency.png`` (shown in docs/performance.md). Results also
go to ``benchmarks/out/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Protocol

import anyio
import httpx
import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oauth_route import COUNTS_PATH, OAUTH_PATH, add_oauth_token_route
from peers import BlockingRefreshAuth, NaiveTokenAuth, StaticBearerAuth, StaticBearerHttpxAuth

from requests_opsnow import OpsNowAuth
from requests_opsnow.httpx import OpsNowAuth as HttpxOpsNowAuth
from requests_opsnow.testing import FakeOpsNow

OUT = Path(__file__).resolve().parent / "out"
PLOT = Path(__file__).resolve().parent / "latency.png"
"""Shown in docs/performance.md; rewritten by every run."""
API_URL = "https://api.opsnow360.io/platform/v2/companies"
TOKEN_BODY = b'{"status":"success","data":{"accessToken":"stub-token","expiresIn":3600}}'
TIMEOUT = 10.0
"""Seconds: every HTTP request here, and each wait on a fake-server process."""
FAKE_SERVER_STARTUP = 30.0
"""Seconds for ``opsnow fake-server`` to print its details (an import and a bind)."""


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthCallCost:
    auth_call_us: float
    """``auth(prepared_request)`` with a cached token, less the loop's own cost."""


@dataclass(frozen=True)
class Overhead:
    """Per-request medians, and the median per-round ratio against the static auth.

    ``noise_pct`` is the static auth against itself: what the ratio is worth.
    """

    static_us: float
    opsnow_us: float
    overhead_pct: float
    noise_pct: float


@dataclass(frozen=True)
class MemoryPerAuth:
    bytes_per_auth: float


@dataclass(frozen=True)
class TokenCount:
    """The token requests one auth made while threads sent ``requests`` API requests."""

    token_requests: int
    requests: int
    ok: int
    non_200: int

    @classmethod
    def of(cls, token_requests: int, statuses: list[int]) -> TokenCount:
        ok = statuses.count(200)
        return cls(token_requests, len(statuses), ok, len(statuses) - ok)


@dataclass(frozen=True)
class Sustained:
    expected_refresh_cycles: int
    contenders: dict[str, TokenCount]


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    max_ms: float
    refreshed: bool
    """Whether the token changed during the timed requests."""
    samples: tuple[tuple[float, float], ...]
    """(seconds since start, latency in seconds) per request: for the plot, not results.json."""


@dataclass(frozen=True)
class ImportCost:
    requests_ms: float
    opsnow_extra_ms: float
    overhead_pct: float


@dataclass(frozen=True)
class HttpxOverhead:
    """httpx per-request cost, ``requests_opsnow.httpx.OpsNowAuth`` vs a static Bearer
    ``httpx.Auth``, with a ``MockTransport`` answering at once (same client, interleaved)."""

    sync_client: Overhead
    async_client: Overhead
    token_requests_while_timed: int
    """Token requests the fake saw during the timed part: 0, or the figures mean nothing."""


@dataclass(frozen=True)
class StampedeResult:
    """One auth under ``coroutines`` requests started at once on a cold token."""

    token_requests: int
    """Counted by the server."""
    coroutines: int
    ok: int
    failed: int
    errors: dict[str, int]
    """Exception type names (or ``HTTP <status>``) of the failed requests, how many of each."""
    seconds: float
    first_ok_s: float | None
    """When the first request succeeded (seconds since the coroutines were started)."""
    async_flow: bool
    """Whether the auth has an async flow of its own; if not, httpx runs its sync flow
    (and so its token request) in the event loop's thread."""


@dataclass(frozen=True)
class AsyncStampede:
    """``coroutines`` requests on a cold auth, one ``httpx.AsyncClient`` with
    ``max_connections``, two ways of queueing the requests beyond that:

    - ``gated``: at a semaphore in front of httpcore's pool (at most ``max_connections``
      requests in the pool);
    - ``pool_queued``: in httpcore's pool itself, which runs an assignment pass over
      every queued request and connection each time a request enters or leaves
      (httpcore 1.0.9): seconds of CPU on the event loop.

    The auth flow runs before the transport, so in both the auth sees all
    ``coroutines`` at once.
    """

    coroutines: int
    token_delay_s: float
    max_connections: int
    httpcore: str
    gated: dict[str, StampedeResult]
    pool_queued: dict[str, StampedeResult]


@dataclass(frozen=True)
class LoopLag:
    """How late a 1 ms ``anyio.sleep`` ticker woke, while coroutines sent requests."""

    p50_ms: float
    p99_ms: float
    max_ms: float
    max_at_s: float
    """When the longest lag began (seconds since start of the timed part)."""
    window_max_ms: float
    """The longest lag that began in the refresh window (``LoopHealth.window_s``), with
    or without a refresh: the steady-state variants are the control."""
    outside_max_ms: float
    """The longest lag outside that window."""
    gen2_collections: int
    """Full garbage collections during the timed part: each one is a stall of its own."""
    ticks: int
    requests: int
    failed: int
    new_token_at_s: float | None
    """When a request first carried a token other than the first one (None: no refresh)."""


@dataclass(frozen=True)
class LoopHealth:
    seconds: float
    coroutines: int
    token_delay_s: float
    refresh_margin_s: float
    refresh_due_s: float
    """When the first token becomes due for its early refresh (seconds since start), for
    ``ttl`` 3 s: the refresh's token request then takes ``token_delay_s``."""
    window_s: tuple[float, float]
    """The refresh window: from just before it is due to just after its token request."""
    httpx_async_client_ms: float
    """Median time to build an ``httpx.AsyncClient()`` (default TLS settings, which load
    a CA bundle) in this process: how long the loop would stall if a token request built
    its client in the loop's thread (requests-opsnow builds it in a worker thread)."""
    variants: dict[str, LoopLag]


@dataclass(frozen=True)
class BenchmarkReport:
    python: str
    requests: str
    httpx: str
    httpx_auth: str | None
    """httpx-auth's version, or None when it is not installed (its rows are then missing)."""
    opentelemetry_sdk: str | None
    """The OpenTelemetry SDK's version when its tracer and meter providers were set for the
    whole run, as an instrumented service has them; None when it is not installed."""
    auth_call: AuthCallCost
    stubbed: Overhead
    per_call: Overhead
    memory: MemoryPerAuth
    loopback: Overhead
    cold_32_threads: dict[str, TokenCount]
    sustained: Sustained
    revocation: TokenCount
    latency: dict[str, Latency]
    httpx_overhead: HttpxOverhead
    async_stampede: AsyncStampede
    loop_health: LoopHealth
    import_cost: ImportCost

    def to_json(self) -> str:
        """Everything but the latency samples (thousands of points, drawn in the plot)."""

        def without_samples(items: list[tuple[str, Any]]) -> dict[str, Any]:
            return {name: value for name, value in items if name != "samples"}

        return json.dumps(asdict(self, dict_factory=without_samples), indent=2)


# -- per-request overhead ------------------------------------------------------------------


class StubAdapter(HTTPAdapter):
    """A transport that answers instantly, so only client-side cost is measured.

    An HTTPAdapter (what ``response.connection`` is) that never opens a connection.
    """

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response._content = TOKEN_BODY if request.method == "POST" else b'{"status":"success"}'
        # Already in memory, as after requests reads a body: streaming it yields _content.
        response._content_consumed = True  # type: ignore[attr-defined]  # not in types-requests
        response.headers["Content-Type"] = "application/json"
        response.request = request
        response.url = request.url or ""
        response.connection = self
        return response

    def close(self) -> None:
        pass


def interleaved(
    variants: dict[str, Callable[[], object]], rounds: int, per_round: int
) -> dict[str, list[float]]:
    """Seconds per call of each variant, one sample per round, in alternating blocks."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(rounds):
        order = list(variants.items())
        if round_number % 2:
            order.reverse()  # neither variant always runs first
        for name, call in order:
            start = time.perf_counter()
            for _ in range(per_round):
                call()
            samples[name].append((time.perf_counter() - start) / per_round)
    return samples


def stubbed_overhead() -> Overhead:
    with requests.Session() as session, requests.Session() as token_session:
        session.mount("https://", StubAdapter())
        token_session.mount("https://", StubAdapter())
        auth = OpsNowAuth("bench-key", session=token_session)
        static = StaticBearerAuth("stub-token")
        session.get(API_URL, auth=auth, timeout=TIMEOUT)
        times = interleaved(
            {
                "static": lambda: session.get(API_URL, auth=static, timeout=TIMEOUT),
                "static again": lambda: session.get(API_URL, auth=static, timeout=TIMEOUT),
                "opsnow": lambda: session.get(API_URL, auth=auth, timeout=TIMEOUT),
            },
            rounds=40,
            per_round=200,
        )
    return _overhead(times)


def loopback_overhead() -> Overhead:
    with fake_server_process(ttl=3600.0, token_delay=0.0) as server:
        url = server.base_url + "/platform/v2/companies"
        auth = OpsNowAuth(server.api_key, base_url=server.base_url)
        static = StaticBearerAuth(auth.get_token())
        with requests.Session() as session:
            times = interleaved(
                {
                    "static": lambda: session.get(url, auth=static, timeout=TIMEOUT).close(),
                    "static again": lambda: session.get(url, auth=static, timeout=TIMEOUT).close(),
                    "opsnow": lambda: session.get(url, auth=auth, timeout=TIMEOUT).close(),
                },
                rounds=60,
                per_round=40,
            )
        auth.close()
    return _overhead(times)


def _overhead(times: dict[str, list[float]]) -> Overhead:
    """Medians, and the median of per-round ratios (adjacent blocks, so drift cancels).

    "static again" against "static" is the same code twice: its ratio is the noise.
    """

    def ratio_pct(name: str) -> float:
        ratios = [other / static for static, other in zip(times["static"], times[name])]
        return (statistics.median(ratios) - 1) * 100

    return Overhead(
        static_us=statistics.median(times["static"]) * 1e6,
        opsnow_us=statistics.median(times["opsnow"]) * 1e6,
        overhead_pct=ratio_pct("opsnow"),
        noise_pct=ratio_pct("static again"),
    )


def per_call_construction() -> Overhead:
    """``requests.get(url, auth=OpsNowAuth(KEY))`` in a loop, against one shared auth.

    Both on one session with a stubbed transport: the difference is the cost of
    building an auth (and finding the process's token) on every call.
    """
    with requests.Session() as session, requests.Session() as token_session:
        session.mount("https://", StubAdapter())
        token_session.mount("https://", StubAdapter())
        shared = OpsNowAuth("bench-key", session=token_session)
        session.get(API_URL, auth=shared, timeout=TIMEOUT)
        times = interleaved(
            {
                "static": lambda: session.get(API_URL, auth=shared, timeout=TIMEOUT),
                "static again": lambda: session.get(API_URL, auth=shared, timeout=TIMEOUT),
                "opsnow": lambda: session.get(
                    API_URL, auth=OpsNowAuth("bench-key", session=token_session), timeout=TIMEOUT
                ),
            },
            rounds=40,
            per_round=200,
        )
    return _overhead(times)


def memory_per_auth(count: int = 10_000) -> MemoryPerAuth:
    """Bytes held by each live OpsNowAuth (same key, so one shared token lifecycle)."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        auths = [OpsNowAuth("bench-key") for _ in range(count)]
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del auths
    return MemoryPerAuth(bytes_per_auth=(after - before) / count)


def auth_call_cost() -> AuthCallCost:
    """Microseconds for ``auth(prepared_request)`` with a cached token."""
    with requests.Session() as token_session:
        token_session.mount("https://", StubAdapter())
        auth = OpsNowAuth("bench-key", session=token_session)
        prepared = requests.Request("GET", API_URL).prepare()
        auth(prepared)
        count = 100_000

        def baseline() -> None:
            prepared.hooks = {"response": []}

        def with_auth() -> None:
            prepared.hooks = {"response": []}
            auth(prepared)

        times = interleaved(
            {"baseline": baseline, "auth": with_auth}, rounds=10, per_round=count // 10
        )
    auth_s, baseline_s = statistics.median(times["auth"]), statistics.median(times["baseline"])
    return AuthCallCost(auth_call_us=(auth_s - baseline_s) * 1e6)


# -- token requests under concurrency --------------------------------------------------------


Contender = tuple[Callable[[], AuthBase], Callable[[], int]]
"""How to make the auth, and how to count the token requests it made (since it was made)."""


class _Clearable(Protocol):
    def clear(self) -> None: ...


def contenders(fake: FakeOpsNow, margin: float) -> dict[str, Contender]:
    def opsnow_count() -> int:
        return fake.token_requests

    made: dict[str, Contender] = {
        "requests-opsnow": (
            lambda: OpsNowAuth(fake.api_key, base_url=fake.base_url, refresh_margin=margin),
            opsnow_count,
        ),
        "hand-written helper": (
            lambda: NaiveTokenAuth(fake.token_url, fake.api_key, margin),
            opsnow_count,
        ),
    }
    try:
        import requests_auth
    except ImportError:
        return made

    oauth = add_oauth_token_route(fake)  # it speaks OAuth2, not OpsNow's token request

    def oauth_peer() -> AuthBase:
        token_cache: _Clearable = requests_auth.OAuth2.token_cache  # untyped in requests-auth
        token_cache.clear()  # its cache is process-wide: start cold
        oauth.reset_counts()
        auth: AuthBase = requests_auth.OAuth2ClientCredentials(
            oauth.url, "bench-client", fake.api_key, early_expiry=margin
        )
        return auth

    made["requests-auth OAuth2ClientCredentials"] = (oauth_peer, lambda: oauth.token_requests)
    return made


def _hammer(auth: AuthBase, url: str, threads: int, until: float | None) -> list[int]:
    barrier = threading.Barrier(threads)

    def worker() -> list[int]:
        statuses: list[int] = []
        with requests.Session() as session:
            barrier.wait()
            while True:
                statuses.append(session.get(url, auth=auth, timeout=10).status_code)
                if until is None or time.monotonic() >= until:
                    return statuses

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker) for _ in range(threads)]
        return [status for future in futures for status in future.result()]


def cold_start(fake: FakeOpsNow) -> dict[str, TokenCount]:
    results: dict[str, TokenCount] = {}
    fake.set_token_delay(0.1)
    for name, (make, token_requests) in contenders(fake, margin=30).items():
        fake.reset_counts()
        statuses = _hammer(make(), fake.base_url + "/platform/v2/companies", 32, until=None)
        results[name] = TokenCount.of(token_requests(), statuses)
    fake.reset()
    return results


def sustained(fake: FakeOpsNow, ttl: float, margin: float, seconds: float) -> Sustained:
    """8 threads for ``seconds`` across several token lifetimes."""
    results: dict[str, TokenCount] = {}
    fake.ttl = ttl
    fake.set_token_delay(0.05)
    for name, (make, token_requests) in contenders(fake, margin=margin).items():
        fake.reset_counts()
        statuses = _hammer(
            make(), fake.base_url + "/platform/v2/companies", 8, time.monotonic() + seconds
        )
        results[name] = TokenCount.of(token_requests(), statuses)
    cycles = 1 + int(seconds // (ttl - min(margin, ttl / 2)))
    fake.reset()
    fake.ttl = 3600
    return Sustained(expected_refresh_cycles=cycles, contenders=results)


def revocation_under_load(fake: FakeOpsNow) -> TokenCount:
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    auth.get_token()
    fake.reset_counts()
    threading.Timer(0.5, fake.revoke_tokens).start()
    statuses = _hammer(auth, fake.base_url + "/platform/v2/companies", 8, time.monotonic() + 1.5)
    auth.close()
    return TokenCount.of(fake.token_requests, statuses)


# -- latency across a refresh ------------------------------------------------------------------


@dataclass(frozen=True)
class FakeServer:
    """What ``opsnow fake-server --json`` prints on its first line."""

    base_url: str
    api_key: str
    no_proxy: str
    """The host to keep off any proxy the environment names."""

    @classmethod
    def from_json(cls, line: str) -> FakeServer:
        details = json.loads(line)
        names = [field.name for field in fields(cls)]
        if not isinstance(details, dict) or not all(
            isinstance(details.get(name), str) for name in names
        ):
            raise ValueError(f"expected strings {', '.join(names)}")
        return cls(**{name: details[name] for name in names})


@contextmanager
def fake_server_process(
    ttl: float, token_delay: float, oauth: bool = False
) -> Iterator[FakeServer]:
    """``opsnow fake-server`` in its own process: the server does not share our GIL.

    ``oauth``: the same fake with ``oauth_route``'s OAuth2 token endpoint too (at
    ``base_url + OAUTH_PATH``), run by ``benchmarks/oauth_route.py``.
    """
    program = (
        [str(Path(__file__).resolve().parent / "oauth_route.py")]
        if oauth
        else ["-m", "requests_opsnow", "fake-server", "--json"]
    )
    process = subprocess.Popen(
        [sys.executable, *program, "--ttl", str(ttl), "--token-delay", str(token_delay)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        server = _read_details(process)
        with _off_proxies(server.no_proxy):
            yield server
    finally:
        _stop(process)


def _read_details(process: subprocess.Popen[str]) -> FakeServer:
    """The server's first stdout line, within FAKE_SERVER_STARTUP seconds, as a FakeServer."""
    stdout = process.stdout
    assert stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def read_first_line() -> None:
        try:
            lines.put(stdout.readline())
        except (OSError, ValueError):  # its pipe closed under us: the process was stopped
            lines.put("")

    threading.Thread(target=read_first_line, daemon=True).start()
    try:
        line = lines.get(timeout=FAKE_SERVER_STARTUP)
    except queue.Empty:
        raise RuntimeError(
            f"opsnow fake-server printed nothing in {FAKE_SERVER_STARTUP:g} s"
        ) from None
    if not line:  # end of its output: it died before printing
        try:
            ending = f"exited with code {process.wait(timeout=TIMEOUT)}"
        except subprocess.TimeoutExpired:
            ending = "closed its output"
        raise RuntimeError(f"opsnow fake-server {ending} before printing its details")
    try:
        return FakeServer.from_json(line)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise RuntimeError(
            f"opsnow fake-server's first line is not its JSON details ({exc}): {line!r}"
        ) from None


def _stop(process: subprocess.Popen[str]) -> None:
    """Ctrl-C, as a user would; killed if it has not exited within TIMEOUT seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=TIMEOUT)


_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


@contextmanager
def _off_proxies(host: str) -> Iterator[None]:
    """``host`` in NO_PROXY (and no_proxy) while a proxy variable is set, as the CLI advises.

    Nothing changes when no proxy is set (the usual case).
    """
    names = [*_PROXY_VARIABLES, *(name.upper() for name in _PROXY_VARIABLES)]
    if not any(os.environ.get(name) for name in names):
        yield
        return
    saved = {name: os.environ.get(name) for name in ("no_proxy", "NO_PROXY")}
    for name, value in saved.items():
        os.environ[name] = f"{value},{host}" if value else host
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def latency_across_refresh() -> dict[str, Latency]:
    """Request latency while a 500 ms token fetch happens, blocking vs non-blocking refresh.

    The server runs in another process, as a real one would: only the client's
    own work (and its refresh thread) shares this process.
    """
    margin, seconds = 1.5, 3.0
    variants: dict[str, tuple[float, Callable[[str, str], AuthBase]]] = {
        "steady state (no refresh)": (
            3600.0, lambda base, key: OpsNowAuth(key, base_url=base, refresh_margin=margin),
        ),
        "non-blocking (requests-opsnow)": (
            3.0, lambda base, key: OpsNowAuth(key, base_url=base, refresh_margin=margin),
        ),
        "blocking (locked hand-written helper)": (
            3.0, lambda base, key: BlockingRefreshAuth(base + FakeOpsNow.TOKEN_PATH, key, margin),
        ),
    }  # fmt: skip
    results: dict[str, Latency] = {}
    for name, (ttl, make) in variants.items():
        with fake_server_process(ttl, token_delay=0.5) as server:
            auth = make(server.base_url, server.api_key)
            url = server.base_url + "/platform/v2/companies"
            requests.get(url, auth=auth, timeout=TIMEOUT).close()  # the first token, before timing
            before = _token_of(auth)
            samples = _timed_requests(auth, url, threads=4, seconds=seconds)
            results[name] = _latency(samples, refreshed=_token_of(auth) != before)
    return results


def _token_of(auth: AuthBase) -> str | None:
    if isinstance(auth, OpsNowAuth):
        return auth.get_token()
    if isinstance(auth, NaiveTokenAuth):
        return auth.token
    raise TypeError(f"no token to read from {type(auth).__name__}")


def _timed_requests(
    auth: AuthBase, url: str, threads: int, seconds: float
) -> list[tuple[float, float]]:
    """(seconds since start, latency in seconds) of each request."""
    start = time.perf_counter()
    samples: list[tuple[float, float]] = []
    lock = threading.Lock()

    def worker() -> None:
        with requests.Session() as session:
            while (began := time.perf_counter()) - start < seconds:
                session.get(url, auth=auth, timeout=TIMEOUT).close()
                with lock:
                    samples.append((began - start, time.perf_counter() - began))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result()
    return samples


def _latency(samples: list[tuple[float, float]], refreshed: bool) -> Latency:
    latencies = sorted(latency for _, latency in samples)
    return Latency(
        p50_ms=latencies[len(latencies) // 2] * 1e3,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1e3,
        max_ms=latencies[-1] * 1e3,
        refreshed=refreshed,
        samples=tuple(samples),
    )


# -- httpx ---------------------------------------------------------------------------------

ASYNC_BOUND = 120.0
"""Seconds: the longest any one async section may take before it is stopped (anyio.fail_after)."""


def telemetry_on() -> str | None:
    """Set the OpenTelemetry SDK's tracer and meter providers (spans kept in memory), as a
    service that exports them has; the SDK's version, or None when it is not installed.
    Every figure of the run is then measured with them set."""
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry.sdk.version import __version__
    except ImportError:
        return None
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    trace.set_tracer_provider(tracing)
    metrics.set_meter_provider(MeterProvider())
    return str(__version__)


def _httpx_auth_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("httpx-auth")
    except PackageNotFoundError:
        return None


def _httpx_auth_peer(token_url: str, api_key: str, margin: float) -> httpx.Auth | None:
    """httpx-auth's ``OAuth2ClientCredentials`` against ``oauth_route``, cold; None if absent.

    It has a sync flow only: in an ``httpx.AsyncClient``, httpx runs it (and its token
    request, with a blocking ``httpx.Client``) in the event loop's thread.
    """
    try:
        import httpx_auth
    except ImportError:
        return None
    httpx_auth.OAuth2.token_cache.clear()  # its cache is process-wide: start cold
    auth: httpx.Auth = httpx_auth.OAuth2ClientCredentials(
        token_url, "bench-client", api_key, early_expiry=margin, timeout=int(TIMEOUT)
    )
    return auth


def _has_async_flow(auth: httpx.Auth) -> bool:
    return type(auth).async_auth_flow is not httpx.Auth.async_auth_flow


def _stub_api(request: httpx.Request) -> httpx.Response:
    """The API behind ``httpx.MockTransport``: 200 at once, no network."""
    return httpx.Response(
        200, content=b'{"status":"success"}', headers={"Content-Type": "application/json"}
    )


async def interleaved_async(
    variants: dict[str, Callable[[], Awaitable[object]]], rounds: int, per_round: int
) -> dict[str, list[float]]:
    """:func:`interleaved` for coroutines: seconds per awaited call, one sample per round."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(rounds):
        order = list(variants.items())
        if round_number % 2:
            order.reverse()
        for name, call in order:
            start = time.perf_counter()
            for _ in range(per_round):
                await call()
            samples[name].append((time.perf_counter() - start) / per_round)
    return samples


def httpx_overhead() -> HttpxOverhead:
    """Per request, OpsNow's httpx auth vs a static Bearer auth, sync and async clients.

    The API is a ``MockTransport``; the OpsNow auth's token comes beforehand from
    an in-process FakeOpsNow (``token_url``), while the API URL stays an OpsNow
    host, so the token is attached, from memory, on every timed request.
    """
    rounds, per_round = 40, 200
    with FakeOpsNow() as fake:
        auth = HttpxOpsNowAuth(fake.api_key, token_url=fake.token_url)
        static = StaticBearerHttpxAuth(auth.get_token())
        before = fake.token_requests
        transport = httpx.MockTransport(_stub_api)
        with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
            _check_attached(client.get(API_URL, auth=auth), static)
            sync_times = interleaved(
                {
                    "static": lambda: client.get(API_URL, auth=static),
                    "static again": lambda: client.get(API_URL, auth=static),
                    "opsnow": lambda: client.get(API_URL, auth=auth),
                },
                rounds=rounds,
                per_round=per_round,
            )

        async def async_times() -> dict[str, list[float]]:
            with anyio.fail_after(ASYNC_BOUND):
                async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
                    _check_attached(await client.get(API_URL, auth=auth), static)
                    return await interleaved_async(
                        {
                            "static": lambda: client.get(API_URL, auth=static),
                            "static again": lambda: client.get(API_URL, auth=static),
                            "opsnow": lambda: client.get(API_URL, auth=auth),
                        },
                        rounds=rounds,
                        per_round=per_round,
                    )

        async_result = anyio.run(async_times)
        while_timed = fake.token_requests - before
    return HttpxOverhead(
        sync_client=_overhead(sync_times),
        async_client=_overhead(async_result),
        token_requests_while_timed=while_timed,
    )


def _check_attached(response: httpx.Response, static: StaticBearerHttpxAuth) -> None:
    """The OpsNow auth put its token on the API request (else the timing means nothing)."""
    if response.status_code != 200 or response.request.headers.get("Authorization") != (
        static.header
    ):
        raise RuntimeError("the OpsNow httpx auth did not attach its token to the stubbed API")


STAMPEDE_COROUTINES = 1000
STAMPEDE_CONNECTIONS = 100


class GatedTransport(httpx.AsyncBaseTransport):
    """At most ``limit`` requests at a time in the wrapped transport; the rest wait here.

    A semaphore costs the same however many wait; httpcore's pool, with hundreds of
    requests queued in it, spends seconds of the event loop's time on assigning
    them (see :class:`AsyncStampede`).
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int) -> None:
        self._inner = inner
        self._gate = anyio.Semaphore(limit)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async with self._gate:
            response = await self._inner.handle_async_request(request)
            await response.aread()  # the connection is back in the pool before the next one
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def async_stampede(token_delay: float = 0.1) -> AsyncStampede:
    """1,000 coroutines on a cold auth at once, one ``httpx.AsyncClient``: token requests.

    Each contender gets a fake of its own, in its own process (a new key: nothing
    cached; and the server's handler threads do not share this process's GIL with
    the event loop), whose token endpoints take ``token_delay``, so the first
    fetch is in flight while the other coroutines arrive. The server counts the
    token requests.
    """
    import httpcore

    results: dict[bool, dict[str, StampedeResult]] = {True: {}, False: {}}
    for gated in (True, False):
        for name, (oauth, make) in _async_contenders().items():
            with fake_server_process(3600.0, token_delay, oauth=True) as server:
                auth = make(server)
                if auth is None:
                    continue
                url = server.base_url + "/platform/v2/companies"
                outcome = anyio.run(_stampede, auth, url, gated)
                counts = httpx.get(server.base_url + COUNTS_PATH, timeout=TIMEOUT).json()
            results[gated][name] = outcome.result(
                token_requests=int(counts["oauth" if oauth else "opsnow"]),
                async_flow=_has_async_flow(auth),
            )
    return AsyncStampede(
        coroutines=STAMPEDE_COROUTINES,
        token_delay_s=token_delay,
        max_connections=STAMPEDE_CONNECTIONS,
        httpcore=httpcore.__version__,
        gated=results[True],
        pool_queued=results[False],
    )


AsyncContender = tuple[bool, Callable[[FakeServer], "httpx.Auth | None"]]
"""Whether it uses the OAuth2 route (else OpsNow's token endpoint), and how to make the
auth, cold, for a fake (None: its package is not installed)."""


def _async_contenders() -> dict[str, AsyncContender]:
    return {
        "requests-opsnow (httpx)": (
            False,
            lambda server: HttpxOpsNowAuth(server.api_key, base_url=server.base_url),
        ),
        "httpx-auth OAuth2ClientCredentials": (
            True,
            lambda server: _httpx_auth_peer(
                server.base_url + OAUTH_PATH, server.api_key, margin=30.0
            ),
        ),
    }


@dataclass
class _Outcomes:
    """What the coroutines of one stampede saw, as it happened."""

    start: float
    statuses: list[tuple[float, int]]
    errors: Counter[str]
    seconds: float = 0.0

    def result(self, token_requests: int, async_flow: bool) -> StampedeResult:
        errors = Counter(self.errors)
        errors.update(f"HTTP {status}" for _, status in self.statuses if status != 200)
        ok_at = [at for at, status in self.statuses if status == 200]
        return StampedeResult(
            token_requests=token_requests,
            coroutines=STAMPEDE_COROUTINES,
            ok=len(ok_at),
            failed=STAMPEDE_COROUTINES - len(ok_at),
            errors=dict(errors),
            seconds=self.seconds,
            first_ok_s=min(ok_at) if ok_at else None,
            async_flow=async_flow,
        )


async def _stampede(auth: httpx.Auth, url: str, gated: bool) -> _Outcomes:
    """STAMPEDE_COROUTINES requests started at once through one client."""
    limits = httpx.Limits(max_connections=STAMPEDE_CONNECTIONS)
    transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(limits=limits)
    if gated:
        transport = GatedTransport(transport, STAMPEDE_CONNECTIONS)
    timeout = httpx.Timeout(TIMEOUT, pool=ASYNC_BOUND / 2)  # a generous wait for a connection
    seen = _Outcomes(start=time.perf_counter(), statuses=[], errors=Counter())
    with anyio.fail_after(ASYNC_BOUND):
        async with httpx.AsyncClient(auth=auth, transport=transport, timeout=timeout) as client:

            async def one() -> None:
                try:
                    response = await client.get(url)
                except Exception as exc:  # noqa: BLE001 - counted and reported, whatever it is
                    seen.errors[type(exc).__name__] += 1
                else:
                    seen.statuses.append((time.perf_counter() - seen.start, response.status_code))

            async with anyio.create_task_group() as group:
                for _ in range(STAMPEDE_COROUTINES):
                    group.start_soon(one)
    seen.seconds = time.perf_counter() - seen.start
    return seen


TICK = 0.001
"""Seconds the loop-lag ticker asks to sleep; its lag is how much longer it slept."""


def loop_health(
    seconds: float = 3.0, coroutines: int = 4, token_delay: float = 0.5, margin: float = 1.5
) -> LoopHealth:
    """Event-loop lag while coroutines send requests, with and without a refresh.

    The fake runs in another process. With ``ttl`` 3 s and a margin of 1.5 s,
    the first token (fetched before timing) becomes due at about 1.5 s and its
    refresh takes ``token_delay``: one refresh in the timed ``seconds``.
    """
    ttl_refresh = 3.0
    due = ttl_refresh - margin
    window = (due - 0.1, due + token_delay + 0.1)

    def opsnow(server: FakeServer) -> httpx.Auth | None:
        return HttpxOpsNowAuth(server.api_key, base_url=server.base_url, refresh_margin=margin)

    def peer(server: FakeServer) -> httpx.Auth | None:
        return _httpx_auth_peer(server.base_url + OAUTH_PATH, server.api_key, margin)

    variants: dict[str, tuple[float, bool, Callable[[FakeServer], httpx.Auth | None]]] = {
        "requests-opsnow, steady state (no refresh)": (3600.0, False, opsnow),
        "requests-opsnow, across the refresh": (ttl_refresh, False, opsnow),
        "httpx-auth OAuth2ClientCredentials, steady state (no refresh)": (3600.0, True, peer),
        "httpx-auth OAuth2ClientCredentials, across the refresh": (ttl_refresh, True, peer),
    }
    results: dict[str, LoopLag] = {}
    for name, (ttl, oauth, make) in variants.items():
        if oauth and _httpx_auth_version() is None:
            continue
        with fake_server_process(ttl, token_delay, oauth=oauth) as server:
            auth = make(server)
            assert auth is not None
            url = server.base_url + "/platform/v2/companies"
            results[name] = anyio.run(_watch_loop, auth, url, seconds, coroutines, window)
    return LoopHealth(
        seconds=seconds,
        coroutines=coroutines,
        token_delay_s=token_delay,
        refresh_margin_s=margin,
        refresh_due_s=due,
        window_s=window,
        httpx_async_client_ms=anyio.run(_async_client_ms),
        variants=results,
    )


async def _async_client_ms(runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        client = httpx.AsyncClient(timeout=TIMEOUT)
        times.append(time.perf_counter() - start)
        await client.aclose()
    return statistics.median(times) * 1e3


async def _watch_loop(
    auth: httpx.Auth, url: str, seconds: float, coroutines: int, window: tuple[float, float]
) -> LoopLag:
    """``coroutines`` sending requests for ``seconds``, and a ticker timing the loop."""
    import gc

    lags: list[tuple[float, float]] = []
    failures: Counter[str] = Counter()
    tokens: dict[str, float] = {}  # Authorization header -> when a request first sent it
    sent = 0
    with anyio.fail_after(seconds + ASYNC_BOUND):
        async with httpx.AsyncClient(auth=auth, timeout=TIMEOUT) as client:
            first = await client.get(url)  # the first token, before timing
            first.raise_for_status()
            first_header = first.request.headers.get("Authorization", "")
            full_collections = gc.get_stats()[2]["collections"]
            start = time.perf_counter()

            async def requester() -> None:
                nonlocal sent
                while (began := time.perf_counter()) - start < seconds:
                    try:
                        response = await client.get(url)
                    except httpx.HTTPError as exc:
                        failures[type(exc).__name__] += 1
                        continue
                    sent += 1
                    if response.status_code != 200:
                        failures[f"HTTP {response.status_code}"] += 1
                    tokens.setdefault(response.request.headers.get("Authorization", ""), began)

            async def ticker() -> None:
                while (began := time.perf_counter()) - start < seconds:
                    await anyio.sleep(TICK)
                    lags.append((began - start, time.perf_counter() - began - TICK))

            async with anyio.create_task_group() as group:
                for _ in range(coroutines):
                    group.start_soon(requester)
                group.start_soon(ticker)
            full_collections = gc.get_stats()[2]["collections"] - full_collections
    ordered = sorted(lag for _, lag in lags)
    worst_at, worst = max(lags, key=lambda sample: sample[1])
    inside = [lag for at, lag in lags if window[0] <= at <= window[1]]
    outside = [lag for at, lag in lags if not window[0] <= at <= window[1]]
    new_tokens = [at - start for header, at in tokens.items() if header != first_header]
    return LoopLag(
        p50_ms=ordered[len(ordered) // 2] * 1e3,
        p99_ms=ordered[int(len(ordered) * 0.99)] * 1e3,
        max_ms=worst * 1e3,
        max_at_s=worst_at,
        window_max_ms=max(inside, default=0.0) * 1e3,
        outside_max_ms=max(outside, default=0.0) * 1e3,
        gen2_collections=full_collections,
        ticks=len(lags),
        requests=sent,
        failed=sum(failures.values()),
        new_token_at_s=min(new_tokens) if new_tokens else None,
    )


# -- import time ----------------------------------------------------------------------------------

_IMPORT_PROBE = """
import time
t0 = time.perf_counter(); import requests; t1 = time.perf_counter()
import requests_opsnow; t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def import_cost(runs: int = 15) -> ImportCost:
    """Medians over fresh interpreters, both packages from compiled bytecode.

    The first run writes the package's bytecode (requests' was written when it was
    installed); with PYTHONDONTWRITEBYTECODE set, every run would compile the
    package from source and the comparison would be unfair.
    """
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    requests_s, opsnow_s = [], []
    for run in range(runs + 1):
        output = subprocess.run(
            [sys.executable, "-c", _IMPORT_PROBE],
            capture_output=True, text=True, check=True, timeout=60, env=environment,
        ).stdout.split()  # fmt: skip
        if run == 0:
            continue  # the warm-up that writes the bytecode
        requests_s.append(float(output[0]))
        opsnow_s.append(float(output[1]))
    base, extra = statistics.median(requests_s), statistics.median(opsnow_s)
    return ImportCost(
        requests_ms=base * 1e3, opsnow_extra_ms=extra * 1e3, overhead_pct=extra / base * 100
    )


# -- output ------------------------------------------------------------------------------


def plot(latency: Mapping[str, Latency], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(8, 4))
    for name, result in latency.items():
        points = sorted(result.samples)
        axis.scatter([t for t, _ in points], [lat * 1e3 for _, lat in points], s=6, label=name)
    axis.set_yscale("log")
    axis.set_xlabel("time since start (s); the token becomes due at 1.5 s, its fetch takes 500 ms")
    axis.set_ylabel("request latency (ms, log)")
    axis.set_title("Request latency across a token refresh (4 threads; server in another process)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


@contextmanager
def section(title: str) -> Iterator[None]:
    print(f"-- {title} ...", end=" ", flush=True)
    start = time.perf_counter()
    yield
    print(f"{time.perf_counter() - start:.1f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    OUT.mkdir(exist_ok=True)
    otel = telemetry_on()
    with section("auth() call"):
        auth_call = auth_call_cost()
    with section("per-request overhead, stubbed transport"):
        stubbed = stubbed_overhead()
    with section("an auth built per call vs one shared auth"):
        per_call = per_call_construction()
    with section("memory per auth"):
        memory = memory_per_auth()
    with section("per-request overhead, loopback keep-alive"):
        loopback = loopback_overhead()
    with FakeOpsNow() as fake:
        with section("32 cold threads"):
            cold = cold_start(fake)
        with section("sustained load across expiries"):
            sustained_load = sustained(fake, ttl=2.0, margin=0.5, seconds=5.0)
        with section("revocation under load"):
            revocation = revocation_under_load(fake)
    with section("latency across a 500 ms refresh"):
        latency = latency_across_refresh()
    with section("httpx per-request overhead, stubbed transport"):
        httpx_cost = httpx_overhead()
    with section(f"async stampede, {STAMPEDE_COROUTINES} coroutines"):
        stampede = async_stampede()
    with section("event-loop lag across a 500 ms refresh"):
        loop = loop_health()
    with section("import time"):
        imports = import_cost()
    results = BenchmarkReport(
        python=sys.version.split()[0],
        requests=requests.__version__,
        httpx=httpx.__version__,
        httpx_auth=_httpx_auth_version(),
        opentelemetry_sdk=otel,
        auth_call=auth_call,
        stubbed=stubbed,
        per_call=per_call,
        memory=memory,
        loopback=loopback,
        cold_32_threads=cold,
        sustained=sustained_load,
        revocation=revocation,
        latency=latency,
        httpx_overhead=httpx_cost,
        async_stampede=stampede,
        loop_health=loop,
        import_cost=imports,
    )
    drew = plot(results.latency, PLOT)
    (OUT / "results.json").write_text(results.to_json())
    print(report(results, drew))
    return 0


def report(r: BenchmarkReport, drew: bool) -> str:
    stubbed, loopback, per_call, imp = r.stubbed, r.loopback, r.per_call, r.import_cost
    otel = f"{r.opentelemetry_sdk} (providers set)" if r.opentelemetry_sdk else "not installed"
    lines = [
        "",
        f"Python {r.python}, requests {r.requests}, httpx {r.httpx},"
        f" httpx-auth {r.httpx_auth or 'not installed'},"
        f" OpenTelemetry SDK {otel}",
        f"auth(prepared_request): {r.auth_call.auth_call_us:.2f} us",
        "per-request cost, OpsNowAuth vs a static Bearer auth (same session, interleaved medians):",
        f"  stubbed transport: {stubbed.static_us:.1f} us vs {stubbed.opsnow_us:.1f} us"
        f" -> {stubbed.overhead_pct:+.2f}% (noise: static vs itself {stubbed.noise_pct:+.2f}%)",
        f"  loopback keep-alive: {loopback.static_us:.1f} us vs {loopback.opsnow_us:.1f} us"
        f" -> {loopback.overhead_pct:+.2f}% (noise: static vs itself {loopback.noise_pct:+.2f}%)",
        f"  an auth built per call vs one shared auth, stubbed:"
        f" {per_call.static_us:.1f} us vs {per_call.opsnow_us:.1f} us"
        f" -> {per_call.overhead_pct:+.2f}% (noise {per_call.noise_pct:+.2f}%)",
        f"memory per live OpsNowAuth: {r.memory.bytes_per_auth:.0f} bytes",
        "token requests, 32 threads starting cold (100 ms token endpoint):",
    ]
    lines += [
        f"  {name}: {v.token_requests} ({v.ok}/{v.requests} ok)"
        for name, v in r.cold_32_threads.items()
    ]
    cycles = r.sustained.expected_refresh_cycles
    lines.append(f"token requests, 8 threads for 5 s with a 2 s token ({cycles} refresh cycles):")
    lines += [
        f"  {name}: {v.token_requests} for {v.requests} requests ({v.non_200} failed)"
        for name, v in r.sustained.contenders.items()
    ]
    lines.append(
        f"revocation under load (8 threads): {r.revocation.token_requests} token request,"
        f" {r.revocation.non_200} failed"
    )
    lines.append("request latency across a refresh whose token request takes 500 ms (4 threads):")
    lines += [
        f"  {name}: p50 {v.p50_ms:.1f} ms, p99 {v.p99_ms:.1f} ms, max {v.max_ms:.1f} ms"
        f"{' (token refreshed)' if v.refreshed else ''}"
        for name, v in r.latency.items()
    ]
    lines += _httpx_report(r)
    lines.append(
        f"import: requests {imp.requests_ms:.1f} ms; requests_opsnow adds"
        f" {imp.opsnow_extra_ms:.1f} ms ({imp.overhead_pct:.1f}%)"
    )
    if drew:
        lines.append(f"plot: {PLOT}")
    return "\n".join(lines)


def _httpx_report(r: BenchmarkReport) -> list[str]:
    cost, stampede, loop = r.httpx_overhead, r.async_stampede, r.loop_health
    lines = [
        "httpx per-request cost, OpsNowAuth vs a static Bearer httpx.Auth (MockTransport,"
        " same client, interleaved medians):",
    ]
    for label, o in (("httpx.Client", cost.sync_client), ("httpx.AsyncClient", cost.async_client)):
        lines.append(
            f"  {label}: {o.static_us:.1f} us vs {o.opsnow_us:.1f} us"
            f" -> {o.overhead_pct:+.2f}% (noise: static vs itself {o.noise_pct:+.2f}%)"
        )
    lines.append(f"  token requests while timed: {cost.token_requests_while_timed}")
    lines.append(
        f"async stampede: {stampede.coroutines} coroutines on a cold auth at once, one"
        f" AsyncClient (max_connections={stampede.max_connections}),"
        f" {stampede.token_delay_s * 1e3:.0f} ms token endpoint, server in another process:"
    )
    for label, contenders in (
        ("requests beyond the limit wait at a semaphore before the pool", stampede.gated),
        (f"requests queue in httpcore {stampede.httpcore}'s pool", stampede.pool_queued),
    ):
        lines.append(f"  {label}:")
        for name, v in contenders.items():
            errors = ", ".join(f"{kind} x{count}" for kind, count in v.errors.items())
            first = f"first ok at {v.first_ok_s:.1f} s, " if v.first_ok_s is not None else ""
            lines.append(
                f"    {name}: {v.token_requests} token request(s), {v.ok}/{v.coroutines} ok"
                f"{f' (failed: {errors})' if errors else ''}; {first}{v.seconds:.1f} s in all"
                f"{'' if v.async_flow else '; sync flow only: its token request blocks the loop'}"
            )
    window = f"{loop.window_s[0]:.1f}-{loop.window_s[1]:.1f} s"
    lines.append(
        f"event-loop lag (1 ms ticker) while {loop.coroutines} coroutines send requests for"
        f" {loop.seconds:g} s; refresh due at ~{loop.refresh_due_s:g} s, its token request"
        f" takes {loop.token_delay_s * 1e3:.0f} ms (server in another process);"
        f" window = {window}:"
    )
    for name, lag in loop.variants.items():
        refreshed = (
            f"new token from {lag.new_token_at_s:.2f} s"
            if lag.new_token_at_s is not None
            else "no refresh"
        )
        lines.append(
            f"  {name}: p50 {lag.p50_ms:.2f} ms, p99 {lag.p99_ms:.2f} ms,"
            f" max {lag.max_ms:.1f} ms at {lag.max_at_s:.2f} s;"
            f" max in window {lag.window_max_ms:.1f} ms, outside {lag.outside_max_ms:.1f} ms"
        )
        lines.append(
            f"    ({refreshed}; {lag.gen2_collections} full GC; {lag.ticks} ticks,"
            f" {lag.requests} requests, {lag.failed} failed)"
        )
    lines.append(
        f"  httpx.AsyncClient() with default TLS settings takes {loop.httpx_async_client_ms:.1f}"
        " ms to build in this process (requests-opsnow builds its token client in a worker thread)"
    )
    return lines


if __name__ == "__main__":
    sys.exit(main())

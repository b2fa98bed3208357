"""Benchmarks for requests-opsnow: ``python benchmarks/run.py`` (about a minute).

Everything is measured in one run, interleaved, and reported as ratios, because
the machines these run on are shared and noisy. Peers (requests-auth) are used
when installed; matplotlib, when installed, draws ``benchmarks/latency.png`` (shown in the README).
Results also go to ``benchmarks/out/results.json``.
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
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Protocol

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oauth_route import add_oauth_token_route
from peers import BlockingRefreshAuth, NaiveTokenAuth, StaticBearerAuth

from requests_opsnow import OpsNowAuth
from requests_opsnow.testing import FakeOpsNow

OUT = Path(__file__).resolve().parent / "out"
PLOT = Path(__file__).resolve().parent / "latency.png"
"""Shown in the README; rewritten by every run."""
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
class BenchmarkReport:
    python: str
    requests: str
    auth_call: AuthCallCost
    stubbed: Overhead
    per_call: Overhead
    memory: MemoryPerAuth
    loopback: Overhead
    cold_32_threads: dict[str, TokenCount]
    sustained: Sustained
    revocation: TokenCount
    latency: dict[str, Latency]
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
def fake_server_process(ttl: float, token_delay: float) -> Iterator[FakeServer]:
    """``opsnow fake-server`` in its own process: the server does not share our GIL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "requests_opsnow", "fake-server", "--json", "--ttl", str(ttl),
         "--token-delay", str(token_delay)],
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
    with section("import time"):
        imports = import_cost()
    results = BenchmarkReport(
        python=sys.version.split()[0],
        requests=requests.__version__,
        auth_call=auth_call,
        stubbed=stubbed,
        per_call=per_call,
        memory=memory,
        loopback=loopback,
        cold_32_threads=cold,
        sustained=sustained_load,
        revocation=revocation,
        latency=latency,
        import_cost=imports,
    )
    drew = plot(results.latency, PLOT)
    (OUT / "results.json").write_text(results.to_json())
    print(report(results, drew))
    return 0


def report(r: BenchmarkReport, drew: bool) -> str:
    stubbed, loopback, per_call, imp = r.stubbed, r.loopback, r.per_call, r.import_cost
    lines = [
        "",
        f"Python {r.python}, requests {r.requests}",
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
    lines.append(
        f"import: requests {imp.requests_ms:.1f} ms; requests_opsnow adds"
        f" {imp.opsnow_extra_ms:.1f} ms ({imp.overhead_pct:.1f}%)"
    )
    if drew:
        lines.append(f"plot: {PLOT}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

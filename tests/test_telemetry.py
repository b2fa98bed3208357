"""Every token, seen: OpenTelemetry spans and metrics, and events for subscribers.

``docs/design.md``, "Observability". Spans and metrics go through the real
``opentelemetry-sdk`` to its in-memory exporter and reader, on the wire against
``FakeOpsNow``; the same events reach a plain callable; none carries a secret.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from requests_opsnow import FileTokenCache, InvalidApiKeyError, OpsNowAuth, TokenEvent, subscribe
from requests_opsnow.httpx import OpsNowAuth as HttpxOpsNowAuth
from requests_opsnow.testing import FakeOpsNow

from .helpers import COMPANIES, MakeAuth, get_status, run_together

pytestmark = pytest.mark.timeout(60)


class Telemetry:
    """The process's OpenTelemetry providers (set once), read as deltas per test."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        trace.set_tracer_provider(tracer_provider)
        self.reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[self.reader]))
        self.before: Counter[tuple[Any, ...]] = Counter()
        self.seen: dict[tuple[Any, ...], int] = {}

    def fetch_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == "opsnow.token.fetch"]

    def _points(self) -> Counter[tuple[Any, ...]]:
        """Sums and histogram counts, by metric name and attributes (cumulative)."""
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        key = (metric.name, tuple(sorted(point.attributes.items())))
                        # a sum's value (0 too), a histogram's count
                        self.seen[key] = point.value if hasattr(point, "value") else point.count
        # Kept from earlier reads: older SDKs (1.20) leave out a cumulative histogram's
        # point when nothing was recorded since the last read.
        return Counter(self.seen)

    def reset(self) -> None:
        self.spans.clear()
        self.before = self._points()

    def metrics(self) -> Counter[tuple[Any, ...]]:
        """What this test added."""
        now = self._points()
        now.subtract(self.before)
        return Counter({key: value for key, value in now.items() if value})


@pytest.fixture(scope="session")
def telemetry_providers() -> Telemetry:
    return Telemetry()


@pytest.fixture
def telemetry(telemetry_providers: Telemetry) -> Telemetry:
    telemetry_providers.reset()
    return telemetry_providers


@pytest.fixture
def events() -> Iterator[list[TokenEvent]]:
    seen: list[TokenEvent] = []
    unsubscribe = subscribe(seen.append)
    yield seen
    unsubscribe()


def metric(telemetry: Telemetry, name: str, **attributes: str) -> int:
    wanted = tuple(sorted(attributes.items()))
    return int(sum(v for (n, a), v in telemetry.metrics().items() if n == name and a == wanted))


# -- spans and metrics -----------------------------------------------------------------------


def test_32_cold_threads_make_one_fetch_span_one_token_request_and_31_waits(
    fake: FakeOpsNow, make_auth: MakeAuth, telemetry: Telemetry
) -> None:
    fake.set_token_delay(0.2)
    auth = make_auth()
    assert run_together(32, lambda: get_status(auth, fake.base_url + COMPANIES)) == [200] * 32
    [span] = telemetry.fetch_spans()
    assert dict(span.attributes or {}) == {
        "opsnow.token.trigger": "cold",
        "opsnow.token.outcome": "ok",
        "opsnow.token.source": "network",
        "opsnow.token.attempts": 1,
        "server.address": "127.0.0.1",
    }
    assert span.status.status_code is StatusCode.UNSET
    assert metric(telemetry, "opsnow.token.requests", **OK_COLD) == 1
    assert metric(telemetry, "opsnow.token.fetch.duration", **OK_COLD) == 1
    assert metric(telemetry, "opsnow.token.wait.duration") == 31
    assert fake.token_requests == 1


OK_COLD = {"opsnow.token.trigger": "cold", "opsnow.token.outcome": "ok"}


def test_a_401_replay_is_a_fetch_triggered_by_the_rejection_and_a_replay(
    fake: FakeOpsNow, make_auth: MakeAuth, telemetry: Telemetry
) -> None:
    auth = make_auth()
    assert get_status(auth, fake.base_url + COMPANIES) == 200
    fake.revoke_tokens()
    assert get_status(auth, fake.base_url + COMPANIES) == 200
    assert [s.attributes["opsnow.token.trigger"] for s in telemetry.fetch_spans()] == [
        "cold",
        "rejected",
    ]
    assert metric(telemetry, "opsnow.auth.replays", outcome="replayed") == 1
    for _ in range(2):  # a route the key may not use
        assert get_status(auth, fake.base_url + "/test/status/401") == 401
    assert metric(telemetry, "opsnow.auth.replays", outcome="refused_again") == 1


def test_a_rejected_key_is_an_error_span_with_its_outcome(
    fake: FakeOpsNow, make_auth: MakeAuth, telemetry: Telemetry
) -> None:
    with pytest.raises(InvalidApiKeyError):
        make_auth(api_key="wrong-key").get_token()
    [span] = telemetry.fetch_spans()
    assert span.attributes is not None
    assert span.attributes["opsnow.token.outcome"] == "rejected_key"
    assert span.attributes["error.type"] == "InvalidApiKeyError"
    assert span.status.status_code is StatusCode.ERROR
    rejected = {"opsnow.token.trigger": "cold", "opsnow.token.outcome": "rejected_key"}
    assert metric(telemetry, "opsnow.token.requests", **rejected) == 1


def test_a_token_from_the_store_is_a_fetch_from_that_store_not_a_token_request(
    fake: FakeOpsNow, make_auth: MakeAuth, telemetry: Telemetry, tmp_path: Path
) -> None:
    make_auth(cache=FileTokenCache(tmp_path)).get_token()  # another process, say
    second = make_auth(cache=FileTokenCache(tmp_path), refresh_margin=120)
    info = second.get_token_info()
    assert (info.source, fake.token_requests) == ("file", 1)
    assert [s.attributes["opsnow.token.source"] for s in telemetry.fetch_spans()] == [
        "network",
        "file",
    ]
    assert telemetry.fetch_spans()[1].attributes["opsnow.token.attempts"] == 0
    assert metric(telemetry, "opsnow.token.requests", **OK_COLD) == 1
    assert metric(telemetry, "opsnow.token.fetch.duration", **OK_COLD) == 2


def test_the_token_requests_http_span_is_a_child_of_the_fetch_span_with_requests(
    fake: FakeOpsNow, make_auth: MakeAuth, telemetry: Telemetry
) -> None:
    RequestsInstrumentor().instrument()
    try:
        assert get_status(make_auth(), fake.base_url + COMPANIES) == 200
    finally:
        RequestsInstrumentor().uninstrument()
    [fetch] = telemetry.fetch_spans()
    token_posts = [s for s in telemetry.spans.get_finished_spans() if s.name == "POST"]
    assert [s.parent.span_id for s in token_posts if s.parent] == [fetch.context.span_id]


@pytest.mark.anyio
async def test_the_token_requests_http_span_is_a_child_of_the_fetch_span_with_httpx(
    fake: FakeOpsNow, telemetry: Telemetry
) -> None:
    HTTPXClientInstrumentor().instrument()
    try:
        auth = HttpxOpsNowAuth(fake.api_key, base_url=fake.base_url)
        async with httpx.AsyncClient(auth=auth, timeout=10) as client:
            assert (await client.get(fake.base_url + COMPANIES)).status_code == 200
    finally:
        HTTPXClientInstrumentor().uninstrument()
    [fetch] = telemetry.fetch_spans()
    token_posts = [s for s in telemetry.spans.get_finished_spans() if s.name == "POST"]
    assert [s.parent.span_id for s in token_posts if s.parent] == [fetch.context.span_id]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_nothing_exported_or_logged_holds_the_key_or_a_token(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    telemetry: Telemetry,
    events: list[TokenEvent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="requests_opsnow"):
        auth = make_auth()
        get_status(auth, fake.base_url + COMPANIES)
        fake.revoke_tokens()
        get_status(auth, fake.base_url + COMPANIES)
        with pytest.raises(InvalidApiKeyError):
            make_auth(api_key="another-" + fake.api_key).get_token()
    exported = [
        repr(dict(span.attributes or {})) + repr(span.events) + span.name
        for span in telemetry.spans.get_finished_spans()
    ]
    exported += [repr(key) for key in telemetry.metrics()]
    exported += [repr(event) for event in events]
    exported += [record.getMessage() for record in caplog.records]
    secrets_ = [fake.api_key, *fake.issued_tokens]
    assert len(exported) > 10
    assert [text for text in exported if any(secret in text for secret in secrets_)] == []


# -- events without OpenTelemetry -------------------------------------------------------------


def test_subscribers_get_fetch_wait_and_replay_events_with_a_non_reversible_key_id(
    fake: FakeOpsNow, make_auth: MakeAuth, events: list[TokenEvent]
) -> None:
    fake.set_token_delay(0.2)
    auth = make_auth()
    run_together(4, lambda: get_status(auth, fake.base_url + COMPANIES))
    fake.revoke_tokens()
    get_status(auth, fake.base_url + COMPANIES)
    kinds = Counter(event.kind for event in events)
    assert kinds == {"fetch": 2, "wait": 3, "replay": 1}
    fetch, refetch = (event for event in events if event.kind == "fetch")
    assert (fetch.trigger, fetch.outcome, fetch.source, fetch.attempts) == (
        "cold", "ok", "network", 1,
    )  # fmt: skip
    assert refetch.trigger == "rejected"
    assert refetch.expires_at == auth.get_token_info().expires_at
    assert fetch.duration is not None
    assert fetch.duration >= 0.2  # the token endpoint's delay
    assert len(fetch.key_id) == 16
    assert {event.key_id for event in events} == {fetch.key_id}
    assert fetch.key_id not in fake.api_key


def test_a_subscriber_that_raises_is_logged_once_and_breaks_nothing(
    fake: FakeOpsNow, make_auth: MakeAuth, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: TokenEvent) -> None:
        raise RuntimeError("a bug in a metrics exporter")

    unsubscribe = subscribe(broken)
    try:
        with caplog.at_level(logging.WARNING, logger="requests_opsnow"):
            auth = make_auth()
            for _ in range(2):
                fake.revoke_tokens()
                assert get_status(auth, fake.base_url + COMPANIES) == 200
    finally:
        unsubscribe()
    warnings = [r for r in caplog.records if "subscriber" in r.getMessage()]
    assert len(warnings) == 1


def test_get_token_info_says_where_the_token_came_from_and_when_it_falls_due(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    info = make_auth().get_token_info()
    assert info.source == "network"
    assert info.issued_at < info.refresh_at < info.expires_at
    assert info == make_auth().get_token_info()  # still a Token, equal to the same token


# -- nothing imported without it ----------------------------------------------------------------


WITHOUT_OPENTELEMETRY = """
import sys
sys.modules["opentelemetry"] = None  # as if it were not installed
import requests_opsnow
from requests_opsnow.testing import FakeOpsNow

events = []
requests_opsnow.subscribe(events.append)
with FakeOpsNow() as fake:
    auth = requests_opsnow.OpsNowAuth(fake.api_key, base_url=fake.base_url)
    assert auth.get_token() == fake.issued_tokens[0]
assert [event.kind for event in events] == ["fetch"]
"""

IMPORTS_NOTHING_BEFORE_A_FETCH = """
import sys
import requests_opsnow
requests_opsnow.OpsNowAuth("key")
assert not [name for name in sys.modules if name.startswith("opentelemetry")]
"""


@pytest.mark.parametrize("script", [WITHOUT_OPENTELEMETRY, IMPORTS_NOTHING_BEFORE_A_FETCH])
def test_without_opentelemetry_nothing_changes_and_nothing_is_imported(script: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_an_auth_on_a_requests_session_and_httpx_share_one_span_per_flight(
    fake: FakeOpsNow, telemetry: Telemetry
) -> None:
    requests_auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    with requests.Session() as session:
        session.get(fake.base_url + COMPANIES, auth=requests_auth, timeout=10)
    with httpx.Client(auth=HttpxOpsNowAuth(fake.api_key, base_url=fake.base_url)) as client:
        client.get(fake.base_url + COMPANIES, timeout=10)
    assert len(telemetry.fetch_spans()) == 1  # one token, one flight, whichever client

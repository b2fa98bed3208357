"""The fake OpsNow server itself, exercised with plain ``requests``."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest
import requests

from requests_opsnow.testing import FakeOpsNow, RecordedRequest, Reply

pytestmark = pytest.mark.timeout(10)

TIMEOUT = 5.0


@pytest.fixture
def fake() -> Iterator[FakeOpsNow]:
    with FakeOpsNow() as server:
        yield server


def get_token(fake: FakeOpsNow, session: requests.Session | None = None) -> str:
    http: Any = session or requests
    response = http.post(fake.token_url, json={"apiKey": fake.api_key}, timeout=TIMEOUT)
    assert response.status_code == 200
    token: str = response.json()["data"]["accessToken"]
    return token


def bearer_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def companies(fake: FakeOpsNow, token: str, **params: str) -> requests.Response:
    url = fake.base_url + "/platform/v2/companies"
    return requests.get(url, headers=bearer_header(token), params=params, timeout=TIMEOUT)


def handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("FakeOpsNow")]


def test_token_issuance_and_count(fake: FakeOpsNow) -> None:
    response = requests.post(fake.token_url, json={"apiKey": fake.api_key}, timeout=TIMEOUT)
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "success"
    token = body["data"]["accessToken"]
    assert token.startswith("fake-")
    assert token.isascii()
    assert token.isprintable()
    assert " " not in token
    assert body["data"]["expiresIn"] == 3600
    assert fake.issued_tokens == [token]
    assert fake.token_requests == 1
    assert fake.token_request_log[0].method == "POST"
    assert fake.api_requests == []


def test_wrong_key_bad_json_and_wrong_method(fake: FakeOpsNow) -> None:
    wrong = requests.post(fake.token_url, json={"apiKey": "nope"}, timeout=TIMEOUT)
    assert wrong.status_code == 401
    assert wrong.json() == {
        "status": "fail",
        "error": {"code": 401, "message": "Invalid API key"},
    }
    missing = requests.post(fake.token_url, json={}, timeout=TIMEOUT)
    assert missing.status_code == 401
    garbage = requests.post(fake.token_url, data=b"not json", timeout=TIMEOUT)
    assert garbage.status_code == 400
    assert garbage.json()["error"]["message"] == "Bad request"
    assert requests.get(fake.token_url, timeout=TIMEOUT).status_code == 405
    assert fake.token_requests == 3
    assert len(fake.token_request_log) == 4
    assert fake.issued_tokens == []


def test_api_requires_a_valid_token(fake: FakeOpsNow) -> None:
    url = fake.base_url + "/platform/v2/companies"
    for headers in ({}, bearer_header("fake-unknown"), {"Authorization": "Basic abc"}):
        response = requests.get(url, headers=headers, timeout=TIMEOUT)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"] == {"code": 401, "message": "Unauthorized"}
    assert len(fake.api_requests) == 3
    assert fake.api_requests[1].header("authorization") == "Bearer fake-unknown"


def test_companies_with_token(fake: FakeOpsNow) -> None:
    token = get_token(fake)
    response = companies(fake, token, page="2")
    assert response.status_code == 200
    data = response.json()["data"]
    assert [c["name"] for c in data["companies"]] == ["Acme", "Globex"]
    assert data["page"] == 2
    recorded = fake.api_requests[-1]
    assert recorded.path == "/platform/v2/companies"
    assert recorded.query == {"page": ["2"]}
    assert recorded.client_host == "127.0.0.1"
    missing = requests.get(fake.base_url + "/nope", headers=bearer_header(token), timeout=TIMEOUT)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Not found"


def test_revocation(fake: FakeOpsNow) -> None:
    old = get_token(fake)
    fake.revoke_tokens()
    assert companies(fake, old).status_code == 401
    assert companies(fake, get_token(fake)).status_code == 200


def test_ttl_expiry(fake: FakeOpsNow) -> None:
    fake.ttl = 0.2
    response = requests.post(fake.token_url, json={"apiKey": fake.api_key}, timeout=TIMEOUT)
    assert response.json()["data"]["expiresIn"] == 0.2
    token = response.json()["data"]["accessToken"]
    assert companies(fake, token).status_code == 200
    time.sleep(0.3)
    assert companies(fake, token).status_code == 401


def test_failure_injection_with_count_and_retry_after(fake: FakeOpsNow) -> None:
    fake.fail_token_requests(503, count=2, retry_after="1")
    for _ in range(2):
        response = requests.post(fake.token_url, json={"apiKey": fake.api_key}, timeout=TIMEOUT)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"] == {"code": 503, "message": "Service Unavailable"}
    get_token(fake)
    assert fake.token_requests == 3
    assert len(fake.issued_tokens) == 1


def test_api_failure_injection_is_recorded_counted_and_resettable(fake: FakeOpsNow) -> None:
    token = get_token(fake)
    fake.fail_api_requests(429, count=2, retry_after="1")
    fake.fail_api_requests(503)
    for status in (429, 429, 503):
        response = companies(fake, token)
        assert response.status_code == status
        assert response.json()["error"]["code"] == status
        assert response.headers.get("Retry-After") == ("1" if status == 429 else None)
    assert companies(fake, token).status_code == 200
    assert len(fake.api_requests) == 4
    get_token(fake)  # token requests are never failed by fail_api_requests
    fake.fail_api_requests(500, count=5)
    fake.reset()
    assert companies(fake, token).status_code == 200
    with pytest.raises(ValueError, match="count"):
        fake.fail_api_requests(500, count=0)


def test_injected_custom_body_forever_until_reset(fake: FakeOpsNow) -> None:
    fake.fail_token_requests(200, count=-1, body=b"<html>", content_type="text/html")
    for _ in range(3):
        response = requests.post(fake.token_url, json={"apiKey": fake.api_key}, timeout=TIMEOUT)
        assert (response.status_code, response.text) == (200, "<html>")
        assert response.headers["Content-Type"] == "text/html"
    fake.reset()
    get_token(fake)


def test_dropped_connection_raises_connection_error(fake: FakeOpsNow) -> None:
    fake.fail_token_requests(0, delay=0.05)
    with pytest.raises(requests.ConnectionError):
        requests.post(fake.token_url, json={"apiKey": fake.api_key}, timeout=TIMEOUT)
    assert fake.token_requests == 1
    get_token(fake)


def test_token_delay_and_body_factory(fake: FakeOpsNow) -> None:
    fake.set_token_delay(0.2)
    fake.set_token_body(lambda token, ttl: {"data": {"token": token, "ttl": ttl}})
    started = time.monotonic()
    response = requests.post(fake.token_url, json={"apiKey": fake.api_key}, timeout=TIMEOUT)
    assert time.monotonic() - started >= 0.2
    assert response.json() == {"data": {"token": fake.issued_tokens[0], "ttl": 3600.0}}
    fake.reset()
    get_token(fake)


def test_chunked_generator_body_is_echoed(fake: FakeOpsNow) -> None:
    parts = [b"hello ", b"chunked ", b"x" * 10_000]

    def gen() -> Iterator[bytes]:
        yield from parts

    token = get_token(fake)
    url = fake.base_url + "/test/echo?a=1&a=2"
    response = requests.put(url, data=gen(), headers=bearer_header(token), timeout=TIMEOUT)
    data = response.json()["data"]
    body = b"".join(parts)
    assert data["method"] == "PUT"
    assert data["query"] == {"a": ["1", "2"]}
    assert data["headers"]["Transfer-Encoding"] == "chunked"
    assert data["body_length"] == len(body)
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert fake.api_requests[-1].body == body


def test_keep_alive_session(fake: FakeOpsNow) -> None:
    with requests.Session() as session:
        token = get_token(fake, session)
        session.headers.update(bearer_header(token))
        for page in ("1", "2", "3"):
            response = session.get(fake.base_url + "/platform/v2/companies", params={"page": page})
            assert response.status_code == 200
            assert response.headers.get("Connection") != "close"
        assert len(handler_threads()) == 2  # the server thread + one connection


def test_open_paths_redirect_and_status(fake: FakeOpsNow) -> None:
    base = fake.base_url
    params = {"to": "http://example.invalid/x", "status": "307"}
    redirect = requests.get(
        base + "/test/redirect", params=params, allow_redirects=False, timeout=TIMEOUT
    )
    assert redirect.status_code == 307
    assert redirect.headers["Location"] == "http://example.invalid/x"
    echo = requests.post(base + "/test/open/echo", data=b"abc", timeout=TIMEOUT)
    assert echo.json()["data"]["body_length"] == 3
    token = get_token(fake)
    url = base + "/test/status/429?Retry-After=7"
    status = requests.get(url, headers=bearer_header(token), timeout=TIMEOUT)
    assert status.status_code == 429
    assert status.headers["Retry-After"] == "7"
    assert status.json()["error"] == {"code": 429, "message": "Too Many Requests"}
    paths = [r.path for r in fake.api_requests]
    assert paths == ["/test/redirect", "/test/open/echo", "/test/status/429"]


def test_concurrent_clients(fake: FakeOpsNow) -> None:
    token = get_token(fake)

    def call(_: int) -> int:
        return companies(fake, token).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        assert set(pool.map(call, range(200))) == {200}
    assert fake.wait_for_api_requests(200, timeout=1.0)
    fake.reset_counts()
    assert (fake.token_requests, fake.api_requests, fake.token_request_log) == (0, [], [])


def test_close_is_idempotent_and_drops_open_connections() -> None:
    fake = FakeOpsNow().start()
    fake.set_token_delay(30.0)  # a handler stuck in this delay must not hold up close()
    errors: list[Exception] = []

    def slow_token_request() -> None:
        try:
            requests.post(fake.token_url, json={"apiKey": fake.api_key}, timeout=TIMEOUT)
        except requests.RequestException as exc:
            errors.append(exc)

    with requests.Session() as session:
        assert session.get(fake.base_url + "/test/open/echo", timeout=TIMEOUT).ok
        client = threading.Thread(target=slow_token_request)
        client.start()
        deadline = time.monotonic() + TIMEOUT
        while fake.token_requests == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(handler_threads()) == 3  # server + idle keep-alive + delayed request
        started = time.monotonic()
        fake.close()
        fake.close()
        assert time.monotonic() - started < 3.0
        assert handler_threads() == []
        client.join(TIMEOUT)
        assert [type(e) for e in errors] == [requests.ConnectionError]
        with pytest.raises(requests.ConnectionError):
            session.get(fake.base_url + "/test/open/echo", timeout=TIMEOUT)


# -- routes of your own ----------------------------------------------------------------------


def things(request: RecordedRequest) -> Reply:
    return Reply.json(200, {"things": [request.method, request.path]}, {"X-Handler": "things"})


def test_an_authorized_route_wants_a_valid_token_first(fake: FakeOpsNow) -> None:
    seen: list[RecordedRequest] = []

    def handler(request: RecordedRequest) -> Reply:
        seen.append(request)
        return things(request)

    fake.route("GET", "/platform/v2/things", handler, authorized=True)
    url = fake.base_url + "/platform/v2/things"
    for headers in ({}, bearer_header("fake-unknown")):
        refused = requests.get(url, headers=headers, timeout=TIMEOUT)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert refused.json()["error"] == {"code": 401, "message": "Unauthorized"}
    assert seen == []  # the handler is never called without a valid token

    token = get_token(fake)
    ok = requests.get(url, params={"q": "1"}, headers=bearer_header(token), timeout=TIMEOUT)
    assert ok.status_code == 200
    assert ok.json() == {"things": ["GET", "/platform/v2/things"]}
    assert ok.headers["X-Handler"] == "things"
    assert seen[0].query == {"q": ["1"]}
    assert seen[0].header("authorization") == f"Bearer {token}"
    assert fake.api_requests[-1] is seen[0]

    head = requests.head(url, headers=bearer_header(token), timeout=TIMEOUT)
    assert (head.status_code, head.content) == (200, b"")  # GET answers HEAD
    post = requests.post(url, headers=bearer_header(token), timeout=TIMEOUT)
    assert post.status_code == 405
    assert post.headers["Allow"] == "GET"
    assert requests.post(url, timeout=TIMEOUT).status_code == 401  # a token first, always
    fake.revoke_tokens()
    assert requests.get(url, headers=bearer_header(token), timeout=TIMEOUT).status_code == 401
    assert fake.token_requests == 1


def test_an_open_route_answers_without_a_token(fake: FakeOpsNow) -> None:
    fake.route("POST", "/hooks/in", lambda r: Reply(201, r.body[::-1]), authorized=False)
    url = fake.base_url + "/hooks/in"
    response = requests.post(url, data=b"abc", timeout=TIMEOUT)
    assert (response.status_code, response.content) == (201, b"cba")
    assert requests.get(url, timeout=TIMEOUT).status_code == 405  # no token needed for that
    assert [r.method for r in fake.api_requests] == ["POST", "GET"]
    assert fake.token_requests == 0


def test_prefix_routes_take_the_most_specific_match(fake: FakeOpsNow) -> None:
    def named(name: str) -> Callable[[RecordedRequest], Reply]:
        return lambda request: Reply.json(200, {"route": name, "path": request.path})

    fake.route("*", "/things/*", named("things"))
    fake.route("*", "/things/special/*", named("special"))
    fake.route("GET", "/things/special/one", named("one"))
    fake.route("*", "/*", named("anything"), authorized=False)
    headers = bearer_header(get_token(fake))

    def route_of(method: str, path: str) -> Any:
        response = requests.request(method, fake.base_url + path, headers=headers, timeout=TIMEOUT)
        assert response.status_code == 200, path
        return response.json()["route"]

    assert route_of("GET", "/things/a/b") == "things"
    assert route_of("GET", "/things/special/two") == "special"
    assert route_of("GET", "/things/special/one") == "one"
    assert route_of("DELETE", "/things/special/one") == "special"  # the next match takes it
    assert route_of("GET", "/things") == "anything"  # "/things/*" is what is under /things/
    assert route_of("GET", "/nope") == "anything"  # a catch-all replaces the 404
    listed = requests.get(
        fake.base_url + "/platform/v2/companies", headers=headers, timeout=TIMEOUT
    )
    assert listed.json()["data"]["page"] == 1  # the exact built-in route still wins
    assert requests.get(fake.base_url + "/nope", timeout=TIMEOUT).status_code == 200  # open


def test_a_route_replaces_a_built_in_one(fake: FakeOpsNow) -> None:
    token = get_token(fake)
    fake.route("GET", "/platform/v2/companies", things)
    assert companies(fake, token).json() == {"things": ["GET", "/platform/v2/companies"]}
    anonymous = requests.get(fake.base_url + "/platform/v2/companies", timeout=TIMEOUT)
    assert anonymous.status_code == 401  # still authorized=True, as the route asked

    fake.route("*", "/test/status/*", lambda r: Reply.opsnow_error(418), authorized=False)
    teapot = requests.get(fake.base_url + "/test/status/500", timeout=TIMEOUT)
    assert teapot.json()["error"] == {"code": 418, "message": "I'm a Teapot"}

    fake.route("GET", "/test/echo", things)  # only GET: other methods keep the built-in echo
    echo = fake.base_url + "/test/echo"
    assert requests.get(echo, headers=bearer_header(token), timeout=TIMEOUT).json()["things"]
    posted = requests.post(echo, data=b"xy", headers=bearer_header(token), timeout=TIMEOUT)
    assert posted.json()["data"]["body_length"] == 2
    fake.route("*", "/test/echo", lambda r: Reply(204))  # "*": every method, GET included
    assert requests.get(echo, headers=bearer_header(token), timeout=TIMEOUT).status_code == 204

    fake.reset()  # routes are set-up, not injected failures: they stay
    assert companies(fake, token).json()["things"]


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("GET", "things", "path must be a URL path"),
        ("GET", "/things?x=1", "path must be a URL path"),
        ("GET", "/things/*/more", "no other '\\*'"),
        ("GET", "/th*ngs", "no other '\\*'"),
        ("G ET", "/things", "method must be an HTTP method"),
        ("", "/things", "method must be an HTTP method"),
        ("POST", FakeOpsNow.TOKEN_PATH, "token endpoint, not a route"),
    ],
)
def test_route_refuses_what_it_cannot_serve(method: str, path: str, message: str) -> None:
    fake = FakeOpsNow()  # never started: route() works before start()
    with pytest.raises(ValueError, match=message):
        fake.route(method, path, things)
    with pytest.raises(TypeError, match="handler must be callable"):
        fake.route("GET", "/things", "not a handler")  # type: ignore[arg-type]


def test_a_handler_that_raises_answers_500_with_the_traceback(
    fake: FakeOpsNow, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(request: RecordedRequest) -> Reply:
        raise KeyError("no such thing")

    fake.route("GET", "/broken", broken, authorized=False)
    fake.route("GET", "/not-a-reply", lambda r: "oops", authorized=False)  # type: ignore[arg-type,return-value]
    response = requests.get(fake.base_url + "/broken", timeout=TIMEOUT)
    assert response.status_code == 500
    assert "KeyError: 'no such thing'" in response.text
    assert "KeyError" in capsys.readouterr().err
    wrong = requests.get(fake.base_url + "/not-a-reply", timeout=TIMEOUT)
    assert (wrong.status_code, wrong.text) == (500, "the handler returned str, not a Reply")
    assert requests.get(fake.base_url + "/test/open/echo", timeout=TIMEOUT).ok  # still serving


# -- Reply -----------------------------------------------------------------------------------


def test_reply_constructors() -> None:
    created = Reply.json(201, {"id": 7}, {"Location": "/things/7"})
    assert isinstance(created, Reply)
    assert (created.status, created.body) == (201, b'{"id": 7}')
    assert (created.content_type, created.headers) == (
        "application/json",
        {"Location": "/things/7"},
    )
    assert (created.reason, created.drop, created.trickle) == (None, False, 0.0)

    limited = Reply.opsnow_error(429, **{"Retry-After": "3"})
    assert isinstance(limited, Reply)
    assert limited.status == 429
    assert limited.headers == {"Retry-After": "3"}
    assert json.loads(limited.body) == {
        "status": "fail",
        "error": {"code": 429, "message": "Too Many Requests"},
    }
    custom = Reply.opsnow_error(403, "Key may not read things")
    assert json.loads(custom.body)["error"] == {"code": 403, "message": "Key may not read things"}
    assert json.loads(Reply.opsnow_error(299).body)["error"]["message"] == "Error"  # no phrase

    headers = {"A": "1"}
    copied = Reply.json(200, {}, headers)
    copied.headers["B"] = "2"
    assert headers == {"A": "1"}  # the caller's dict is not the reply's


def test_replies_with_a_reason_a_trickle_or_a_dropped_connection(fake: FakeOpsNow) -> None:
    teapot_reply = Reply(418, b"short", content_type="text/plain", reason="Steeping")
    fake.route("GET", "/teapot", lambda r: teapot_reply, authorized=False)
    fake.route("GET", "/slow", lambda r: Reply(200, b"abc", trickle=0.005), authorized=False)
    fake.route("GET", "/gone", lambda r: Reply(0, drop=True), authorized=False)
    teapot = requests.get(fake.base_url + "/teapot", timeout=TIMEOUT)
    assert (teapot.status_code, teapot.reason, teapot.text) == (418, "Steeping", "short")
    assert teapot.headers["Content-Type"] == "text/plain"
    started = time.monotonic()
    slow = requests.get(fake.base_url + "/slow", timeout=TIMEOUT)
    assert slow.content == b"abc"
    assert time.monotonic() - started >= 0.3  # 60+ bytes of headers and body, one at a time
    with pytest.raises(requests.ConnectionError):
        requests.get(fake.base_url + "/gone", timeout=TIMEOUT)


# -- issue_token -----------------------------------------------------------------------------


def test_issue_token_gives_a_token_the_fake_accepts(fake: FakeOpsNow) -> None:
    fake.ttl = 60
    token, ttl = fake.issue_token()
    assert ttl == 60
    assert fake.issued_tokens == [token]
    assert fake.token_requests == 0  # counts requests to the OpsNow endpoint only
    assert companies(fake, token).status_code == 200
    fake.revoke_tokens()
    assert companies(fake, token).status_code == 401


def test_issue_token_is_paced_like_the_token_endpoint(fake: FakeOpsNow) -> None:
    fake.set_token_delay(0.2)
    started = time.monotonic()
    fake.issue_token()
    assert time.monotonic() - started >= 0.2
    fake.reset()
    fake.hold_token_requests()
    issued: list[tuple[str, float]] = []
    issuer = threading.Thread(target=lambda: issued.append(fake.issue_token()))
    issuer.start()
    issuer.join(0.2)
    assert issued == []
    fake.release_token_requests()
    issuer.join(TIMEOUT)
    assert [token for token, _ in issued] == fake.issued_tokens[1:]


def test_a_token_route_of_your_own(fake: FakeOpsNow) -> None:
    def token_route(request: RecordedRequest) -> Reply:
        if request.header("X-Key") != fake.api_key:
            return Reply.opsnow_error(401, "Invalid API key")
        token, ttl = fake.issue_token()
        return Reply.json(200, {"token": token, "ttl": ttl})

    fake.route("POST", "/v3/token", token_route, authorized=False)
    url = fake.base_url + "/v3/token"
    assert requests.post(url, headers={"X-Key": "wrong"}, timeout=TIMEOUT).status_code == 401
    body = requests.post(url, headers={"X-Key": fake.api_key}, timeout=TIMEOUT).json()
    assert companies(fake, body["token"]).status_code == 200


# -- the failure injectors -------------------------------------------------------------------

INJECTORS = ["fail_token_requests", "fail_api_requests"]

BAD_INJECTIONS = [
    pytest.param({"count": 0}, ValueError, "count must be >= 1, or -1", id="count-0"),
    pytest.param({"count": -2}, ValueError, "count must be >= 1, or -1", id="count-negative"),
    pytest.param({"count": 1.5}, TypeError, "count must be an int", id="count-float"),
    pytest.param({"status": 42}, ValueError, "status must be 0 .* or an HTTP status", id="42"),
    pytest.param({"status": 600}, ValueError, "status must be 0", id="600"),
    pytest.param({"status": -1}, ValueError, "status must be 0", id="status-negative"),
    pytest.param({"status": "503"}, TypeError, "status must be an int", id="status-str"),
    pytest.param({"delay": -0.1}, ValueError, "delay must be a finite number", id="delay-neg"),
    pytest.param({"delay": math.inf}, ValueError, "delay must be a finite", id="delay-inf"),
    pytest.param({"delay": math.nan}, ValueError, "delay must be a finite", id="delay-nan"),
    pytest.param({"delay": "1"}, TypeError, "delay must be a number", id="delay-str"),
    pytest.param({"trickle": -1}, ValueError, "trickle must be a finite", id="trickle-neg"),
    pytest.param({"trickle": math.inf}, ValueError, "trickle must be a finite", id="trickle-inf"),
]


@pytest.mark.parametrize("injector", INJECTORS)
@pytest.mark.parametrize(("arguments", "error", "message"), BAD_INJECTIONS)
def test_injectors_refuse_nonsense_naming_the_argument(
    fake: FakeOpsNow, injector: str, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments = {"status": 503, **arguments}
    with pytest.raises(error, match=message):
        getattr(fake, injector)(**arguments)
    token = get_token(fake)  # nothing was queued
    assert companies(fake, token).status_code == 200


def test_injectors_take_the_same_arguments() -> None:
    signature = inspect.signature(FakeOpsNow.fail_token_requests)
    assert list(signature.parameters) == [
        "self", "status", "count", "delay", "retry_after", "body", "content_type", "headers",
        "reason", "trickle",
    ]  # fmt: skip
    assert inspect.signature(FakeOpsNow.fail_api_requests) == signature


@pytest.mark.parametrize("status", [0, 100, 599])
@pytest.mark.parametrize("count", [1, -1])
def test_injectors_accept_the_edges(fake: FakeOpsNow, status: int, count: int) -> None:
    fake.fail_token_requests(status, count=count, delay=0, trickle=0)
    fake.fail_api_requests(status, count=count, delay=0.0, trickle=0.0)


def test_api_failures_take_every_injection_argument(fake: FakeOpsNow) -> None:
    token = get_token(fake)
    fake.fail_api_requests(
        502, body=b"<html>bad gateway</html>", content_type="text/html",
        headers={"X-Upstream": "down"}, reason="Upstream Down", delay=0.1,
    )  # fmt: skip
    fake.fail_api_requests(0)
    started = time.monotonic()
    response = companies(fake, token)
    assert time.monotonic() - started >= 0.1
    assert (response.status_code, response.reason, response.text) == (
        502, "Upstream Down", "<html>bad gateway</html>",
    )  # fmt: skip
    assert response.headers["X-Upstream"] == "down"
    assert response.headers["Content-Type"] == "text/html"
    with pytest.raises(requests.ConnectionError):
        companies(fake, token)
    assert companies(fake, token).status_code == 200
    assert len(fake.api_requests) == 3


# -- the benchmark's OAuth2 route (benchmarks/oauth_route.py) ----------------------------------


@pytest.fixture(scope="module")
def oauth_route() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "oauth_route.py"
    spec = importlib.util.spec_from_file_location("oauth_route", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_oauth_route_issues_tokens_and_counts_its_requests(
    fake: FakeOpsNow, oauth_route: ModuleType
) -> None:
    route = oauth_route.add_oauth_token_route(fake)
    url = fake.base_url + "/oauth/token"
    assert route.url == url
    form = {"grant_type": "client_credentials", "client_id": "me", "client_secret": fake.api_key}
    response = requests.post(url, data=form, timeout=TIMEOUT)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert companies(fake, body["access_token"]).status_code == 200
    basic = requests.post(
        url, data={"grant_type": "client_credentials"}, auth=("me", fake.api_key), timeout=TIMEOUT
    )
    assert basic.status_code == 200
    form["client_secret"] = "wrong"
    wrong = requests.post(url, data=form, timeout=TIMEOUT)
    assert (wrong.status_code, wrong.json()) == (401, {"error": "invalid_client"})
    grant = requests.post(url, data={"grant_type": "password"}, timeout=TIMEOUT)
    assert (grant.status_code, grant.json()) == (400, {"error": "unsupported_grant_type"})
    assert requests.get(url, timeout=TIMEOUT).status_code == 405
    assert route.token_requests == 4  # POSTs, failed ones included
    assert fake.token_requests == 0  # the OpsNow endpoint's count is its own
    assert len(fake.issued_tokens) == 2
    route.reset_counts()
    assert route.token_requests == 0

"""The fake OpsNow server itself, exercised with plain ``requests``."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from requests_opsnow.testing import FakeOpsNow

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


def test_oauth_endpoint(fake: FakeOpsNow) -> None:
    url = fake.base_url + "/oauth/token"
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
    assert requests.post(url, data=form, timeout=TIMEOUT).status_code == 401
    assert fake.token_requests == 3


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

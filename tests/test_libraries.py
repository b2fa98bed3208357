"""OpsNowAuth beside the libraries people pair with requests, installed for real.

Mocking libraries record the request objects they were given; response caches
and process pools pickle responses; HTTP caches would happily store a token
POST. Each of these is exercised here with the real library.
"""

from __future__ import annotations

import multiprocessing
import pickle
import secrets
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import requests_cache
import requests_mock
import responses
from requests_futures.sessions import FuturesSession

from requests_opsnow import OpsNowAuth, OpsNowSession, TokenRequestError, TokenResponseError
from requests_opsnow.testing import FakeOpsNow

from .helpers import COMPANIES

pytestmark = pytest.mark.timeout(60)

API = "https://api.opsnow360.io"
MOCK_TOKEN_URL = API + "/platform/v2/identity/api-keys/token"


@pytest.fixture
def key() -> str:
    """A key of its own: tokens are shared per key across a process, so across tests too."""
    return "mock-key-" + secrets.token_hex(8)


def _token_body(token: str) -> dict[str, object]:
    return {"status": "success", "data": {"accessToken": token, "expiresIn": 3600}}


# -- mocking libraries see what was really sent ---------------------------------------------


def test_responses_call_log_keeps_the_token_each_request_was_sent_with(key: str) -> None:
    with responses.RequestsMock(registry=responses.registries.OrderedRegistry) as rsps:
        rsps.post(MOCK_TOKEN_URL, json=_token_body("first-token"))
        rsps.get(API + COMPANIES, status=401)
        rsps.post(MOCK_TOKEN_URL, json=_token_body("second-token"))
        rsps.get(API + COMPANIES, json={"status": "success", "data": {}})
        response = requests.get(API + COMPANIES, auth=OpsNowAuth(key), timeout=10)
        sent = [call.request.headers.get("Authorization") for call in rsps.calls]
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert sent == [None, "Bearer first-token", None, "Bearer second-token"]


def test_requests_mock_history_keeps_the_token_each_request_was_sent_with(key: str) -> None:
    with requests_mock.Mocker() as mock:
        mock.post(
            MOCK_TOKEN_URL,
            [{"json": _token_body("first-token")}, {"json": _token_body("second-token")}],
        )
        mock.get(API + COMPANIES, [{"status_code": 401}, {"json": {"status": "success"}}])
        response = requests.get(API + COMPANIES, auth=OpsNowAuth(key), timeout=10)
        sent = [request.headers.get("Authorization") for request in mock.request_history]
    assert response.status_code == 200
    assert sent == [None, "Bearer first-token", None, "Bearer second-token"]


# -- an HTTP cache never stores the token request ----------------------------------------------


# url-normalize (a requests-cache dependency) as resolved on Python 3.9 still passes an
# argument that new idna releases deprecate: their warning, not ours.
@pytest.mark.filterwarnings("ignore:Transitional processing is deprecated:DeprecationWarning")
def test_an_http_cache_of_posts_never_serves_or_stores_a_token(
    fake: FakeOpsNow, tmp_path: Path
) -> None:
    database = tmp_path / "http-cache"
    requests_cache.install_cache(str(database), allowable_methods=("GET", "POST"))
    try:
        auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
        assert requests.get(fake.base_url + COMPANIES, auth=auth, timeout=10).ok
        fake.revoke_tokens()
        # Another URL (a cached GET would not reach the server), then a refresh.
        response = requests.get(fake.base_url + "/test/echo", auth=auth, timeout=10)
    finally:
        requests_cache.uninstall_cache()
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert fake.token_requests == 2
    assert len(set(fake.issued_tokens)) == 2
    stored = b"".join(path.read_bytes() for path in tmp_path.iterdir())
    assert fake.api_key.encode() not in stored


def test_the_token_request_asks_caches_not_to_store_it(fake: FakeOpsNow) -> None:
    OpsNowAuth(fake.api_key, base_url=fake.base_url).get_token()
    (token_request,) = fake.token_request_log
    assert token_request.header("Cache-Control") == "no-store"
    assert token_request.header("Pragma") == "no-cache"


# -- responses pickle, for process pools and result caches --------------------------------------


def _replayed_response(fake: FakeOpsNow) -> requests.Response:
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    with requests.Session() as session:
        session.get(fake.base_url + COMPANIES, auth=auth, timeout=10)
        fake.revoke_tokens()
        return session.get(fake.base_url + COMPANIES, auth=auth, timeout=10)


def test_a_replayed_response_and_its_history_pickle_without_the_key(fake: FakeOpsNow) -> None:
    response = _replayed_response(fake)
    data = pickle.dumps(response)
    assert fake.api_key.encode() not in data

    copy = pickle.loads(data)
    assert copy.status_code == 200
    assert copy.json() == response.json()
    assert [r.status_code for r in copy.history] == [401]
    for hook in copy.request.hooks["response"] + copy.history[0].request.hooks["response"]:
        assert hook(copy.history[0]) is copy.history[0]  # an unpickled hook does nothing
    assert fake.token_requests == 2


def test_a_replayed_response_times_itself(fake: FakeOpsNow) -> None:
    response = _replayed_response(fake)
    assert response.elapsed > timedelta(0)
    assert response.history[0].elapsed > timedelta(0)


def test_requests_futures_with_a_process_pool_returns_responses(fake: FakeOpsNow) -> None:
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(max_workers=2, mp_context=context) as pool,
        FuturesSession(executor=pool) as session,
    ):
        session.auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
        futures = [session.get(fake.base_url + COMPANIES, timeout=10) for _ in range(4)]
        responses_back = [future.result(timeout=50) for future in futures]
    assert [r.status_code for r in responses_back] == [200] * 4
    assert 1 <= fake.token_requests <= 2  # one per worker process at most


# -- .netrc never replaces the token ----------------------------------------------------------


@pytest.fixture
def netrc_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeOpsNow) -> None:
    path = tmp_path / "netrc"
    path.write_text("machine 127.0.0.1 login someone password netrc-password\n")
    path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))


@pytest.mark.usefixtures("netrc_for")
def test_an_opsnow_session_keeps_its_token_across_a_same_host_redirect_despite_netrc(
    fake: FakeOpsNow,
) -> None:
    with OpsNowSession(fake.api_key, base_url=fake.base_url) as session:
        response = session.get("/test/redirect", params={"to": "/test/echo"})
    assert response.status_code == 200
    redirected = fake.api_requests[-1]
    assert redirected.path == "/test/echo"
    assert redirected.header("Authorization") == f"Bearer {fake.issued_tokens[0]}"


@pytest.mark.usefixtures("netrc_for")
def test_a_plain_session_lets_netrc_replace_the_token_on_a_redirect(fake: FakeOpsNow) -> None:
    """requests' own rule, documented in the user guide (docs/libraries.md): OpsNowSession
    is the fix."""
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    with requests.Session() as session:
        response = session.get(
            fake.base_url + "/test/redirect", params={"to": "/test/echo"}, auth=auth, timeout=10
        )
    assert response.status_code == 401
    assert (fake.api_requests[-1].header("Authorization") or "").startswith("Basic ")


# -- an adapter of the user's own ------------------------------------------------------------


class InMemoryAdapter(requests.adapters.BaseAdapter):
    """An adapter that builds its responses in memory (no ``raw``), as test doubles and
    some gateways' SDKs do; it records what it was sent."""

    def __init__(self, status: int, body: bytes, **headers: str) -> None:
        super().__init__()
        self.answer = (status, body, headers)
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
        self.sent.append(request)
        response = requests.Response()
        response.status_code, response._content, headers = self.answer
        response._content_consumed = True  # type: ignore[attr-defined]  # as requests marks it
        response.headers.update(headers)
        response.request, response.url = request, request.url
        return response

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, b'{"data": {"accessToken": "in-memory", "expiresIn": 3600}}', None),
        (200, b"x" * 70_000, "larger than 65536 bytes"),
        (
            503,
            b'{"status": "fail", "error": {"message": "down"}}',
            "HTTP 503 Service Unavailable: down",
        ),
    ],
    ids=["token", "too-large", "error"],
)
def test_a_session_whose_adapter_answers_from_memory_is_read_like_any(
    key: str, status: int, body: bytes, error: str | None
) -> None:
    adapter = InMemoryAdapter(status, body, **{"Content-Type": "application/json"})
    with requests.Session() as session:
        session.mount("https://", adapter)
        auth = OpsNowAuth(key, session=session, max_retries=0)
        if error is None:
            assert auth.get_token() == "in-memory"
        else:
            with pytest.raises((TokenRequestError, TokenResponseError), match=error) as caught:
                auth.get_token()
            assert key not in str(caught.value)
    assert [request.url for request in adapter.sent] == [MOCK_TOKEN_URL]
    assert adapter.sent[0].headers["Accept-Encoding"] == "identity"


# -- a mock that was forgotten ---------------------------------------------------------------


def test_a_token_endpoint_responses_has_no_mock_for_fails_at_once_in_its_words(
    key: str, clock: Any
) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(API + COMPANIES, json={"status": "success"})
        with pytest.raises(TokenRequestError) as caught:
            requests.get(API + COMPANIES, auth=OpsNowAuth(key), timeout=10)
    message = str(caught.value)
    assert "refused by a mocking library (is the token endpoint mocked?)" in message
    assert "Connection refused by Responses" in message
    assert clock.sleeps == []  # no retry: a test's mocks do not change in a second
    assert key not in message


def test_a_token_endpoint_requests_mock_has_no_mock_for_fails_at_once_in_its_words(
    key: str, clock: Any
) -> None:
    with requests_mock.Mocker() as mock:
        mock.get(API + COMPANIES, json={"status": "success"})
        with pytest.raises(TokenRequestError) as caught:
            requests.get(API + COMPANIES, auth=OpsNowAuth(key), timeout=10)
    assert "refused by a mocking library" in str(caught.value)
    assert "No mock address: POST " + MOCK_TOKEN_URL in str(caught.value)
    assert clock.sleeps == []
    assert key not in str(caught.value)


def test_requests_cache_keeps_no_token_of_a_replay(fake: FakeOpsNow, tmp_path: Path) -> None:
    with requests_cache.CachedSession(str(tmp_path / "cache"), backend="sqlite") as session:
        session.auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
        session.get(fake.base_url + COMPANIES + "?first", timeout=10)
        fake.revoke_tokens()
        replayed = session.get(fake.base_url + COMPANIES, timeout=10)
        assert [r.status_code for r in replayed.history] == [401]
        cached = session.get(fake.base_url + COMPANIES, timeout=10)
        assert cached.from_cache
        assert [r.status_code for r in cached.history] == [401]
    stored = (tmp_path / "cache.sqlite").read_bytes()
    assert fake.issued_tokens
    assert [token for token in fake.issued_tokens if token.encode() in stored] == []

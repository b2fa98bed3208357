"""Token-endpoint failures on the wire, against the fake OpsNow server.

``docs/design.md``: "The token request", "Errors", "Secrets".

Every failure mode of the token exchange is injected into a real loopback
server and observed through an ordinary ``requests`` call: which exception,
what its message says (and never says), how many token requests were made,
and that no API request ever went out without a token.
"""

from __future__ import annotations

import email.utils
import json
import pickle
import socket
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any, Callable

import pytest
import requests
import responses

from requests_opsnow import (
    GLOBAL_BASE_URL,
    InvalidApiKeyError,
    OpsNowAuth,
    OpsNowAuthError,
    TokenRequestError,
    TokenResponseError,
)
from requests_opsnow._lifecycle import BACKOFF_MAX, REJECTED_KEY_BACKOFF
from requests_opsnow.testing import FakeOpsNow

from .helpers import COMPANIES, MakeAuth

pytestmark = pytest.mark.timeout(15)

TIMEOUT = 5.0  # for the API request itself; the token request has its own


def companies_url(base_url: str) -> str:
    return base_url + COMPANIES


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def check_error(exc: BaseException, url: str, secrets: list[str]) -> str:
    """Assert the error contract ("Errors", "Secrets") and return the message."""
    assert isinstance(exc, OpsNowAuthError)
    assert isinstance(exc, requests.RequestException)
    message = str(exc)
    assert url in message
    for error in error_chain(exc):
        for secret in secrets:
            assert secret
            assert secret not in str(error)
            assert secret not in repr(error)
    pickled = pickle.dumps(exc)  # what a result backend or an error tracker would keep
    for secret in secrets:
        assert secret.encode() not in pickled
    return message


def secrets_of(fake: FakeOpsNow, *extra: str) -> list[str]:
    return [fake.api_key, *fake.issued_tokens, *extra]


def fail_body(message: str, code: int = 503) -> bytes:
    return json.dumps({"status": "fail", "error": {"code": code, "message": message}}).encode()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- transient failures: retried, then success ---------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_one_transient_5xx_is_retried_and_the_request_succeeds(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any, status: int
) -> None:
    fake.fail_token_requests(status, count=1)
    auth = make_auth()

    response = requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    assert response.status_code == 200
    assert fake.token_requests == 2
    assert len(clock.sleeps) == 1
    assert 0.0 <= clock.sleeps[0] <= 0.5  # first backoff: full jitter up to BACKOFF_BASE
    [api_request] = fake.api_requests
    assert api_request.header("Authorization") == f"Bearer {fake.issued_tokens[0]}"


def test_429_retry_after_seconds_is_honoured_without_really_sleeping(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any
) -> None:
    fake.fail_token_requests(429, count=1, retry_after="2")
    auth = make_auth()
    started = time.monotonic()

    response = requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    assert response.status_code == 200
    assert 2.0 in clock.sleeps
    assert clock.sleeps == [2.0]
    assert fake.token_requests == 2
    assert time.monotonic() - started < 1.9  # the 2 s wait went to the fake clock


def test_429_retry_after_http_date_is_honoured(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any
) -> None:
    started = time.time()  # urllib3 reads an HTTP-date against the real clock
    fake.fail_token_requests(
        429, count=1, retry_after=email.utils.formatdate(started + 5, usegmt=True)
    )
    auth = make_auth()

    response = requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    assert response.status_code == 200
    [slept] = clock.sleeps
    assert 4.0 - (time.time() - started) <= slept <= 5.0  # HTTP-dates have whole seconds
    assert fake.token_requests == 2


# -- transient failures that persist -----------------------------------------------------


def expect_failed_status(fake: FakeOpsNow, auth: OpsNowAuth, status: int, server_text: str) -> None:
    """The API call raises TokenRequestError carrying the last response and its message."""
    with pytest.raises(TokenRequestError) as info:
        requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    message = check_error(info.value, fake.token_url, secrets_of(fake))
    assert str(status) in message
    assert server_text in message
    assert info.value.response is not None
    assert info.value.response.status_code == status


@pytest.mark.parametrize("max_retries", [0, 1, 2, 3])
def test_persistent_5xx_raises_token_request_error_after_max_retries(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any, max_retries: int
) -> None:
    fake.fail_token_requests(503, count=-1, body=fail_body("maintenance in progress"))
    auth = make_auth(max_retries=max_retries)

    expect_failed_status(fake, auth, 503, "maintenance in progress")
    assert fake.token_requests == max_retries + 1
    assert len(clock.sleeps) == max_retries
    for attempt, slept in enumerate(clock.sleeps):  # exponential backoff with full jitter
        assert 0.0 <= slept <= 0.5 * 2**attempt
    assert fake.api_requests == []


def test_persistent_429_raises_token_request_error(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any
) -> None:
    fake.fail_token_requests(429, count=-1, retry_after="1", body=fail_body("slow down", 429))
    auth = make_auth(max_retries=2)

    expect_failed_status(fake, auth, 429, "slow down")
    assert fake.token_requests == 3
    assert clock.sleeps == [1.0, 1.0]
    assert fake.api_requests == []


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_beyond_the_time_budget_gives_up_instead_of_waiting(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any, status: int
) -> None:
    fake.fail_token_requests(status, count=-1, retry_after="3600")
    auth = make_auth(max_retries=5)

    with pytest.raises(TokenRequestError) as info:
        requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    check_error(info.value, fake.token_url, secrets_of(fake))
    assert sum(clock.sleeps) <= 30.0
    assert fake.api_requests == []


def test_retries_are_bounded_in_total_time(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any
) -> None:
    fake.fail_token_requests(503, count=-1, retry_after="7")
    auth = make_auth(max_retries=50)

    with pytest.raises(TokenRequestError):
        requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    assert 0 < sum(clock.sleeps) <= 30.0
    assert fake.token_requests == len(clock.sleeps) + 1
    assert fake.api_requests == []


@pytest.mark.parametrize("max_retries", [0, 1])
def test_token_endpoint_hanging_past_the_timeout_raises_timed_out(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any, max_retries: int
) -> None:
    fake.set_token_delay(10.0)
    auth = make_auth(timeout=0.2, max_retries=max_retries)
    started = time.monotonic()

    with pytest.raises(TokenRequestError) as info:
        requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    assert time.monotonic() - started < 5.0  # nowhere near the server's 10 s
    message = check_error(info.value, fake.token_url, secrets_of(fake))
    assert "timed out waiting for the answer" in message
    assert "OpsNowAuth(timeout=, max_retries=)" in message
    assert isinstance(info.value.__cause__, requests.Timeout)
    assert info.value.response is None
    assert fake.token_requests == max_retries + 1
    assert fake.api_requests == []


def test_connection_refused_raises_token_request_error_caused_by_connection_error(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any
) -> None:
    base_url = f"http://127.0.0.1:{closed_port()}"
    auth = make_auth(base_url=base_url, max_retries=2)

    with pytest.raises(TokenRequestError) as info:
        requests.get(companies_url(base_url), auth=auth, timeout=TIMEOUT)

    message = check_error(info.value, base_url + FakeOpsNow.TOKEN_PATH, secrets_of(fake))
    assert "failed: connection refused (ConnectionError) (gave up after 3 attempts)" in message
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert info.value.response is None
    assert len(clock.sleeps) == 2  # connection failures are transient: retried


def test_an_unknown_host_is_named_as_such(clock: Any) -> None:
    auth = OpsNowAuth("key-" + "s" * 20, base_url="https://opsnow.invalid", max_retries=1)
    with pytest.raises(TokenRequestError) as info:
        auth.get_token()
    message = check_error(info.value, "https://opsnow.invalid" + FakeOpsNow.TOKEN_PATH, [])
    assert "failed: the host name could not be resolved (ConnectionError)" in message
    assert "key-" not in message


def test_a_connection_dropped_before_an_answer_is_named_as_such(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    fake.fail_token_requests(0)
    with pytest.raises(TokenRequestError, match="connection closed without an answer"):
        make_auth(max_retries=0).get_token()


def test_the_bound_of_a_token_request_names_the_settings_that_set_it(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    # The call's own timeout cannot reach a token request made before it is sent.
    fake.fail_token_requests(200, count=-1, trickle=0.5)
    auth = make_auth(timeout=(1, 1.5), max_retries=0)
    with pytest.raises(TokenRequestError) as info:
        requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)
    assert "bounded by OpsNowAuth(timeout=, max_retries=), not by the timeout= of" in str(
        info.value
    )


def test_connection_dropped_by_the_server_raises_token_request_error(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any
) -> None:
    fake.fail_token_requests(0, count=-1)  # close the connection without answering
    auth = make_auth(max_retries=1)

    with pytest.raises(TokenRequestError) as info:
        requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    check_error(info.value, fake.token_url, secrets_of(fake))
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert info.value.response is None
    assert fake.token_requests == 2
    assert fake.api_requests == []


# -- the key is rejected ---------------------------------------------------------------------


def test_wrong_api_key_raises_invalid_api_key_error_and_is_never_retried(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any
) -> None:
    wrong = "wrong-key-7d1e0b44c2"
    auth = make_auth(api_key=wrong, max_retries=3)

    with pytest.raises(InvalidApiKeyError) as info:
        requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    message = check_error(info.value, fake.token_url, secrets_of(fake, wrong))
    assert "Invalid API key" in message
    assert "401" in message
    assert info.value.response is not None
    assert info.value.response.status_code == 401
    assert fake.token_requests == 1
    assert clock.sleeps == []
    assert fake.api_requests == []


@pytest.mark.parametrize("status", [400, 401, 403])
def test_every_rejection_status_raises_invalid_api_key_error_without_retry(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any, status: int
) -> None:
    fake.fail_token_requests(status, count=-1, body=fail_body("key disabled", status))
    auth = make_auth(max_retries=3)

    with pytest.raises(InvalidApiKeyError) as info:
        requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    message = check_error(info.value, fake.token_url, secrets_of(fake))
    assert str(status) in message
    assert "key disabled" in message
    assert fake.token_requests == 1
    assert clock.sleeps == []
    assert fake.api_requests == []


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, InvalidApiKeyError), (503, TokenRequestError), (200, TokenResponseError)],
)
def test_server_message_echoing_the_key_is_masked(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    clock: Any,
    status: int,
    error: type[OpsNowAuthError],
) -> None:
    body = fail_body(f"key {fake.api_key} is not allowed here", status)
    fake.fail_token_requests(status, count=-1, body=body)
    auth = make_auth(max_retries=0)

    with pytest.raises(error) as info:
        requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    message = check_error(info.value, fake.token_url, secrets_of(fake))
    assert "is not allowed here" in message


def test_a_key_with_inner_whitespace_is_masked_too(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any
) -> None:
    key = "first-line-of-the-key\nurl: https://vault.example\tuser: ops"
    fake.fail_token_requests(401, body=fail_body(f"unknown key {key}", 401))
    with pytest.raises(InvalidApiKeyError) as info:
        requests.get(
            companies_url(fake.base_url),
            auth=make_auth(api_key=key, max_retries=0),
            timeout=TIMEOUT,
        )
    message = check_error(info.value, fake.token_url, [key, "first-line-of-the-key"])
    assert "unknown key ***" in message


def test_a_key_at_the_end_of_a_long_reason_phrase_is_masked_before_it_is_cut(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any
) -> None:
    fake.fail_token_requests(401, body=b"", reason="x" * 190 + fake.api_key)
    with pytest.raises(InvalidApiKeyError) as info:
        requests.get(companies_url(fake.base_url), auth=make_auth(max_retries=0), timeout=TIMEOUT)
    check_error(info.value, fake.token_url, [fake.api_key, fake.api_key[:10]])


# -- a 2xx without a usable token ---------------------------------------------------------------

MALFORMED_BODIES = [
    pytest.param(b"<html><body>Welcome</body></html>", "text/html", "not JSON", id="html"),
    pytest.param(b"OK", "text/plain", "not JSON", id="plain-text"),
    pytest.param(b"{not json", "application/json", "not JSON", id="broken-json"),
    pytest.param(b"", "application/json", "not JSON", id="empty-body"),
    pytest.param(b"[]", "application/json", "not an object", id="json-list"),
    pytest.param(b'"token"', "application/json", "not an object", id="json-string"),
    pytest.param(b"null", "application/json", "not an object", id="json-null"),
    pytest.param(b"{}", "application/json", "found keys: (none)", id="empty-object"),
    pytest.param(b'{"data": {}}', "application/json", "in data: (none)", id="empty-data"),
    pytest.param(b'{"data": "x"}', "application/json", "found keys: data", id="data-is-string"),
    pytest.param(
        b'{"status": "success", "data": {"accessToken": null}}',
        "application/json",
        "no access token",
        id="token-null",
    ),
    pytest.param(
        b'{"data": {"accessToken": 12345}}',
        "application/json",
        "not a non-empty string",
        id="token-number",
    ),
    pytest.param(
        b'{"data": {"accessToken": ""}}',
        "application/json",
        "not a non-empty string",
        id="token-empty",
    ),
    pytest.param(
        b'{"data": {"accessToken": "tok-abc", "expiresIn": "soon"}}',
        "application/json",
        "expiresIn is not a positive number",
        id="expires-in-soon",
    ),
    pytest.param(
        b'{"data": {"accessToken": "tok-abc", "expiresIn": -5}}',
        "application/json",
        "expiresIn is not a positive number",
        id="expires-in-negative",
    ),
    pytest.param(
        b'{"data": {"accessToken": "tok-abc", "expires_in": NaN}}',
        "application/json",
        "expires_in is not a positive number",
        id="expires-in-nan-literal",
    ),
    pytest.param(
        b'{"data": {"accessToken": "tok-abc", "expiresAt": "not-a-date"}}',
        "application/json",
        "expiresAt is not a readable time",
        id="expires-at-unreadable",
    ),
    pytest.param(
        b'{"data": {"accessToken": "tok-abc", "expiresAt": 1000000000}}',
        "application/json",
        "expiresAt is not in the future",
        id="expires-at-past",
    ),
    pytest.param(
        b'{"data": {"accessToken": "tok-abc", "expiresIn": 1' + b"0" * 400 + b"}}",
        "application/json",
        "expiresIn",
        id="expires-in-int-too-large-for-float",
    ),
    pytest.param(
        b"[" * 100_000 + b"]" * 100_000,
        "application/json",
        "token response",
        id="json-nested-too-deep",
    ),
    pytest.param(
        b'{"status": "fail", "error": {"code": 500, "message": "boom"}}',
        "application/json",
        "reports failure: boom",
        id="fail-envelope-with-200",
    ),
]


@pytest.mark.parametrize("status", [200, 201])
@pytest.mark.parametrize(("body", "content_type", "fragment"), MALFORMED_BODIES)
def test_malformed_2xx_body_raises_token_response_error_and_no_api_request(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    clock: Any,
    status: int,
    body: bytes,
    content_type: str,
    fragment: str,
) -> None:
    fake.fail_token_requests(status, body=body, content_type=content_type, count=-1)
    auth = make_auth()

    with pytest.raises(TokenResponseError) as info:
        requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    message = check_error(info.value, fake.token_url, secrets_of(fake, "tok-abc"))
    assert fragment in message
    assert f"HTTP {status}" in message
    assert info.value.response is not None
    assert info.value.response.status_code == status
    assert fake.token_requests == 1  # a malformed answer is not transient
    assert clock.sleeps == []
    assert fake.api_requests == []


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        pytest.param(
            lambda token, ttl: {"status": "success", "data": {"jwt": token, "ttl": ttl}},
            "in data: jwt, ttl",
            id="token-under-unknown-key",
        ),
        pytest.param(
            lambda token, ttl: {
                "status": "success",
                "data": {"accessToken": token, "expiresIn": "soon"},
            },
            "expiresIn is not a positive number",
            id="real-token-bad-lifetime",
        ),
        pytest.param(
            lambda token, ttl: {"accessToken": token, "expiresAt": "yesterday-ish"},
            "expiresAt is not a readable time",
            id="real-token-bad-expiry",
        ),
    ],
)
def test_refused_token_response_never_reveals_the_issued_token(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    factory: Callable[[str, float], object],
    fragment: str,
) -> None:
    fake.set_token_body(factory)
    auth = make_auth()

    with pytest.raises(TokenResponseError) as info:
        requests.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    assert len(fake.issued_tokens) == 1
    message = check_error(info.value, fake.token_url, secrets_of(fake))
    assert fragment in message
    assert fake.api_requests == []


@pytest.mark.parametrize(
    "unsafe",
    [
        "abc\r\nX-Injected: 1",
        "abc\nX-Injected: 1",
        "has space",
        "tab\tx",
        "t\u00f8ken",
        "nul\u0000x",
        "{token}\r\nX-Injected: 1",
    ],
    ids=["crlf", "lf", "space", "tab", "non-ascii", "nul", "real-token-plus-crlf"],
)
def test_unsafe_token_value_is_refused_and_never_sent(
    fake: FakeOpsNow, make_auth: MakeAuth, session: requests.Session, unsafe: str
) -> None:
    fake.set_token_body(
        lambda token, ttl: {
            "status": "success",
            "data": {"accessToken": unsafe.replace("{token}", token), "expiresIn": ttl},
        }
    )
    session.auth = make_auth()

    with pytest.raises(TokenResponseError) as info:
        session.get(companies_url(fake.base_url), timeout=TIMEOUT)

    message = check_error(info.value, fake.token_url, secrets_of(fake, unsafe))
    assert "X-Injected" not in message
    assert "refusing" in message
    assert fake.api_requests == []


# -- a failure is never cached ---------------------------------------------------------------

NOT_CACHED = [
    pytest.param({"status": 503}, {}, TokenRequestError, id="5xx"),
    pytest.param({"status": 429, "retry_after": "1"}, {}, TokenRequestError, id="429"),
    pytest.param({"status": 0}, {}, TokenRequestError, id="dropped-connection"),
    pytest.param({"status": 503, "delay": 10.0}, {"timeout": 0.2}, TokenRequestError, id="timeout"),
    pytest.param({"status": 401}, {}, InvalidApiKeyError, id="rejected-key"),
    pytest.param({"status": 200, "body": b"{}"}, {}, TokenResponseError, id="no-token"),
    pytest.param(
        {"status": 200, "body": b"<html>", "content_type": "text/html"},
        {},
        TokenResponseError,
        id="html",
    ),
]


@pytest.mark.parametrize(("injection", "options", "error"), NOT_CACHED)
def test_a_failure_is_the_answer_for_its_backoff_window_then_the_next_call_tries_again(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    session: requests.Session,
    clock: Any,
    injection: dict[str, Any],
    options: dict[str, Any],
    error: type[OpsNowAuthError],
) -> None:
    fake.fail_token_requests(count=2, **injection)
    session.auth = make_auth(max_retries=0, **options)
    url = companies_url(fake.base_url)

    for attempt in (1, 2):
        with pytest.raises(error) as failed:
            session.get(url, timeout=TIMEOUT)
        assert fake.token_requests == attempt  # each window's end goes back to the endpoint
        with pytest.raises(
            error, match=r"\(no new token request for \d+ s: backing off\)"
        ) as again:
            session.get(url, timeout=TIMEOUT)
        assert str(again.value).startswith(str(failed.value))
        assert fake.token_requests == attempt  # inside the window: no token request
        clock.advance(max(BACKOFF_MAX, REJECTED_KEY_BACKOFF) + 1)

    response = session.get(url, timeout=TIMEOUT)

    assert response.status_code == 200
    assert fake.token_requests == 3
    assert len(fake.api_requests) == 1
    assert fake.api_requests[0].header("Authorization") == f"Bearer {fake.issued_tokens[0]}"


def test_a_backoff_window_follows_a_flight_that_exhausted_its_retries(
    fake: FakeOpsNow, make_auth: MakeAuth, clock: Any
) -> None:
    fake.fail_token_requests(503, count=2)
    auth = make_auth(max_retries=1)

    with pytest.raises(TokenRequestError):
        auth.get_token()
    assert fake.token_requests == 2
    with pytest.raises(TokenRequestError, match=r"gave up after 2 attempts.*backing off"):
        auth.get_token()
    clock.advance(BACKOFF_MAX + 1)
    assert auth.get_token() == fake.issued_tokens[0]
    assert fake.token_requests == 3


# -- the token request on the wire -----------------------------------------------------------


@pytest.mark.parametrize(
    "session_auth",
    ["none", "same-opsnow-auth", "basic-auth"],
)
def test_token_request_is_a_json_post_of_the_key_without_authorization(
    fake: FakeOpsNow, make_auth: MakeAuth, session_auth: str
) -> None:
    with requests.Session() as token_session:
        auth = make_auth(session=token_session)
        if session_auth == "same-opsnow-auth":
            token_session.auth = auth  # the token session would recurse into itself
        elif session_auth == "basic-auth":
            token_session.auth = requests.auth.HTTPBasicAuth("user", "password")

        response = token_session.get(companies_url(fake.base_url), auth=auth, timeout=TIMEOUT)

    assert response.status_code == 200
    [token_request] = fake.token_request_log
    assert token_request.method == "POST"
    assert token_request.path == FakeOpsNow.TOKEN_PATH
    assert token_request.header("Content-Type") == "application/json"
    assert json.loads(token_request.body) == {"apiKey": fake.api_key}
    assert token_request.header("Authorization") is None
    [api_request] = fake.api_requests
    assert api_request.header("Authorization") == f"Bearer {fake.issued_tokens[0]}"


def test_token_session_with_the_same_auth_does_not_recurse_via_get_token(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    with requests.Session() as token_session:
        auth = make_auth(session=token_session)
        token_session.auth = auth
        token = auth.get_token()

    assert token == fake.issued_tokens[0]
    [token_request] = fake.token_request_log
    assert token_request.header("Authorization") is None
    assert json.loads(token_request.body) == {"apiKey": fake.api_key}


# -- redirects (with the `responses` library) ----------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_from_the_token_endpoint_is_not_followed(clock: Any, status: int) -> None:
    key = "opsnow-key-3c9e51"
    token_url = GLOBAL_BASE_URL + FakeOpsNow.TOKEN_PATH
    target = "https://collector.example.com/steal"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.POST, token_url, status=status, headers={"Location": target})
        stolen_post = mock.add(responses.POST, target, json={"accessToken": "stolen"})
        stolen_get = mock.add(responses.GET, target, json={"accessToken": "stolen"})
        api = mock.add(responses.GET, companies_url(GLOBAL_BASE_URL), json={"status": "success"})

        with (
            closing(OpsNowAuth(key, max_retries=3)) as auth,
            pytest.raises(TokenRequestError) as info,
        ):
            requests.get(companies_url(GLOBAL_BASE_URL), auth=auth, timeout=TIMEOUT)

        assert [call.request.url for call in mock.calls] == [token_url]
        assert stolen_post.call_count == 0
        assert stolen_get.call_count == 0
        assert api.call_count == 0

    message = check_error(info.value, token_url, [key])
    assert str(status) in message
    assert info.value.response is not None
    assert info.value.response.status_code == status
    assert clock.sleeps == []  # a redirect is not a transient failure

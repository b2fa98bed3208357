"""Property-based tests for every parser of outside data (hypothesis).

Whatever a server, a store or a user hands over: nothing but the documented
exceptions escapes, no secret reaches a message, and a valid input round-trips.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import requests
import responses
from hypothesis import given
from hypothesis import strategies as st

from requests_opsnow import (
    InvalidApiKeyError,
    OpsNowAPIError,
    OpsNowAuth,
    TokenRequestError,
    TokenResponseError,
    raise_for_opsnow_error,
)
from requests_opsnow._hosts import Decision, host_policy, safe_place
from requests_opsnow._lifecycle import Cancellation
from requests_opsnow._protocol import read_error_body, retry_after
from requests_opsnow._token import (
    MAX_LIFETIME,
    MAX_TOKEN_LENGTH,
    Token,
    backoff_from_record,
    backoff_to_record,
    jwt_expiry,
    parse_token_payload,
    token_from_record,
    token_to_record,
)

pytestmark = pytest.mark.timeout(120)

NOW = 1_700_000_000.0
SECRET = "s3cr3t-T0KEN-value"
TOKEN_URL = "https://api.opsnow360.io/platform/v2/identity/api-keys/token"

KEYS = [
    "accessToken", "access_token", "token", "data", "expiresIn", "expires_in", "expiresAt",
    "expires_at", "expiration", "status", "error", "message", "Message", "code", "Code",
]  # fmt: skip
"""Keys the parsers look for, so that generated objects often hit their paths."""

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars | st.just(SECRET),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.sampled_from(KEYS), children, max_size=5)
    ),
    max_leaves=20,
)
safe_tokens = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64
)


# -- token responses ----------------------------------------------------------------------------


@given(json_values)
def test_any_json_payload_gives_a_sane_token_or_a_token_response_error(payload: Any) -> None:
    try:
        token = parse_token_payload(payload, now=NOW)
    except TokenResponseError as error:
        message = str(error)
    else:
        assert NOW < token.expires_at <= NOW + MAX_LIFETIME
        assert 0 < len(token.value) <= MAX_TOKEN_LENGTH
        assert token.value.isprintable()
        assert " " not in token.value
        return
    assert SECRET not in message


@given(
    token=safe_tokens,
    lifetime=st.floats(min_value=1, max_value=10 * MAX_LIFETIME),
    under_data=st.booleans(),
)
def test_a_valid_token_response_round_trips(token: str, lifetime: float, under_data: bool) -> None:
    body: dict[str, Any] = {"accessToken": token, "expiresIn": lifetime}
    parsed = parse_token_payload({"data": body} if under_data else body, now=NOW)
    assert parsed.value == token
    assert parsed.expires_at == min(NOW + lifetime, NOW + MAX_LIFETIME)


@given(
    status=st.integers(min_value=100, max_value=599),
    body=st.binary(max_size=300) | json_values.map(lambda value: json.dumps(value).encode()),
    content_type=st.sampled_from(["application/json", "text/plain", "text/html", ""]),
    retry_after=st.none() | st.text(max_size=30),
)
def test_any_token_endpoint_answer_raises_only_documented_errors(
    status: int, body: bytes, content_type: str, retry_after: str | None
) -> None:
    from requests_opsnow._protocol import TokenEndpoint
    from requests_opsnow._transport_requests import RequestsTransport, SendSettings

    key = "key-" + SECRET
    headers = {"Retry-After": retry_after} if retry_after and retry_after.isprintable() else {}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(
            responses.POST, TOKEN_URL, body=body, status=status,
            content_type=content_type or None, headers=headers,
        )  # fmt: skip
        endpoint = TokenEndpoint(TOKEN_URL, 5.0, 0)
        try:
            token = RequestsTransport(endpoint, key, None, SendSettings())(Cancellation())
        except (InvalidApiKeyError, TokenRequestError, TokenResponseError) as error:
            message = str(error)
        else:
            assert 200 <= status < 300
            assert 0 < len(token.value) <= MAX_TOKEN_LENGTH
            return
    assert key not in message


# -- JWT payloads and store records ----------------------------------------------------------


@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_a_jwt_expiry_is_none_or_a_finite_number(token: str) -> None:
    exp = jwt_expiry(token)
    assert exp is None or math.isfinite(exp)


@given(st.text(max_size=300) | st.binary(max_size=300) | json_values.map(json.dumps))
def test_any_store_record_reads_as_a_token_or_absent(raw: str | bytes) -> None:
    token = token_from_record(raw)
    assert token is None or 0 < token.lifetime <= MAX_LIFETIME


@given(
    value=safe_tokens,
    issued=st.floats(min_value=0, max_value=4e9),
    lifetime=st.floats(min_value=0.001, max_value=MAX_LIFETIME),
)
def test_a_valid_record_round_trips(value: str, issued: float, lifetime: float) -> None:
    token = Token(value, issued + lifetime, issued)
    if token.lifetime <= 0:  # too small to survive float addition at this magnitude
        return
    assert token_from_record(token_to_record(token)) == token


_backoff_records = st.fixed_dictionaries(
    {
        "format": st.just("requests-opsnow/backoff/1") | st.text(max_size=5),
        "until": st.floats(allow_nan=True, allow_infinity=True) | json_values,
        "kind": st.text(max_size=30) | json_values,
        "message": st.text(max_size=2000) | json_values,
    }
).map(json.dumps)


@given(st.text(max_size=300) | st.binary(max_size=300) | _backoff_records)
def test_any_stored_backoff_window_reads_as_one_of_ours_or_absent(raw: str | bytes) -> None:
    window = backoff_from_record(raw)
    if window is not None:
        until, kind, message = window
        assert math.isfinite(until)
        assert kind.isidentifier()
        assert len(message) <= 1000
        assert message == " ".join(message.split())  # one line: no forged log lines


@given(
    until=st.floats(min_value=0, max_value=4e9),
    kind=st.sampled_from(["InvalidApiKeyError", "TokenRequestError"]),
    message=st.text(max_size=3000),
)
def test_a_backoff_window_round_trips_as_one_line(until: float, kind: str, message: str) -> None:
    assert backoff_from_record(backoff_to_record(until, kind, message)) == (
        until, kind, " ".join(message[:1000].split())
    )  # fmt: skip


# -- Retry-After, error bodies -----------------------------------------------------------------


@given(st.text(max_size=60))
def test_retry_after_is_none_or_a_finite_wait(value: str) -> None:
    wait = retry_after({"Retry-After": value})
    assert wait is None or (math.isfinite(wait) and wait >= 0)


@given(payload=json_values, status=st.integers(min_value=400, max_value=599))
def test_any_error_body_becomes_an_opsnow_api_error_on_one_line(payload: Any, status: int) -> None:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(payload).encode()
    response.request = requests.Request(
        "GET", "https://api.opsnow360.io/x", headers={"Authorization": f"Bearer {SECRET}"}
    ).prepare()
    with pytest.raises(OpsNowAPIError) as caught:
        raise_for_opsnow_error(response)
    text = str(caught.value)
    assert "\n" not in text
    assert SECRET not in text
    assert caught.value.code is not None
    assert caught.value.message


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        (
            {"status": "fail", "error": {"code": 401, "message": "Unauthorized"}},
            401,
            "Unauthorized",
        ),
        ({"status": "fail", "error": {"code": "E_QUOTA", "message": "Quota"}}, "E_QUOTA", "Quota"),
        ({"Code": 1, "Message": "Something failed"}, 1, "Something failed"),
        ({"code": 7, "message": "lower case"}, 7, "lower case"),
        ({"status": "success", "error": {"code": "OK"}}, "OK", None),
        (["not", "an", "object"], None, None),
    ],
)
def test_every_published_error_body_shape_is_read(
    payload: Any, code: int | str | None, message: str | None
) -> None:
    assert read_error_body(payload) == (code, message)


# -- the host policy ----------------------------------------------------------------------------


@given(st.text(max_size=40))
def test_any_allowed_hosts_entry_is_accepted_or_a_value_error(entry: str) -> None:
    try:
        OpsNowAuth("k", allowed_hosts=[entry])
    except ValueError as error:
        message = str(error)
    else:
        return
    assert "allowed_hosts" in message


@given(
    st.text(max_size=80)
    | st.builds(lambda s, h: f"{s}://{h}/x", st.text(max_size=8), st.text(max_size=30))
)
def test_any_url_gets_a_decision(url: str) -> None:
    policy = host_policy(("https://api.opsnow360.io",), ("*.example.com:8443",))
    assert isinstance(policy.decide(url), Decision)


@given(
    st.sampled_from(["redis://", "rediss://", "redis:/", "redis:", "redis//", "http://", ""]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.sampled_from(["cache:6379/0", "proxy.corp:3128", "h"]),
)
def test_a_proxy_or_redis_url_in_a_message_never_shows_its_password(
    start: str, password: str, rest: str
) -> None:
    secret = "S3CR" + password  # a password may hold "/", "?", "#", "@"
    for url in (f"{start}:{secret}@{rest}", f"{start}user:{secret}@{rest}"):
        assert "S3CR" not in safe_place(url)

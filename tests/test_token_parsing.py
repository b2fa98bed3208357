"""Parsing of token-endpoint payloads: pure unit tests, no network.

``docs/design.md``: "The token request" (limits), "Secrets" (token values)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from typing import Any

import pytest
import requests

from requests_opsnow import OpsNowAuthError, Token, TokenResponseError
from requests_opsnow._token import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    check_token_value,
    parse_token_payload,
)

pytestmark = pytest.mark.timeout(15)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
LIFETIME = 1800.0  # deliberately not the 3600 s fallback
EXPIRY = NOW + LIFETIME  # 2023-11-14T22:43:20Z
SECRET = "tok-SECRET-5f3a9c"  # a token value that must never show up in a message


def b64url(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned_jwt(claims: dict[str, Any]) -> str:
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims)}.sig"


def parse(payload: object) -> Token:
    return parse_token_payload(payload, now=NOW)


def refused(payload: object) -> str:
    """Parse ``payload``, expecting refusal; return the message (checked for leaks)."""
    with pytest.raises(TokenResponseError) as info:
        parse(payload)
    message = str(info.value)
    assert SECRET not in message
    assert SECRET not in repr(info.value)
    return message


# -- where the token is ---------------------------------------------------------------------


@pytest.mark.parametrize("key", ["accessToken", "access_token", "token"])
@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "under-data"])
def test_token_is_found_under_each_key_at_top_level_or_in_data(key: str, nested: bool) -> None:
    inner = {key: SECRET, "expiresIn": LIFETIME}
    payload = {"status": "success", "data": inner} if nested else inner
    token = parse(payload)
    assert token.value == SECRET
    assert token.issued_at == NOW
    assert token.expires_at == EXPIRY
    assert token.lifetime == LIFETIME


def test_null_top_level_token_falls_through_to_data() -> None:
    token = parse({"accessToken": None, "data": {"accessToken": SECRET}})
    assert token.value == SECRET


# -- the lifetime ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["expiresIn", "expires_in"])
@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (1800, 1800.0),
        (90.5, 90.5),
        ("1800", 1800.0),
        (" 120 ", 120.0),
        ("90.5", 90.5),
        ("1e3", 1000.0),
    ],
    ids=["int", "float", "numeric-string", "padded-string", "float-string", "exponent-string"],
)
def test_relative_lifetime_is_read_as_seconds_from_now(
    key: str, raw: object, seconds: float
) -> None:
    token = parse({"accessToken": SECRET, key: raw})
    assert token.expires_at == NOW + seconds
    assert token.lifetime == seconds


@pytest.mark.parametrize("key", ["expiresAt", "expires_at", "expiration"])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (int(EXPIRY), EXPIRY),
        (EXPIRY + 0.25, EXPIRY + 0.25),
        (str(int(EXPIRY)), EXPIRY),
        (int(EXPIRY * 1000), EXPIRY),
        (int(EXPIRY * 1000) + 500, EXPIRY + 0.5),
        (str(int(EXPIRY * 1000)), EXPIRY),
        ("2023-11-14T22:43:20Z", EXPIRY),
        ("2023-11-14T22:43:20.500Z", EXPIRY + 0.5),
        ("2023-11-15T07:43:20+09:00", EXPIRY),
        ("2023-11-14T17:43:20-05:00", EXPIRY),
        ("2023-11-14T22:43:20", EXPIRY),
        ("2023-11-14T22:43:20.123456789Z", EXPIRY + 0.123456),
        ("2023-11-14T22:43:20.5Z", EXPIRY + 0.5),
        ("2023-11-15T07:43:20+0900", EXPIRY),
    ],
    ids=[
        "epoch-seconds",
        "epoch-seconds-float",
        "epoch-seconds-string",
        "epoch-ms",
        "epoch-ms-fraction",
        "epoch-ms-string",
        "iso-z",
        "iso-z-fraction",
        "iso-plus-offset",
        "iso-minus-offset",
        "iso-naive-is-utc",
        "iso-nanoseconds-java-instant",
        "iso-one-digit-fraction",
        "iso-offset-without-colon",
    ],
)
def test_absolute_expiry_is_read_in_every_documented_format(
    key: str, raw: object, expected: float
) -> None:
    token = parse({"data": {"accessToken": SECRET, key: raw}})
    assert token.expires_at == pytest.approx(expected, abs=1e-6)
    assert token.issued_at == NOW


def test_jwt_exp_claim_gives_the_expiry_when_the_response_has_none() -> None:
    jwt = unsigned_jwt({"sub": "someone", "exp": int(EXPIRY)})
    token = parse({"accessToken": jwt})
    assert token.value == jwt
    assert token.expires_at == EXPIRY


def test_response_lifetime_is_preferred_over_the_jwt_exp_claim() -> None:
    jwt = unsigned_jwt({"exp": int(NOW + 99_999)})
    token = parse({"accessToken": jwt, "expiresIn": LIFETIME})
    assert token.expires_at == EXPIRY


@pytest.mark.parametrize(
    "value",
    [SECRET, unsigned_jwt({"sub": "no-exp"}), "not.a-jwt.at-all", "a.b.c"],
    ids=["opaque", "jwt-without-exp", "three-parts-garbage", "three-tiny-parts"],
)
def test_lifetime_falls_back_to_3600_seconds_when_nothing_says_otherwise(value: str) -> None:
    token = parse({"accessToken": value})
    assert DEFAULT_LIFETIME == 3600.0
    assert token.expires_at == NOW + 3600.0


@pytest.mark.parametrize("relative", ["expiresIn", "expires_in"])
@pytest.mark.parametrize("absolute", ["expiresAt", "expires_at", "expiration"])
def test_relative_lifetime_is_preferred_over_absolute_expiry(relative: str, absolute: str) -> None:
    token = parse({"accessToken": SECRET, relative: 60, absolute: int(NOW + 99_999)})
    assert token.expires_at == NOW + 60


@pytest.mark.parametrize("key", ["expiresAt", "expires_at", "expiration"])
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)),
        ("5200-01-01T00:00:00+00:00", datetime(5200, 1, 1, tzinfo=timezone.utc)),
    ],
    ids=["never-expires-sentinel", "year-5200"],
)
def test_far_future_iso_expiry_is_not_mistaken_for_epoch_milliseconds(
    key: str, raw: str, expected: datetime
) -> None:
    # The "epoch values above 1e11 are milliseconds" rule is for numbers only; an
    # ISO-8601 date says exactly what it means (read as milliseconds it would lie in
    # the past and be refused). Then, like any far expiry, it is cut to MAX_LIFETIME.
    token = parse({"accessToken": SECRET, key: raw})
    assert expected.timestamp() > NOW + MAX_LIFETIME
    assert token.expires_at == NOW + MAX_LIFETIME


@pytest.mark.parametrize(
    "exp",
    ["abc", None, [1], {"at": 1}, True, 10**400],
    ids=["string", "null", "list", "object", "bool", "int-too-large-for-float"],
)
def test_jwt_with_unusable_exp_claim_falls_back_to_3600_seconds(exp: object) -> None:
    jwt = unsigned_jwt({"sub": "someone", "exp": exp})
    token = parse({"accessToken": jwt})
    assert token.expires_at == NOW + 3600.0


def test_null_lifetime_falls_through_to_the_absolute_expiry() -> None:
    token = parse({"accessToken": SECRET, "expiresIn": None, "expiresAt": int(EXPIRY)})
    assert token.expires_at == EXPIRY


# -- refusals -------------------------------------------------------------------------------


def test_token_response_error_is_an_opsnow_and_requests_error() -> None:
    with pytest.raises(TokenResponseError) as info:
        parse([])
    assert isinstance(info.value, OpsNowAuthError)
    assert isinstance(info.value, requests.RequestException)


@pytest.mark.parametrize(
    "payload",
    [[], [{"accessToken": SECRET}], SECRET, "", None, 42, True],
    ids=["empty-list", "list-of-token", "string", "empty-string", "null", "number", "bool"],
)
def test_payload_that_is_not_a_json_object_is_refused(payload: object) -> None:
    assert "not an object" in refused(payload)


@pytest.mark.parametrize(
    ("payload", "named", "in_data"),
    [
        ({}, [], None),
        ({"status": "success", "jwt": SECRET, "ttl": 3600}, ["jwt", "status", "ttl"], None),
        (
            {"status": "success", "data": {"bearer": SECRET, "ttl": 60}},
            ["data", "status"],
            "bearer, ttl",
        ),
        ({"data": {}}, ["data"], "(none)"),
        ({"data": SECRET}, ["data"], None),
        ({"accessToken": None, "token": None}, ["accessToken", "token"], None),
        ({"data": {"access_token": None}}, ["data"], "access_token"),
    ],
    ids=[
        "empty-object",
        "unknown-keys",
        "unknown-keys-in-data",
        "empty-data",
        "data-is-a-string",
        "null-tokens",
        "null-token-in-data",
    ],
)
def test_missing_token_is_refused_naming_the_keys_found_never_their_values(
    payload: dict[str, Any], named: list[str], in_data: str | None
) -> None:
    message = refused(payload)
    assert "no access token" in message
    for key in named:
        assert key in message
    if not named:
        assert "(none)" in message
    if in_data is not None:
        assert f"in data: {in_data}" in message
    assert "3600" not in message  # values are not named, not even harmless ones


@pytest.mark.parametrize(
    "value",
    ["", 12345, 1.5, True, ["tok"], {"value": "tok"}],
    ids=["empty", "int", "float", "bool", "list", "object"],
)
@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "under-data"])
def test_token_that_is_not_a_non_empty_string_is_refused(value: object, nested: bool) -> None:
    inner = {"accessToken": value, "expiresIn": 60}
    message = refused({"data": inner} if nested else inner)
    assert "not a non-empty string" in message


@pytest.mark.parametrize("key", ["expiresIn", "expires_in"])
@pytest.mark.parametrize(
    "raw",
    [0, 0.0, "0", -1, -0.5, "-60", "abc", "", "soon", True, False, "nan", "inf", "-inf",
     "Infinity", float("nan"), float("inf"), [60], {"s": 60}],
    ids=["zero", "zero-float", "zero-string", "negative", "negative-float", "negative-string",
         "abc", "empty-string", "soon", "true", "false", "nan-string", "inf-string",
         "minus-inf-string", "infinity-string", "nan", "inf", "list", "object"],
)  # fmt: skip
def test_lifetime_that_is_not_a_positive_number_is_an_error_not_a_guess(
    key: str, raw: object
) -> None:
    message = refused({"accessToken": SECRET, key: raw})
    assert key in message
    assert "positive number" in message


@pytest.mark.parametrize(
    "key", ["expiresIn", "expires_in", "expiresAt", "expires_at", "expiration"]
)
@pytest.mark.parametrize("raw", [10**400, -(10**400)], ids=["huge-int", "huge-negative-int"])
def test_integer_too_large_for_a_float_is_a_token_response_error(key: str, raw: int) -> None:
    # json.loads turns a long digit string into a Python int; float() of it overflows.
    message = refused({"accessToken": SECRET, key: raw})
    assert key in message


@pytest.mark.parametrize("key", ["expiresAt", "expires_at", "expiration"])
@pytest.mark.parametrize(
    "raw",
    ["not-a-date", "", "tomorrow", "2023-13-45T99:00:00Z", "nan", "inf", True, [1], {"at": 1}],
    ids=["garbage", "empty", "word", "impossible-date", "nan", "inf", "bool", "list", "object"],
)
def test_unreadable_absolute_expiry_is_refused(key: str, raw: object) -> None:
    message = refused({"accessToken": SECRET, key: raw})
    assert key in message
    assert "not a readable time" in message


@pytest.mark.parametrize("key", ["expiresAt", "expires_at", "expiration"])
@pytest.mark.parametrize(
    "raw",
    [0, int(NOW), int(NOW) - 1, int((NOW - 60) * 1000), "2023-11-14T22:13:19Z", "2001-01-01"],
    ids=["epoch-zero", "exactly-now", "one-second-ago", "ms-minute-ago", "iso-ago", "iso-date"],
)
def test_absolute_expiry_not_in_the_future_is_refused(key: str, raw: object) -> None:
    message = refused({"accessToken": SECRET, key: raw})
    assert key in message
    assert "not in the future" in message


# -- header-injection guard ("Secrets") -----------------------------------------------------

UNSAFE_TOKENS = [
    "abc\r\nX-Injected: 1",
    "abc\nX-Injected: 1",
    "abc\rdef",
    "has space",
    " leading",
    "trailing ",
    "tab\tx",
    "nul\x00x",
    "del\x7fx",
    "t\u00f8ken",
    "\u200btoken",
    "emoji\U0001f511",
]
UNSAFE_IDS = [
    "crlf-injection",
    "lf",
    "cr",
    "space",
    "leading-space",
    "trailing-space",
    "tab",
    "nul",
    "del",
    "non-ascii",
    "zero-width-space",
    "emoji",
]


@pytest.mark.parametrize("value", UNSAFE_TOKENS, ids=UNSAFE_IDS)
def test_check_token_value_refuses_unsafe_tokens(value: str) -> None:
    with pytest.raises(TokenResponseError) as info:
        check_token_value(value)
    assert value not in str(info.value)
    assert "X-Injected" not in str(info.value)


@pytest.mark.parametrize("value", UNSAFE_TOKENS, ids=UNSAFE_IDS)
@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "under-data"])
def test_unsafe_token_in_a_response_is_refused(value: str, nested: bool) -> None:
    inner = {"accessToken": value, "expiresIn": 60}
    with pytest.raises(TokenResponseError) as info:
        parse({"data": inner} if nested else inner)
    message = str(info.value)
    assert "refusing" in message
    assert value not in message
    assert "X-Injected" not in message


@pytest.mark.parametrize(
    "value",
    [
        SECRET,
        "A",
        "!#$%&'()*+,-./0123456789:;<=>?@[\\]^_`{|}~",
        unsigned_jwt({"exp": int(EXPIRY)}),
    ],
    ids=["opaque", "one-char", "all-punctuation", "jwt"],
)
def test_check_token_value_accepts_visible_ascii(value: str) -> None:
    assert check_token_value(value) == value


# -- the Token value object ("Secrets") -----------------------------------------------------


def test_token_repr_and_str_never_show_the_value() -> None:
    token = parse({"data": {"accessToken": SECRET, "expiresIn": LIFETIME}})
    for text in (repr(token), str(token), f"{token}", repr([token]), repr({"t": token})):
        assert SECRET not in text
    assert "expires_at" in repr(token)
    direct = Token(value=SECRET, expires_at=EXPIRY, issued_at=NOW)
    assert SECRET not in repr(direct)
    assert direct == token

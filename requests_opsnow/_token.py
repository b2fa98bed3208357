"""The token value object and the parsing of token-endpoint responses.

OpsNow does not publish the token response's field names, so parsing is
tolerant about *where* the token and its lifetime are, and strict about what
they are: a lifetime that is present but unusable is an error, never a guess.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from .errors import TokenResponseError

DEFAULT_LIFETIME = 3600.0
"""Lifetime assumed when the response and the token say nothing about expiry."""

MAX_LIFETIME = 86400.0
"""The longest a token is believed to live (OpsNow's live 3600 s): a longer claimed
lifetime, absolute expiry or JWT ``exp`` is cut to this, so no absurd number reaches
a clock, a store's TTL or a date."""

MAX_TOKEN_LENGTH = 8192
"""The longest token accepted, in characters (a JWT is about 1 kB; servers refuse
request headers much over 8 kB). The file and Redis stores use the same limit."""

TOKEN_KEYS = ("accessToken", "access_token", "token")
LIFETIME_KEYS = ("expiresIn", "expires_in")
EXPIRY_KEYS = ("expiresAt", "expires_at", "expiration")

_MILLISECONDS_THRESHOLD = 1e11
"""Epoch values above this are milliseconds (1e11 s is the year 5138)."""

_SAFE_TOKEN = re.compile(r"[\x21-\x7e]+")
"""Visible ASCII only: no space, no control character, so no header injection."""

_MAX_KEYS_NAMED = 20


class Token(NamedTuple):
    """An access token and when it stops working: an immutable value.

    ``expires_at`` and ``issued_at`` are absolute wall-clock epoch seconds.
    ``repr()`` never shows the value. A named tuple: equality, hashing, pickling
    and construction run in C, with no ``dataclasses`` import at start-up.
    """

    value: str
    expires_at: float
    issued_at: float

    def __repr__(self) -> str:
        return f"Token(expires_at={self.expires_at!r}, issued_at={self.issued_at!r})"

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.issued_at


class TokenInfo(Token):
    """What ``get_token_info()`` returns: a :class:`Token` (equal to it, and hashing alike)
    that also says where it came from (``source``: ``network``, or the store that had it:
    ``file``, ``redis``...) and when it falls due for refresh (``refresh_at``, epoch
    seconds). When it was obtained is ``issued_at``."""

    source: str
    refresh_at: float

    def __new__(cls, token: Token, source: str, refresh_at: float) -> TokenInfo:
        info = super().__new__(cls, token.value, token.expires_at, token.issued_at)
        vars(info).update(source=source, refresh_at=refresh_at)
        return info

    def __repr__(self) -> str:
        return (
            f"TokenInfo(source={self.source!r}, issued_at={self.issued_at!r},"
            f" refresh_at={self.refresh_at!r}, expires_at={self.expires_at!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return TokenInfo, (Token(*self), self.source, self.refresh_at)


MAX_RECORD_SIZE = MAX_TOKEN_LENGTH + 512
"""The largest stored record read: one token at its longest, and its few fields."""

RECORD_FORMAT = "requests-opsnow/token/1"
"""Marks a stored token record as ours: anything else in a shared store is ignored."""


def token_to_record(token: Token) -> str:
    """The token as stored by the shared caches: JSON, with no key in it."""
    record = {
        "format": RECORD_FORMAT,
        "access_token": token.value,
        "expires_at": token.expires_at,
        "issued_at": token.issued_at,
    }
    return json.dumps(record, sort_keys=True)


def token_from_record(raw: str | bytes) -> Token | None:
    """The token in a stored record, or None if it is corrupt, foreign, unsafe or absurd.

    A store is outside data (anyone who can write to a shared Redis can write
    there): whatever a record holds, reading it returns a token or None, and
    the caller treats None as "absent" and overwrites it.
    """
    try:
        return _token_in_record(raw)
    except Exception:  # noqa: BLE001 - any way a record can be unusable means "absent"
        return None


def _token_in_record(raw: str | bytes) -> Token | None:
    if len(raw) > MAX_RECORD_SIZE:
        return None
    record = json.loads(raw)
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    value = check_token_value(record["access_token"])
    expires_at = _finite_number(record["expires_at"], strings=False)
    issued_at = _finite_number(record["issued_at"], strings=False)
    if expires_at is None or issued_at is None:
        return None
    if not 0 < expires_at - issued_at <= MAX_LIFETIME:
        return None
    return Token(value, expires_at, issued_at)


BACKOFF_FORMAT = "requests-opsnow/backoff/1"
"""Marks a stored backoff window (a failed token request) as ours."""

_MAX_BACKOFF_MESSAGE = 1000


def backoff_to_record(until: float, kind: str, message: str) -> str:
    """A backoff window as the shared stores keep it: when it ends, the error's class name
    and its message (which holds no key)."""
    message = message[:_MAX_BACKOFF_MESSAGE]  # a record cut short would not read back
    record = {"format": BACKOFF_FORMAT, "until": until, "kind": kind, "message": message}
    return json.dumps(record, sort_keys=True)


def backoff_from_record(raw: str | bytes) -> tuple[float, str, str] | None:
    """``(until, kind, message)`` from a stored window; None for anything unusable."""
    try:
        if len(raw) > MAX_RECORD_SIZE:
            return None
        record = json.loads(raw)
        until = _finite_number(record["until"], strings=False)
        kind, message = record["kind"], record["message"]
        if record["format"] != BACKOFF_FORMAT or until is None:
            return None
        if isinstance(kind, str) and isinstance(message, str) and kind.isidentifier():
            return until, kind, " ".join(message[:_MAX_BACKOFF_MESSAGE].split())  # one line
    except Exception:  # noqa: BLE001 - outside data: unusable means absent
        return None
    return None


def check_token_value(value: object) -> str:
    """Return ``value`` if it is safe to put in an ``Authorization`` header."""
    if not isinstance(value, str) or not value:
        raise TokenResponseError("the access token is not a non-empty string")
    if len(value) > MAX_TOKEN_LENGTH:
        raise TokenResponseError(
            f"the access token is longer than {MAX_TOKEN_LENGTH} characters; refusing it"
        )
    if not _SAFE_TOKEN.fullmatch(value):
        raise TokenResponseError(
            "the access token contains spaces, control or non-ASCII characters; refusing it"
        )
    return value


def parse_token_payload(payload: object, *, now: float) -> Token:
    """Build a :class:`Token` from a decoded token response.

    The token may sit in the object itself or in its ``data`` member. Raises
    :class:`TokenResponseError` naming the keys found (never their values).
    """
    if not isinstance(payload, dict):
        raise TokenResponseError(
            f"the token response is a JSON {type(payload).__name__}, not an object"
        )
    source: Any = payload
    for source in (payload, payload.get("data")):  # the object itself, or its data member
        value = _first_present(source, TOKEN_KEYS) if isinstance(source, dict) else None
        if value is not None:
            break
    else:
        raise TokenResponseError(
            f"the token response has no access token; {_describe_keys(payload)}"
        )
    value = check_token_value(value)
    expires_at = min(_claimed_expiry(source, value, now=now), now + MAX_LIFETIME)
    return Token(value, expires_at, now)


def _first_present(source: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if source.get(key) is not None:
            return source[key]
    return None


def _describe_keys(payload: dict[str, Any]) -> str:
    names = sorted(str(key) for key in payload)[:_MAX_KEYS_NAMED]
    text = f"found keys: {', '.join(names) or '(none)'}"
    data = payload.get("data")
    if isinstance(data, dict):
        data_names = sorted(str(key) for key in data)[:_MAX_KEYS_NAMED]
        text += f"; in data: {', '.join(data_names) or '(none)'}"
    return text


def _claimed_expiry(source: dict[str, Any], token: str, *, now: float) -> float:
    """The absolute expiry the response gives (the caller cuts it to :data:`MAX_LIFETIME`)."""
    for key in LIFETIME_KEYS:
        if source.get(key) is not None:
            return now + _positive_seconds(source[key], key)
    for key in EXPIRY_KEYS:
        if source.get(key) is not None:
            return _absolute_expiry(source[key], key, now=now)
    jwt_exp = jwt_expiry(token)
    if jwt_exp is not None and jwt_exp > now:
        return jwt_exp
    return now + DEFAULT_LIFETIME


def _finite_number(raw: object, *, strings: bool = True) -> float | None:
    """A finite number from a JSON number (or, with ``strings``, a numeric string); else None."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str) and strings:
        text: str | int | float = raw.strip()
    elif isinstance(raw, (int, float)):
        text = raw
    else:
        return None
    try:
        number = float(text)
    except (ValueError, OverflowError):  # OverflowError: a JSON integer too big for a float
        return None
    return number if math.isfinite(number) else None


def _positive_seconds(raw: object, key: str) -> float:
    seconds = _finite_number(raw)
    if seconds is None or seconds <= 0:
        raise TokenResponseError(f"the token response's {key} is not a positive number of seconds")
    return seconds


def _absolute_expiry(raw: object, key: str, *, now: float) -> float:
    epoch = _finite_number(raw)
    if epoch is not None and epoch > _MILLISECONDS_THRESHOLD:
        epoch /= 1000.0
    if epoch is None and isinstance(raw, str):
        epoch = _iso_timestamp(raw)
    if epoch is None:
        raise TokenResponseError(f"the token response's {key} is not a readable time")
    if epoch <= now:
        raise TokenResponseError(f"the token response's {key} is not in the future")
    return epoch


_ISO_8601_PATTERN = (
    r"(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(?:([Zz])|([+-])(\d{2}):?(\d{2})?)?)?"
)
"""ISO-8601 date-times, parsed the same way on every Python (3.9's fromisoformat is narrow)."""


def _iso_timestamp(text: str) -> float | None:
    match = re.fullmatch(_ISO_8601_PATTERN, text.strip())  # compiled (and cached) on first use
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, _, sign, off_h, off_m = match.groups()
    offset = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
    zone = timezone(-offset if sign == "-" else offset) if sign else timezone.utc
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")), tzinfo=zone,
        )  # fmt: skip
        return moment.timestamp()
    except (ValueError, OverflowError):
        return None


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read only to learn the expiry; None if absent.

    The signature is not checked: nothing else in the token is trusted or used.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    segment = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(segment))
    except (binascii.Error, ValueError, RecursionError):  # not base64, not JSON, absurdly deep
        return None
    if not isinstance(claims, dict):
        return None
    return _finite_number(claims.get("exp"))

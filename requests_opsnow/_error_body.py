"""Reading OpsNow error bodies, in every shape the API has been seen to use.

``{"status": "fail", "error": {"code": 401, "message": "Unauthorized"}}`` is
the documented one; published examples also show ``error.code`` as a string,
and ``{"Code": 1, "Message": "..."}`` at the top level. The API session and
the token request both read them here.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, NamedTuple

import requests

_CODE_KEYS = ("code", "Code")
_MESSAGE_KEYS = ("message", "Message")


class ErrorBody(NamedTuple):
    """The server's own code and message, each None when the body does not give one."""

    code: int | str | None
    message: str | None


def read_error_body(payload: Any) -> ErrorBody:
    """The code and message of a decoded JSON body; ``(None, None)`` for anything else."""
    if not isinstance(payload, dict):
        return ErrorBody(None, None)
    nested = payload.get("error")
    source = nested if isinstance(nested, dict) else payload
    code = _first(source, _CODE_KEYS)
    message = _first(source, _MESSAGE_KEYS)
    if isinstance(code, bool) or not isinstance(code, (int, str)) or code == "":
        code = None
    if not isinstance(message, str) or not message.strip():
        message = None
    return ErrorBody(code, message)


def reason_phrase(response: requests.Response) -> str:
    """The status line's reason phrase, else the standard one for the status."""
    reason: object = response.reason
    if isinstance(reason, bytes):
        reason = reason.decode("latin-1")
    if isinstance(reason, str) and reason.strip():
        return reason
    try:
        return HTTPStatus(response.status_code).phrase
    except ValueError:
        return "HTTP error"


def _first(source: dict[Any, Any], keys: tuple[str, ...]) -> Any:
    return next((source[key] for key in keys if source.get(key) is not None), None)

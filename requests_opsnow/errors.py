"""The exception hierarchy, and the one warning.

Everything raised by this package derives from :class:`OpsNowAuthError`, which
derives from :class:`requests.RequestException`, so an existing
``except requests.RequestException`` block keeps catching it.
"""

from __future__ import annotations

import copy
from typing import Any

import requests

__all__ = [
    "ApiKeyUnavailableError",
    "InvalidApiKeyError",
    "OpsNowAPIError",
    "OpsNowAuthError",
    "ReplaySkippedWarning",
    "TokenRequestError",
    "TokenResponseError",
]


class OpsNowAuthError(requests.RequestException):
    """Root of every error raised by requests-opsnow.

    Like every ``requests`` exception it carries ``.request`` and
    ``.response`` (either may be ``None``). Messages never contain the API
    key or a token.
    """


class ApiKeyUnavailableError(OpsNowAuthError):
    """A profile's key source failed: the keyring (none here, or an error), or its
    ``api_key_command`` (an exit status, a timeout, no output). The message names
    the profile and the fix, never the key."""


class InvalidApiKeyError(OpsNowAuthError):
    """The token endpoint rejected the API key (HTTP 400, 401 or 403). Not retried."""


class TokenRequestError(OpsNowAuthError):
    """The token request failed: connection error, timeout, 429 or 5xx after retries.

    ``.response`` is the last response received, if there was one.
    """


class TokenResponseError(OpsNowAuthError):
    """The token endpoint answered 2xx without a usable token."""


class OpsNowAPIError(OpsNowAuthError, requests.HTTPError):
    """An OpsNow API call answered with an error status.

    ``code`` and ``message`` are the server's own (``error.code`` and
    ``error.message`` of the OpsNow error body), or the HTTP status and reason
    when the body is not an OpsNow error; ``.response`` is the failed response.
    """

    def __init__(
        self,
        text: str,
        *,
        code: int | str | None,
        message: str,
        response: requests.Response | None = None,
    ) -> None:
        super().__init__(text, response=response)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # A pickle leaves the process (a result backend, an error tracker, a process pool):
        # it keeps the failed response, but not the token its requests were sent with.
        # Built without __init__, whose arguments are keyword-only.
        state = dict(vars(self))
        if self.response is not None:
            state["response"] = _without_authorization(self.response)
        state["request"] = (
            state["response"].request
            if self.response is not None and self.request is self.response.request
            else request_without_authorization(self.request)
        )
        return _rebuilt_api_error, (type(self), self.args, state)


def _rebuilt_api_error(
    kind: type[OpsNowAPIError], args: tuple[Any, ...], state: dict[str, Any]
) -> OpsNowAPIError:
    error = kind.__new__(kind)
    error.args = args
    vars(error).update(state)
    return error


def _without_authorization(response: requests.Response) -> requests.Response:
    clone = copy.copy(response)
    clone.request = request_without_authorization(response.request)
    clone.history = [_without_authorization(earlier) for earlier in response.history]
    return clone


def request_without_authorization(request: Any) -> Any:
    """``request`` with its ``Authorization`` header replaced by ``[redacted]`` (a copy)."""
    if not isinstance(request, requests.PreparedRequest) or "Authorization" not in request.headers:
        return request
    clone = request.copy()
    clone.headers["Authorization"] = "[redacted]"
    return clone


class ReplaySkippedWarning(UserWarning):
    """A request that got a 401 was not resent, because its body cannot be sent again.

    The 401 response is returned as it is, and the rejected token is dropped, so
    the next request fetches a new one. A warning (shown on stderr by default)
    as well as a log record, so that a script with no logging set up sees it.
    """

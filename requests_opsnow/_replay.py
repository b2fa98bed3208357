"""Resending a request once after a 401, with the body rules of SPEC B5.

bytes, str, form and JSON bodies are resent as they were; a file body is
rewound to where it stood when the request was prepared; anything that cannot
be rewound (generator, iterator, MultipartEncoder, pipe) is never resent.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

import requests
from requests.cookies import extract_cookies_to_jar, get_cookie_header

from ._hosts import safe_url

log = logging.getLogger("requests_opsnow")

_REPLAYED = "_opsnow_replayed"
"""Attribute set on a replayed PreparedRequest: one replay per request, ever."""


_BODY_POSITION = "_body_position"
"""Where requests recorded a stream body's start (``body.tell()``) when preparing."""


class _Credential(Protocol):
    header: str


def replay_with(
    response: requests.Response,
    replacement: Callable[[], _Credential],
    send_options: dict[str, Any],
) -> requests.Response:
    """Resend ``response.request`` once with a new token; return the new response.

    ``response`` is a 401 to a request that carried our token. It is returned
    unchanged when the request was already a replay or its body cannot be
    resent; otherwise it is read, closed and put in the new response's history.
    """
    request = response.request
    if getattr(request, _REPLAYED, False):
        log.debug("401 to a replayed request; returning it")
        return response
    problem = unreplayable_body(request)
    if problem:
        log.warning("not replaying %s after a 401: %s", _describe(request), problem)
        return response
    connection = getattr(response, "connection", None)
    if connection is None:
        log.warning("not replaying %s after a 401: no connection to send it on", _describe(request))
        return response
    # Release the 401's connection first: with a one-connection pool the replay needs it.
    response.content  # noqa: B018
    response.close()
    try:
        retry = _copy_for_replay(request, response)
    except OSError as exc:
        log.warning(
            "not replaying %s after a 401: rewinding its body failed (%s)",
            _describe(request),
            type(exc).__name__,
        )
        return response
    credential = replacement()
    retry.headers["Authorization"] = credential.header
    setattr(retry, _REPLAYED, True)
    # requests follows a redirect of the replay by copying the original request:
    # give it the new token, and keep what was really sent on the 401.
    response.request = request.copy()
    request.headers["Authorization"] = credential.header
    log.debug("replaying %s once with a new token", _describe(request))
    new_response: requests.Response = connection.send(retry, **send_options)
    new_response.history.append(response)
    new_response.request = retry
    return new_response


def unreplayable_body(request: requests.PreparedRequest) -> str | None:
    body: object = request.body  # typed bytes | str, but a file or iterator in practice
    if body is None or isinstance(body, (bytes, str)):
        return None
    position = getattr(request, _BODY_POSITION, None)
    if isinstance(position, int) and callable(getattr(body, "seek", None)):
        return None
    return f"its {type(body).__name__} body cannot be rewound and resent"


def _copy_for_replay(
    request: requests.PreparedRequest, response: requests.Response
) -> requests.PreparedRequest:
    retry = request.copy()
    _rewind(retry)
    _add_cookies_set_by(response, retry)
    return retry


def _rewind(request: requests.PreparedRequest) -> None:
    body: Any = request.body
    if body is None or isinstance(body, (bytes, str)):
        return
    # Seek to the recorded start, not to 0: the caller may have skipped a header.
    body.seek(getattr(request, _BODY_POSITION))


def _add_cookies_set_by(response: requests.Response, request: requests.PreparedRequest) -> None:
    jar = getattr(request, "_cookies", None)
    if jar is None:
        return
    # cookielib adds no header to a request that has one: ask on a copy without it.
    probe = request.copy()
    probe.headers.pop("Cookie", None)
    jar_header = get_cookie_header(jar, probe)  # type: ignore[no-untyped-call]
    if request.headers.get("Cookie") not in (None, jar_header):
        return  # an explicit Cookie header the caller wrote: leave it as it was
    extract_cookies_to_jar(jar, response.request, response.raw)  # type: ignore[no-untyped-call]
    request.headers.pop("Cookie", None)
    request.prepare_cookies(jar)


def _describe(request: requests.PreparedRequest) -> str:
    return f"{request.method} {safe_url(request.url or '')}"

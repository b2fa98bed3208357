"""Resending a request once after a 401, with the body rules of ``docs/design.md`` ("Bodies").

bytes, str, form and JSON bodies are resent as they were; a file body is
rewound to where it stood when the request was prepared; anything that cannot
be rewound (generator, iterator, MultipartEncoder, pipe) is never resent.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from datetime import timedelta
from typing import Any, Callable

import requests
from requests.cookies import extract_cookies_to_jar, get_cookie_header

from ._hosts import safe_url
from .errors import ReplaySkippedWarning, request_without_authorization

log = logging.getLogger("requests_opsnow")

_REPLAYED = "_opsnow_replayed"
"""Attribute set on a replayed PreparedRequest: one replay per request, ever."""


_INNER_PACKAGES = frozenset(
    {"requests", "requests_opsnow", "requests_toolbelt", "httpx", "httpcore", "anyio", "asyncio"}
)
"""A warning points at the first frame outside these: the caller's own line."""

_BODY_POSITION = "_body_position"
"""Where requests recorded a stream body's start (``body.tell()``) when preparing."""


def is_replay(request: requests.PreparedRequest) -> bool:
    """Whether ``request`` is itself a replay: its 401 is returned as it is."""
    return bool(getattr(request, _REPLAYED, False))


def prepare_replay(response: requests.Response) -> tuple[requests.PreparedRequest, Any] | str:
    """For a 401 to a request that carried our token: a copy of the request, rewound, with
    the cookies the 401 set, and the adapter to send it on; or why it cannot be resent.

    The 401 is read and closed first: with a one-connection pool the replay needs
    its connection. The request the caller (or a mocking library) holds is never
    changed: the replay is a copy.
    """
    request = response.request
    problem = unreplayable_body(request)
    if problem is not None:
        return problem
    connection = getattr(response, "connection", None)
    if connection is None:
        return "there is no connection to send it on"
    response.content  # noqa: B018
    response.close()
    try:
        retry = request.copy()
        _rewind(retry)
    except OSError as exc:
        return f"rewinding its body failed ({type(exc).__name__})"
    _add_cookies_set_by(response, retry)
    return retry, connection


def resend(
    response: requests.Response,
    retry: requests.PreparedRequest,
    connection: Any,
    header: str,
    send_options: dict[str, Any],
) -> requests.Response:
    """Send ``retry`` (from :func:`prepare_replay`) once with ``header``; its response,
    with the 401 in its history.

    A redirect of the replay is followed by requests from the original request,
    so it carries the old token once more and is replayed in turn, without a new
    fetch: one extra round trip on a rare path.
    """
    retry.headers["Authorization"] = header
    setattr(retry, _REPLAYED, True)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("replaying %s %s once with a new token", retry.method, safe_url(retry.url or ""))
    started = time.perf_counter()
    new_response: requests.Response = connection.send(retry, **send_options)
    new_response.elapsed = timedelta(seconds=time.perf_counter() - started)
    original = response.request
    # The 401 kept in history shows its request without the dead token: a response cache
    # (requests-cache) redacts the final response's request, not its history's.
    response.request = request_without_authorization(original)
    new_response.history.append(response)
    new_response.request = retry
    if new_response.is_redirect:
        _keep_the_401_through_redirects(original, new_response, response)
    return new_response


def _keep_the_401_through_redirects(
    request: requests.PreparedRequest, replayed: requests.Response, rejected: requests.Response
) -> None:
    """Keep ``rejected`` first in ``history`` while requests follows ``replayed``'s redirects.

    requests assigns each hop's ``history`` anew, and builds the final
    response's from the hops it saw, which do not include our 401. The hops
    share the request's hooks, so a hook marks each hop's response to keep it.
    """
    hooks: list[Any] = request.hooks.setdefault("response", [])
    _adopt(replayed, rejected)
    hooks.append(_KeepTheRejected(request, rejected, hooks))


class AfterAReplay(requests.Response):
    """A response that follows a replayed 401 through redirects: its ``history`` starts
    with that 401, whatever requests assigns to it."""

    @property
    def history(self) -> list[requests.Response]:
        history: list[requests.Response] = self.__dict__.get("_history", [])
        return history

    @history.setter
    def history(self, value: list[requests.Response]) -> None:
        earlier: list[requests.Response] = self.__dict__.get("_earlier", [])
        later = [hop for hop in value if all(hop is not first for first in earlier)]
        self.__dict__["_history"] = [*earlier, *later]


def _adopt(response: requests.Response, rejected: requests.Response) -> None:
    history = response.__dict__.pop("history", [])
    response.__class__ = AfterAReplay
    response.__dict__["_earlier"] = [rejected]
    response.history = history


class _KeepTheRejected:
    """The hook that marks each redirect hop after a replay; gone once the chain ends."""

    __slots__ = ("hooks", "original", "rejected")

    def __init__(
        self, original: requests.PreparedRequest, rejected: requests.Response, hooks: list[Any]
    ) -> None:
        self.original = original
        self.rejected = rejected
        self.hooks = hooks

    def __call__(self, response: requests.Response, **send_options: Any) -> requests.Response:
        if response.request is self.original:  # the caller sent it again: a new exchange
            self._retire()
            return response
        _adopt(response, self.rejected)
        if not response.is_redirect:
            self._retire()  # the last hop
        return response

    def _retire(self) -> None:
        with contextlib.suppress(ValueError):
            self.hooks.remove(self)

    def __reduce__(self) -> tuple[Callable[[], Callable[..., requests.Response]], tuple[()]]:
        return (inert_hook, ())


def inert_hook() -> Callable[..., requests.Response]:
    """What our hooks become in a pickle: a hook that does nothing, holding nothing."""
    return passes_through


def passes_through(response: requests.Response, **send_options: Any) -> requests.Response:
    return response


def warn_replay_skipped(method: str, url: str, problem: str) -> None:
    """Log and warn (``ReplaySkippedWarning``) that a 401'd request was not resent, and why.

    The warning points at the caller's own line, so a script with no logging set
    up sees where on stderr.
    """
    message = (
        f"not replaying {method} {safe_url(url)} after a 401: {problem}; the 401 is returned,"
        " and the next request gets a new token"
    )
    log.warning("%s", message)
    warnings.warn(message, ReplaySkippedWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside the HTTP client stack and this package."""
    frame = sys._getframe(2)  # the caller of warn_replay_skipped: level 2 for warnings.warn
    level = 2
    while frame.f_back is not None and (
        str(frame.f_globals.get("__name__", "")).partition(".")[0] in _INNER_PACKAGES
    ):
        frame = frame.f_back
        level += 1
    return level


def unreplayable_body(request: requests.PreparedRequest) -> str | None:
    body: object = request.body  # typed bytes | str, but a file or iterator in practice
    if body is None or isinstance(body, (bytes, str)):
        return None
    position = getattr(request, _BODY_POSITION, None)
    if isinstance(position, int) and callable(getattr(body, "seek", None)):
        return None
    return f"its {type(body).__name__} body cannot be rewound and resent"


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

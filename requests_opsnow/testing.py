"""A fake OpsNow server for tests and benchmarks.

:class:`FakeOpsNow` is a real HTTP/1.1 server on loopback (keep-alive, chunked
request bodies, optional TLS), run in a background thread. It issues tokens
from the OpsNow token endpoint, checks them on every other path, records every
request, and lets a test inject failures, delays and malformed payloads::

    with FakeOpsNow() as fake:
        requests.post(fake.token_url, json={"apiKey": fake.api_key})

Endpoints of your own go in with :meth:`FakeOpsNow.route`; a handler receives
the :class:`RecordedRequest` and returns a :class:`Reply`::

    fake.route("GET", "/platform/v2/things", lambda request: Reply.json(200, {"things": []}))

The HTTP side lives in :mod:`requests_opsnow._loopback`; this module is what
makes the server OpsNow: its token endpoint, its error bodies, its routes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import secrets
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable

from . import _loopback
from ._config import GLOBAL_BASE_URL, TOKEN_PATH
from ._lifecycle import forget_all_tokens
from ._loopback import LoopbackServer, RecordedRequest, bypass_proxies

__all__ = [
    "FakeOpsNow", "RecordedRequest", "Reply", "bypass_proxies", "forget_tokens", "token_json",
    "token_url",
]  # fmt: skip

_COMPANIES = [{"id": "c-1", "name": "Acme"}, {"id": "c-2", "name": "Globex"}]


class Reply(_loopback.Reply):
    """What a route answers: ``Reply(status, body=b"", headers={}, content_type="application/json",
    reason=None, drop=False, trickle=0.0)``.

    - ``body`` is sent as it is, with ``Content-Type: content_type`` when not empty;
      the server adds ``Content-Length``.
    - ``reason`` replaces the status line's standard phrase.
    - ``drop=True`` closes the connection without answering (``status`` is then
      ignored): what a crashed backend or a load balancer cutting in looks like.
    - ``trickle`` sends the answer one byte every ``trickle`` seconds: a server that
      never trips a client's read timeout.

    :meth:`json` and :meth:`opsnow_error` build the two bodies an OpsNow API sends.
    """

    @classmethod
    def opsnow_error(cls, status: int, message: str | None = None, **headers: str) -> Reply:
        """An error in OpsNow's shape, ``{"status": "fail", "error": {"code", "message"}}``.

        ``message`` defaults to the status's standard phrase; ``headers`` are sent
        as given (``**{"Retry-After": "3"}`` for names that are not identifiers).
        """
        error = {"code": status, "message": message or _standard_phrase(status)}
        return cls.json(status, {"status": "fail", "error": error}, headers)


def token_url(base_url: str = GLOBAL_BASE_URL) -> str:
    """The token endpoint of ``base_url`` (default: the global region's), for a mock to answer."""
    return base_url.rstrip("/") + TOKEN_PATH


def token_json(token: str = "test-token", expires_in: float = 3600) -> dict[str, Any]:  # noqa: S107
    """A successful token response's JSON, as OpsNow sends it: for ``responses``,
    ``requests-mock`` or ``respx``::

        responses.post(token_url(), json=token_json("t1"))
        requests_mock.post(token_url(), json=token_json("t1"))
    """
    return {"status": "success", "data": {"accessToken": token, "expiresIn": expires_in}}


def forget_tokens() -> None:
    """Forget every token this process holds, as a new process would (stores are left as
    they are). The pytest plugin does this before each test, so that a test that mocks the
    token endpoint sees its own token request whatever ran before it."""
    forget_all_tokens()


RouteHandler = Callable[[RecordedRequest], Reply]
"""Answers one request to a route; called in the connection's own thread, so it may block."""


@dataclass(frozen=True)
class _Route:
    handler: RouteHandler
    authorized: bool


@dataclass
class _Failure:
    status: int
    remaining: int  # -1: forever
    delay: float
    retry_after: str | None
    body: bytes | None
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    trickle: float = 0.0


def _standard_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _json_number(value: float) -> float | int:
    """``3600`` rather than ``3600.0`` in a JSON body, as a real server would write it."""
    return int(value) if float(value).is_integer() else value


def _same(given: object, expected: str) -> bool:
    return isinstance(given, str) and secrets.compare_digest(given.encode(), expected.encode())


def _unauthorized() -> Reply:
    return Reply.opsnow_error(401, "Unauthorized", **{"WWW-Authenticate": "Bearer"})


# -- argument checks: a typo in a test must fail loudly, not inject nothing ---------------


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _injector(queue: str, doc: str) -> Callable[..., None]:
    """A method that queues a :class:`_Failure` on ``queue``: both injectors take the same
    arguments, checked the same way."""

    def inject(
        self: FakeOpsNow,
        status: int = 503,
        *,
        count: int = 1,
        delay: float = 0.0,
        retry_after: str | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        reason: str | None = None,
        trickle: float = 0.0,
    ) -> None:
        status = _check_int("status", status)
        if status != 0 and not 100 <= status <= 599:
            raise ValueError(
                f"status must be 0 (drop the connection) or an HTTP status 100..599, got {status}"
            )
        count = _check_int("count", count)
        if count != -1 and count < 1:
            raise ValueError(
                f"count must be >= 1, or -1 for every request until reset(); got {count}"
            )
        failure = _Failure(
            status, count, _check_seconds("delay", delay), retry_after, body, content_type,
            dict(headers or {}), reason, _check_seconds("trickle", trickle),
        )  # fmt: skip
        with self._lock:
            getattr(self, queue).append(failure)

    inject.__doc__ = doc
    return inject


def _route_method(method: str) -> str:
    if method != "*" and not (isinstance(method, str) and method.isascii() and method.isalpha()):
        raise ValueError(f"method must be an HTTP method such as 'GET', or '*', got {method!r}")
    return method.upper()


def _check_route_path(path: str) -> None:
    if not isinstance(path, str) or not path.startswith("/") or "?" in path or "#" in path:
        raise ValueError(f"path must be a URL path starting with '/', got {path!r}")
    if "*" in path.removesuffix("/*"):
        raise ValueError(f"path may end in '/*' (a prefix) but have no other '*', got {path!r}")


class FakeOpsNow(LoopbackServer):
    """An OpsNow-like HTTP server on loopback; see the module docstring.

    ``start()``, ``close()`` (also as a context manager), ``base_url``,
    ``open_connections`` and ``accepted_connections`` are the loopback server's.
    """

    TOKEN_PATH = "/platform/v2/identity/api-keys/token"  # noqa: S105 (a path, not a secret)

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ttl: float = 3600.0,
        api_key: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(host=host, port=port, ssl_context=ssl_context, name="FakeOpsNow")
        self.api_key = api_key if api_key is not None else "fake-key-" + secrets.token_hex(16)
        self.ttl = ttl
        self._lock = threading.Condition()
        self._token_count = 0
        self._api_log: list[RecordedRequest] = []
        self._token_log: list[RecordedRequest] = []
        self._issued: list[str] = []
        self._expiry: dict[str, float] = {}
        self._failures: deque[_Failure] = deque()
        self._api_failures: deque[_Failure] = deque()
        self._token_delay = 0.0
        self._token_gate = threading.Event()
        self._token_gate.set()
        self._body_factory: Callable[[str, float], object] | None = None
        self._routes: dict[str, dict[str, _Route]] = {}
        self._prefixes: list[str] = []
        self.route("GET", "/platform/v2/companies", _companies)
        self.route("*", "/test/echo", _echo)
        self.route("*", "/test/status/*", _status)
        self.route("*", "/test/open/echo", _echo, authorized=False)
        self.route("*", "/test/redirect", _redirect, authorized=False)

    def stop(self) -> None:
        super().stop()  # also wakes handlers sleeping in an injected delay
        self._token_gate.set()  # connections are gone: held handlers can no longer answer

    def bad_request(self) -> Reply:
        return Reply.opsnow_error(400, "Bad request")

    @property
    def token_url(self) -> str:
        return self.base_url + self.TOKEN_PATH

    # -- observation ---------------------------------------------------------

    @property
    def token_requests(self) -> int:
        """POSTs received at the token endpoint, failed and injected ones included."""
        with self._lock:
            return self._token_count

    @property
    def api_requests(self) -> list[RecordedRequest]:
        """Every request not to the token endpoint (routes of your own too), in arrival order."""
        with self._lock:
            return list(self._api_log)

    @property
    def token_request_log(self) -> list[RecordedRequest]:
        """Every request to the token endpoint (any method), in arrival order."""
        with self._lock:
            return list(self._token_log)

    @property
    def issued_tokens(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    def wait_for_api_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` API requests were recorded; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._api_log) >= n, timeout)

    # -- routes ------------------------------------------------------------------

    def route(
        self, method: str, path: str, handler: RouteHandler, *, authorized: bool = True
    ) -> None:
        """Answer ``method path`` with ``handler(request)``, a :class:`Reply`.

        So scripts that call endpoints the fake does not know can be tested
        against it too. ``authorized=True``, as on the real API, answers 401
        unless the request carries a valid token from this fake, before the
        handler is called; ``authorized=False`` makes an open path.

        - ``method``: ``"GET"`` (which also answers ``HEAD``), ``"POST"``, ...,
          or ``"*"`` for every method. A path whose routes do not take the
          request's method answers 405 with an ``Allow`` header.
        - ``path``: an exact path, or a prefix ending in ``/*``
          (``"/test/status/*"`` takes ``/test/status/429``). An exact route wins
          over prefixes, and a longer prefix over a shorter one.
        - Registering the same method and path again replaces the route, built-in
          ones included; ``"*"`` replaces every method's route for that path.

        Requests to routes are recorded in :attr:`api_requests` and subject to
        :meth:`fail_api_requests`. The token endpoint is not a route: change it with
        :meth:`fail_token_requests` and :meth:`set_token_body`.
        """
        method = _route_method(method)
        _check_route_path(path)
        if path == self.TOKEN_PATH:
            raise ValueError(
                f"{path} is the token endpoint, not a route: use fail_token_requests()"
                " or set_token_body() to change its answers"
            )
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        with self._lock:
            methods = self._routes.setdefault(path, {})
            if method == "*":
                methods.clear()
            methods[method] = _Route(handler, authorized)
            prefixes = (p for p in self._routes if p.endswith("/*"))
            self._prefixes = sorted(prefixes, key=len, reverse=True)

    def is_authorized(self, request: RecordedRequest) -> bool:
        """Whether ``request`` carries a token this fake issued, not expired nor revoked.

        What ``authorized=True`` routes check; for handlers that answer an
        unauthorized request their own way.
        """
        scheme, _, token = (request.header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        with self._lock:
            expiry = self._expiry.get(token.strip())
        return expiry is not None and expiry > time.time()

    def issue_token(self) -> tuple[str, float]:
        """A new token this fake accepts, and its lifetime: ``(token, ttl)``.

        For token endpoints of your own (an OAuth2-style route, say): the token is
        issued as the built-in endpoint issues one, after :meth:`set_token_delay`
        and while :meth:`hold_token_requests` does not hold it, and is listed in
        :attr:`issued_tokens`. It is not counted in :attr:`token_requests`, which
        counts requests to the OpsNow endpoint.
        """
        self.sleep(self._token_delay)
        self._token_gate.wait()
        token = "fake-" + secrets.token_urlsafe(24)
        with self._lock:
            ttl = self.ttl
            self._expiry[token] = time.time() + ttl
            self._issued.append(token)
        return token, ttl

    # -- control ---------------------------------------------------------------

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far."""
        with self._lock:
            self._expiry.clear()

    fail_token_requests = _injector(
        "_failures",
        """Make the next ``count`` token POSTs (-1: all, until :meth:`reset`) fail.

        Each is counted, waits ``delay`` seconds, then answers ``status`` (with
        ``reason`` as its reason phrase, if given) with ``body`` (default: an
        OpsNow error body), a ``Retry-After`` header if ``retry_after`` is given,
        and ``headers``, sending one byte every ``trickle`` seconds if that is not
        0. ``status=0`` drops the connection without answering. Successive calls
        queue up in call order. Nonsense (``count=0``, ``status=42``, a negative
        delay) is a ``ValueError``: a test that injects nothing should not pass.
        """,
    )
    fail_api_requests = _injector(
        "_api_failures",
        """Make the next ``count`` API requests (any path but the token endpoint) fail.

        The arguments mean what they mean for :meth:`fail_token_requests`. Each
        request is recorded, then answered with the failure instead of its route
        (whether or not it carries a valid token). :meth:`reset` clears them.
        """,
    )

    def set_token_delay(self, seconds: float) -> None:
        """Delay every successful token response by ``seconds``."""
        self._token_delay = seconds

    def hold_token_requests(self) -> None:
        """Make successful token responses wait until :meth:`release_token_requests`.

        The request is counted on arrival, so a test can see a fetch in flight.
        """
        self._token_gate.clear()

    def release_token_requests(self) -> None:
        """Let held (and future) token responses go."""
        self._token_gate.set()

    def set_token_body(self, factory: Callable[[str, float], object] | None) -> None:
        """Use ``factory(token, ttl)`` as the OpsNow token success payload (None: default)."""
        self._body_factory = factory

    def reset(self) -> None:
        """Clear injected failures, the token delay and the body factory.

        Counters and routes stay: they are what the test observes and what it set up.
        """
        with self._lock:
            self._failures.clear()
            self._api_failures.clear()
            self._token_delay = 0.0
            self._body_factory = None
        self._token_gate.set()

    def reset_counts(self) -> None:
        """Zero :attr:`token_requests` and clear the request logs."""
        with self._lock:
            self._token_count = 0
            self._api_log.clear()
            self._token_log.clear()

    # -- request handling (called from handler threads) ------------------------

    def answer(self, req: RecordedRequest) -> Reply:
        if req.path == self.TOKEN_PATH:
            return self._token_endpoint(req)
        with self._lock:
            self._api_log.append(req)
            self._lock.notify_all()
            failure = self._take_failure(self._api_failures)
        if failure is not None:
            return self._injected(failure)
        route, matched = self._find_route(req)
        authorized = route.authorized if route is not None else True
        if route is None and matched:
            # The path exists, not for this method: 405, but only to a caller with a
            # token if any of the path's routes wants one (as with any other answer).
            authorized = any(r.authorized for methods in matched for r in methods.values())
        if authorized and not self.is_authorized(req):
            return _unauthorized()
        if route is not None:
            return route.handler(req)
        if matched:
            allow = ", ".join(sorted({method for methods in matched for method in methods}))
            return Reply.opsnow_error(405, Allow=allow)
        return Reply.opsnow_error(404, "Not found")

    def _find_route(self, req: RecordedRequest) -> tuple[_Route | None, list[dict[str, _Route]]]:
        """The route for ``req``, and every route table its path matched, most specific first."""
        path = req.path
        with self._lock:
            patterns = [path] if path in self._routes else []
            patterns += [p for p in self._prefixes if path.startswith(p[:-1]) and p != path]
            matched = [dict(self._routes[p]) for p in patterns]
        for methods in matched:
            route = methods.get(req.method)
            if route is None and req.method == "HEAD":
                route = methods.get("GET")
            route = route or methods.get("*")
            if route is not None:
                return route, matched
        return None, matched

    def _token_endpoint(self, req: RecordedRequest) -> Reply:
        failure = None
        with self._lock:
            self._token_log.append(req)
            if req.method == "POST":
                self._token_count += 1
                failure = self._take_failure(self._failures)
        if req.method != "POST":
            return Reply.opsnow_error(405, Allow="POST")
        if failure is not None:
            return self._injected(failure)
        error = self._check_key(req)
        if error is not None:
            return error
        token, ttl = self.issue_token()
        factory = self._body_factory
        if factory is not None:
            return Reply.json(200, factory(token, ttl))
        data = {"accessToken": token, "expiresIn": _json_number(ttl)}
        return Reply.json(200, {"status": "success", "data": data})

    @staticmethod
    def _take_failure(failures: deque[_Failure]) -> _Failure | None:
        if not failures:
            return None
        failure = failures[0]
        if failure.remaining > 0:
            failure.remaining -= 1
            if failure.remaining == 0:
                failures.popleft()
        return failure

    def _injected(self, failure: _Failure) -> Reply:
        self.sleep(failure.delay)
        if failure.status == 0:
            return Reply(0, drop=True)
        if failure.body is None:
            reply = Reply.opsnow_error(failure.status)
        else:
            reply = Reply(failure.status, failure.body, content_type=failure.content_type)
        if failure.retry_after is not None:
            reply.headers["Retry-After"] = failure.retry_after
        reply.headers.update(failure.headers)
        reply.reason, reply.trickle = failure.reason, failure.trickle
        return reply

    def _check_key(self, req: RecordedRequest) -> Reply | None:
        try:
            payload: Any = json.loads(req.body)
        except ValueError:
            return Reply.opsnow_error(400, "Bad request")
        key = payload.get("apiKey") if isinstance(payload, dict) else None
        return None if _same(key, self.api_key) else Reply.opsnow_error(401, "Invalid API key")


# -- the built-in routes ---------------------------------------------------------------------


def _companies(req: RecordedRequest) -> Reply:
    page: int | str = req.query.get("page", ["1"])[0]
    with contextlib.suppress(ValueError):
        page = int(page)
    return Reply.json(200, {"status": "success", "data": {"companies": _COMPANIES, "page": page}})


def _echo(req: RecordedRequest) -> Reply:
    data = {
        "method": req.method,
        "path": req.path,
        "query": req.query,
        "headers": req.headers,
        "body_length": len(req.body),
        "body_sha256": hashlib.sha256(req.body).hexdigest(),
    }
    return Reply.json(200, {"status": "success", "data": data})


def _redirect(req: RecordedRequest) -> Reply:
    target = req.query.get("to", [""])[0]
    status = req.query.get("status", ["302"])[0]
    if not target or not status.isdigit() or not 300 <= int(status) < 400:
        return Reply.opsnow_error(400, "Bad request")
    return Reply(int(status), headers={"Location": target})


def _status(req: RecordedRequest) -> Reply:
    code = req.path.rsplit("/", 1)[1]
    if not code.isdigit() or not 200 <= int(code) < 600:
        return Reply.opsnow_error(404, "Not found")
    if int(code) == 200:
        reply = Reply.json(200, {"status": "success", "data": {}})
    else:
        reply = Reply.opsnow_error(int(code))
    retry_after = req.query.get("Retry-After")
    if retry_after:
        reply.headers["Retry-After"] = retry_after[0]
    return reply

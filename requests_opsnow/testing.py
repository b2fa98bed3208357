"""A fake OpsNow server for tests and benchmarks.

:class:`FakeOpsNow` is a real HTTP/1.1 server (keep-alive, chunked request
bodies) on loopback, run in a background thread. It issues tokens from the
OpsNow token endpoint (and from an OAuth2-style ``/oauth/token`` endpoint),
checks them on every other path, records every request, and lets a test
inject token-endpoint failures, delays and malformed payloads::

    with FakeOpsNow() as fake:
        requests.post(fake.token_url, json={"apiKey": fake.api_key})
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import secrets
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeOpsNow", "RecordedRequest", "bypass_proxies"]

OAUTH_PATH = "/oauth/token"
_HANDSHAKE_TIMEOUT = 10.0
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
_COMPANIES = [{"id": "c-1", "name": "Acme"}, {"id": "c-2", "name": "Globex"}]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client_host: str

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    reason: str | None = None  # the status line's reason phrase; None: the standard one
    trickle: float = 0.0  # seconds between bytes: an answer that never trips a read timeout


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


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), headers=headers or {})


def _fail(status: int, message: str | None = None, **headers: str) -> _Reply:
    error = {"code": status, "message": message or _standard_phrase(status)}
    return _json(status, {"status": "fail", "error": error}, headers)


def _json_number(value: float) -> float | int:
    """``3600`` rather than ``3600.0`` in a JSON body, as a real server would write it."""
    return int(value) if float(value).is_integer() else value


def _basic_password(authorization: str | None) -> str | None:
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:
        return None
    return decoded.partition(":")[2]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_bypass_lock = threading.Lock()
_bypass_users: dict[str, tuple[int, list[str]]] = {}
"""Per host: how many servers need the bypass, and the variables it was added to."""


def bypass_proxies(host: str) -> Callable[[], None]:
    """Keep requests to ``host`` off any proxy the environment names, until the returned
    function is called.

    With ``HTTP_PROXY`` (or ``HTTPS_PROXY``, ``ALL_PROXY``) set, requests would
    send even loopback traffic to the proxy, and OpsNowAuth refuses to send a
    token over plain http through one. So while a fake server runs, its host is
    added to ``NO_PROXY`` (and ``no_proxy``); nothing changes when no proxy is set.
    """
    names = [*_PROXY_VARIABLES, *(name.upper() for name in _PROXY_VARIABLES)]
    if not any(os.environ.get(name) for name in names):
        return _nothing
    with _bypass_lock:
        users, added = _bypass_users.get(host, (0, []))
        if not users:
            added = [name for name in ("no_proxy", "NO_PROXY") if _add_entry(name, host)]
        _bypass_users[host] = (users + 1, added)
    return lambda: _release_bypass(host)


def _add_entry(name: str, host: str) -> bool:
    entries = _entries(os.environ.get(name, ""))
    if host in entries:
        return False
    os.environ[name] = ",".join([*entries, host])
    return True


def _release_bypass(host: str) -> None:
    with _bypass_lock:
        users, added = _bypass_users.pop(host)
        if users > 1:
            _bypass_users[host] = (users - 1, added)
            return
        for name in added:
            entries = [entry for entry in _entries(os.environ.get(name, "")) if entry != host]
            if entries:
                os.environ[name] = ",".join(entries)
            else:
                os.environ.pop(name, None)


def _entries(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def _nothing() -> None:
    pass


def _same(given: object, expected: str) -> bool:
    return isinstance(given, str) and secrets.compare_digest(given.encode(), expected.encode())


class FakeOpsNow:
    """An OpsNow-like HTTP server on loopback; see the module docstring."""

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
        self.api_key = api_key if api_key is not None else "fake-key-" + secrets.token_hex(16)
        self.ttl = ttl
        self._address = (host, port)
        self._ssl_context = ssl_context
        self._proxy_bypass: Callable[[], None] | None = None
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self._closed = False
        self._server: _Server | None = None
        self._base_url: str | None = None
        self._thread: threading.Thread | None = None
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

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakeOpsNow:
        """Bind and start serving; a no-op if already started."""
        if self._closed:
            raise RuntimeError("FakeOpsNow cannot be restarted after close()")
        if self._server is None:
            self._server = _Server(self._address, self, self._ssl_context)
            host, port = self._server.server_address[:2]
            scheme = "https" if self._ssl_context is not None else "http"
            self._base_url = f"{scheme}://{_url_host(str(host))}:{port}"
            self._proxy_bypass = bypass_proxies(str(host))
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="FakeOpsNow-server",
                daemon=True,
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, drop every client connection and join the threads. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        server, self._server = self._server, None
        if self._proxy_bypass is not None:
            self._proxy_bypass()
        if server is not None:
            server.shutdown()
            server.server_close()
            server.drop_connections()
        self._closing.set()  # wake handlers sleeping in an injected delay
        self._token_gate.set()
        if server is not None:
            server.join_handlers(timeout=2.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> FakeOpsNow:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the server; available once started (and after close)."""
        if self._base_url is None:
            raise RuntimeError("FakeOpsNow has not been started")
        return self._base_url

    @property
    def token_url(self) -> str:
        return self.base_url + self.TOKEN_PATH

    # -- observation ---------------------------------------------------------

    @property
    def token_requests(self) -> int:
        """POSTs received at the token endpoints, failed and injected ones included."""
        with self._lock:
            return self._token_count

    @property
    def api_requests(self) -> list[RecordedRequest]:
        """Every request not to a token endpoint, in arrival order."""
        with self._lock:
            return list(self._api_log)

    @property
    def token_request_log(self) -> list[RecordedRequest]:
        """Every request to a token endpoint (any method), in arrival order."""
        with self._lock:
            return list(self._token_log)

    @property
    def open_connections(self) -> int:
        """Client connections open right now (keep-alive ones included)."""
        server = self._server
        return server.connection_count() if server is not None else 0

    @property
    def accepted_connections(self) -> int:
        """Client connections accepted so far (with TLS: including failed handshakes)."""
        server = self._server
        return server.accepted if server is not None else 0

    @property
    def issued_tokens(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    def wait_for_api_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` API requests were recorded; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._api_log) >= n, timeout)

    # -- control ---------------------------------------------------------------

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far."""
        with self._lock:
            self._expiry.clear()

    def fail_token_requests(
        self,
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
        """Make the next ``count`` token POSTs (-1: all, until :meth:`reset`) fail.

        Each waits ``delay`` seconds, then answers ``status`` (with ``reason`` as
        its reason phrase, if given) with ``body`` (default: an OpsNow error
        body) and ``headers``, sending one byte every ``trickle`` seconds if
        that is not 0. ``status=0`` drops the connection without answering.
        Successive calls queue up in call order.
        """
        if count < -1:
            raise ValueError("count must be >= -1")
        if count == 0:
            return
        failure = _Failure(
            status, count, delay, retry_after, body, content_type, dict(headers or {}), reason,
            trickle,
        )  # fmt: skip
        with self._lock:
            self._failures.append(failure)

    def fail_api_requests(
        self, status: int, *, count: int = 1, retry_after: str | None = None
    ) -> None:
        """Make the next ``count`` API requests (any path but the token endpoints) fail.

        Each is recorded, then answered ``status`` with an OpsNow error body and,
        if given, a ``Retry-After`` header. Successive calls queue up in call order;
        :meth:`reset` clears them.
        """
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._api_failures.append(_Failure(status, count, 0.0, retry_after, None, ""))

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
        """Clear injected failures, the token delay and the body factory (not the counters)."""
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

    def _dispatch(self, req: RecordedRequest) -> _Reply:
        if req.path in (self.TOKEN_PATH, OAUTH_PATH):
            return self._token_endpoint(req)
        with self._lock:
            self._api_log.append(req)
            self._lock.notify_all()
            failure = self._take_failure(self._api_failures)
        if failure is not None:
            return self._injected(failure)
        if req.path == "/test/redirect":
            return self._redirect(req)
        if req.path == "/test/open/echo":
            return self._echo(req)
        if not self._authorized(req):
            return _fail(401, "Unauthorized", **{"WWW-Authenticate": "Bearer"})
        if req.path == "/platform/v2/companies":
            return self._companies(req)
        if req.path == "/test/echo":
            return self._echo(req)
        if req.path.startswith("/test/status/"):
            return self._status(req)
        return _fail(404, "Not found")

    def _token_endpoint(self, req: RecordedRequest) -> _Reply:
        failure = None
        with self._lock:
            self._token_log.append(req)
            if req.method == "POST":
                self._token_count += 1
                failure = self._take_failure(self._failures)
        if req.method != "POST":
            return _fail(405, Allow="POST")
        if failure is not None:
            return self._injected(failure)
        oauth = req.path == OAUTH_PATH
        error = self._check_oauth(req) if oauth else self._check_key(req)
        if error is not None:
            return error
        self._closing.wait(self._token_delay)
        self._token_gate.wait()
        token, ttl = self._issue()
        if oauth:
            payload = {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": _json_number(ttl),
            }
            return _json(200, payload)
        factory = self._body_factory
        if factory is not None:
            return _json(200, factory(token, ttl))
        data = {"accessToken": token, "expiresIn": _json_number(ttl)}
        return _json(200, {"status": "success", "data": data})

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

    def _injected(self, failure: _Failure) -> _Reply:
        self._closing.wait(failure.delay)
        if failure.status == 0:
            return _Reply(0, drop=True)
        if failure.body is None:
            reply = _fail(failure.status)
        else:
            reply = _Reply(failure.status, failure.body, failure.content_type)
        if failure.retry_after is not None:
            reply.headers["Retry-After"] = failure.retry_after
        reply.headers.update(failure.headers)
        reply.reason, reply.trickle = failure.reason, failure.trickle
        return reply

    def _check_key(self, req: RecordedRequest) -> _Reply | None:
        try:
            payload: Any = json.loads(req.body)
        except ValueError:
            return _fail(400, "Bad request")
        key = payload.get("apiKey") if isinstance(payload, dict) else None
        return None if _same(key, self.api_key) else _fail(401, "Invalid API key")

    def _check_oauth(self, req: RecordedRequest) -> _Reply | None:
        form = parse_qs(req.body.decode("latin-1"))
        if form.get("grant_type") != ["client_credentials"]:
            return _json(400, {"error": "unsupported_grant_type"})
        secret = form.get("client_secret", [None])[0]
        secret = secret or _basic_password(req.header("Authorization"))
        return None if _same(secret, self.api_key) else _json(401, {"error": "invalid_client"})

    def _issue(self) -> tuple[str, float]:
        token = "fake-" + secrets.token_urlsafe(24)
        with self._lock:
            ttl = self.ttl
            self._expiry[token] = time.time() + ttl
            self._issued.append(token)
        return token, ttl

    def _authorized(self, req: RecordedRequest) -> bool:
        scheme, _, token = (req.header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        with self._lock:
            expiry = self._expiry.get(token.strip())
        return expiry is not None and expiry > time.time()

    def _companies(self, req: RecordedRequest) -> _Reply:
        if req.method not in ("GET", "HEAD"):
            return _fail(405, Allow="GET")
        page: int | str = req.query.get("page", ["1"])[0]
        with contextlib.suppress(ValueError):
            page = int(page)
        return _json(200, {"status": "success", "data": {"companies": _COMPANIES, "page": page}})

    @staticmethod
    def _echo(req: RecordedRequest) -> _Reply:
        data = {
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "headers": req.headers,
            "body_length": len(req.body),
            "body_sha256": hashlib.sha256(req.body).hexdigest(),
        }
        return _json(200, {"status": "success", "data": data})

    @staticmethod
    def _redirect(req: RecordedRequest) -> _Reply:
        target = req.query.get("to", [""])[0]
        status = req.query.get("status", ["302"])[0]
        if not target or not status.isdigit() or not 300 <= int(status) < 400:
            return _fail(400, "Bad request")
        return _Reply(int(status), headers={"Location": target})

    @staticmethod
    def _status(req: RecordedRequest) -> _Reply:
        code = req.path.rsplit("/", 1)[1]
        if not code.isdigit() or not 200 <= int(code) < 600:
            return _fail(404, "Not found")
        if int(code) == 200:
            reply = _json(200, {"status": "success", "data": {}})
        else:
            reply = _fail(int(code))
        retry_after = req.query.get("Retry-After")
        if retry_after:
            reply.headers["Retry-After"] = retry_after[0]
        return reply


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], fake: FakeOpsNow, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.fake = fake
        self.ssl_context = ssl_context
        self.accepted = 0
        self._conn_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a (possibly slow) reverse DNS lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        if self.ssl_context is None:
            return conn, address
        # The handshake happens on the handler's first read, in its own thread,
        # so one slow client cannot hold up the accept loop.
        conn.settimeout(_HANDSHAKE_TIMEOUT)
        wrapped = self.ssl_context.wrap_socket(
            conn, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name="FakeOpsNow-handler",
            daemon=True,
        )
        with self._conn_lock:
            self.accepted += 1
            self._conns.add(request)
            self._handlers.add(thread)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._handlers.discard(threading.current_thread())

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:  # held while closing: close_connections never sees a reused fd
            self._conns.discard(request)
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def connection_count(self) -> int:
        with self._conn_lock:
            return len(self._conns)

    def drop_connections(self) -> None:
        """Shut down every open client connection, waking handlers blocked on it."""
        with self._conn_lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> None:
        with self._conn_lock:
            threads = list(self._handlers)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._write(_fail(400, "Bad request"))
            return
        url = urlsplit(self.path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        request = RecordedRequest(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query, keep_blank_values=True),
            headers=headers,
            body=body,
            client_host=str(self.client_address[0]),
        )
        reply = self.server.fake._dispatch(request)
        if reply.drop:
            self.close_connection = True
        else:
            self._write(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline(65537).split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(65537).strip():
                raise ValueError("malformed chunked body")
            chunks.append(chunk)
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _write(self, reply: _Reply) -> None:
        body = b"" if reply.status in (204, 304) else reply.body
        if reply.trickle:
            self.wfile = _Trickle(self.wfile, reply.trickle, self.server.fake._closing)
        self.send_response(reply.status, reply.reason)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", reply.content_type)
        if reply.status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Trickle(io.BufferedIOBase):
    """A writer that sends one byte at a time, ``interval`` seconds apart, until closing."""

    def __init__(self, raw: Any, interval: float, closing: threading.Event) -> None:
        super().__init__()
        self._raw = raw
        self._interval = interval
        self._closing = closing

    def write(self, data: Any) -> int:
        data = bytes(data)
        for index in range(len(data)):
            if self._closing.wait(self._interval):
                raise ConnectionAbortedError("the fake server is closing")
            self._raw.write(data[index : index + 1])
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

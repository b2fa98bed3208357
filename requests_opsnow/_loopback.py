"""A small HTTP/1.1 server on loopback, for fakes of remote services.

Tests of an HTTP client need a real server: mocks that replace the transport
cannot show keep-alive, chunked bodies, TLS, proxies, dropped connections or a
server that answers one byte a second. This module is that server and nothing
more. It knows nothing of OpsNow: each request is handed, fully read, to
:meth:`LoopbackServer.answer`, and whatever :class:`Reply` that returns is
written back. :mod:`requests_opsnow.testing` builds ``FakeOpsNow`` on it.

It imports nothing from the package, so it can be read (and reused) on its own.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import socketserver
import ssl
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, TypeVar
from urllib.parse import parse_qs, urlsplit

_HANDSHAKE_TIMEOUT = 10.0
_HANDLER_JOIN_TIMEOUT = 2.0
_THREAD_JOIN_TIMEOUT = 5.0
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
_MAX_LINE = 65537

R = TypeVar("R", bound="Reply")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it, body fully read (chunked ones decoded).

    Frozen, because the same object is kept in a fake's log and handed to its
    handler: what a test asserts on is what arrived, whatever a handler did.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client_host: str

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), or ``None``.

        Repeated headers arrive joined with ``", "``, as HTTP allows.
        """
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


@dataclass
class Reply:
    """What to answer; the server adds ``Content-Length`` and, with a body, ``Content-Type``.

    ``drop`` and ``trickle`` exist to imitate failing servers: ``drop`` closes the
    connection without answering (``status`` is then ignored); ``trickle`` sends
    the answer one byte every ``trickle`` seconds, a server that never trips a
    client's read timeout. ``reason`` replaces the status line's standard phrase.
    """

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    reason: str | None = None
    drop: bool = False
    trickle: float = 0.0

    @classmethod
    def json(
        cls: type[R], status: int, payload: object, headers: dict[str, str] | None = None
    ) -> R:
        """``payload`` as a JSON body."""
        return cls(status, json.dumps(payload).encode(), headers=dict(headers or {}))


def _plain(status: int, text: str) -> Reply:
    return Reply(status, text.encode(), content_type="text/plain; charset=utf-8")


# -- NO_PROXY while a server runs ---------------------------------------------------------


class _Bypasses:
    """Per host: how many servers need the bypass, and the variables it was added to.

    Its lock is rebuilt in a forked child: a thread starting or closing a server
    at the moment of a fork must not leave the child's lock taken for good.
    """

    def __init__(self) -> None:
        self.users: dict[str, tuple[int, list[str]]] = {}
        self.lock = threading.Lock()
        if hasattr(os, "register_at_fork"):  # not on Windows
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()


_bypasses = _Bypasses()


def bypass_proxies(host: str) -> Callable[[], None]:
    """Keep requests to ``host`` off any proxy the environment names, until the returned
    function is called.

    With ``HTTP_PROXY`` (or ``HTTPS_PROXY``, ``ALL_PROXY``) set, requests would
    send even loopback traffic to the proxy, and OpsNowAuth refuses to send a
    token over plain http through one. So while a fake server runs, its host is
    added to ``NO_PROXY`` (and ``no_proxy``); nothing changes when no proxy is set.
    Servers sharing a host share the entry: it goes when the last one releases it.
    """
    names = [*_PROXY_VARIABLES, *(name.upper() for name in _PROXY_VARIABLES)]
    if not any(os.environ.get(name) for name in names):
        return _nothing
    with _bypasses.lock:
        users, added = _bypasses.users.get(host, (0, []))
        if not users:
            added = [name for name in ("no_proxy", "NO_PROXY") if _add_entry(name, host)]
        _bypasses.users[host] = (users + 1, added)
    return lambda: _release_bypass(host)


def _add_entry(name: str, host: str) -> bool:
    entries = _entries(os.environ.get(name, ""))
    if host in entries:
        return False
    os.environ[name] = ",".join([*entries, host])
    return True


def _release_bypass(host: str) -> None:
    with _bypasses.lock:
        users, added = _bypasses.users.pop(host)
        if users > 1:
            _bypasses.users[host] = (users - 1, added)
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


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- the server -------------------------------------------------------------------------------


S = TypeVar("S", bound="LoopbackServer")


class LoopbackServer:
    """An HTTP/1.1 server in a background thread, one thread per connection: a subclass
    answers each request in :meth:`answer`.

    Closing is in two steps, :meth:`stop` then :meth:`join`, so that a subclass can
    release whatever its handlers wait on in between: by then every connection
    is shut, so a released handler cannot answer any more.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "LoopbackServer",
    ) -> None:
        self.closing = threading.Event()
        """Set once the server stops: sleeping handlers wake up (see :meth:`sleep`)."""
        self.ssl_context = ssl_context
        self._address = (host, port)
        self._name = name
        self._state_lock = threading.Lock()
        self._stopped = False
        self._server: _Server | None = None
        self._stopped_server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._proxy_bypass: Callable[[], None] | None = None

    def answer(self, request: RecordedRequest) -> Reply:
        """The reply to ``request``; called in the connection's own thread, so it may block."""
        raise NotImplementedError

    def bad_request(self) -> Reply:
        """The reply to a request that cannot be read (a malformed chunked body, say)."""
        return _plain(400, "Bad request")

    def start(self: S) -> S:
        """Bind and start serving; a no-op if already started."""
        with self._state_lock:
            if self._stopped:
                raise RuntimeError(f"{self._name} cannot be restarted after close()")
            if self._server is not None:
                return self
            server = _Server(self._address, self)
            host, port = server.server_address[:2]
            scheme = "https" if self.ssl_context is not None else "http"
            self._base_url = f"{scheme}://{_url_host(str(host))}:{port}"
            # Plain http only: OpsNowAuth refuses a token in cleartext through a proxy, while
            # an https fake goes through one as any server would (CONNECT), for proxy tests.
            if self.ssl_context is None:
                self._proxy_bypass = bypass_proxies(str(host))
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"{self._name}-server",
                daemon=True,
            )
            self._server = server
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, shut every client connection and wake sleeping handlers. Idempotent."""
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
            server, self._server = self._server, None
            bypass, self._proxy_bypass = self._proxy_bypass, None
        self._stopped_server = server
        if bypass is not None:
            bypass()
        if server is not None:
            server.shutdown()
            server.server_close()
            server.drop_connections()
        self.closing.set()

    def join(self) -> None:
        """Wait (a few seconds at most) for the handler threads and the accept thread to end."""
        if self._stopped_server is not None:
            self._stopped_server.join_handlers(timeout=_HANDLER_JOIN_TIMEOUT)
        if self._thread is not None:
            self._thread.join(timeout=_THREAD_JOIN_TIMEOUT)

    def close(self) -> None:
        """Stop serving, drop every client connection and join the threads. Idempotent."""
        self.stop()
        self.join()

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        """``scheme://host:port``; available once started (and after close)."""
        if self._base_url is None:
            raise RuntimeError(f"{self._name} has not been started")
        return self._base_url

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

    def sleep(self, seconds: float) -> bool:
        """Sleep in a handler, but no longer than the server runs: True if it is closing.

        A handler asleep in a long injected delay must not hold up close().
        """
        return self.closing.wait(seconds)

    def _reply_to(self, request: RecordedRequest) -> Reply:
        # A handler's bug becomes a 500 with its traceback (also on stderr), not a
        # silently dropped connection that looks like a network failure.
        try:
            reply: object = self.answer(request)  # a handler is user code: check it
        except Exception:  # noqa: BLE001 - reported to the client and on stderr
            text = traceback.format_exc()
            print(f"{self._name}: the handler for {request.path} raised:\n{text}", file=sys.stderr)
            return _plain(500, text)
        if not isinstance(reply, Reply):
            return _plain(500, f"the handler returned {type(reply).__name__}, not a Reply")
        return reply


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: LoopbackServer) -> None:
        self.owner = owner
        self.accepted = 0
        self._conn_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a (possibly slow) reverse DNS lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        context = self.owner.ssl_context
        if context is None:
            return conn, address
        # The handshake happens on the handler's first read, in its own thread,
        # so one slow client cannot hold up the accept loop.
        conn.settimeout(_HANDSHAKE_TIMEOUT)
        wrapped = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"{self.owner._name}-handler",
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
        with self._conn_lock:  # held while closing: drop_connections never sees a reused fd
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
        owner = self.server.owner
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._write(owner.bad_request())
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
        reply = owner._reply_to(request)
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
            size = int(self.rfile.readline(_MAX_LINE).split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(_MAX_LINE).strip():
                raise ValueError("malformed chunked body")
            chunks.append(chunk)
        while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _write(self, reply: Reply) -> None:
        body = b"" if reply.status in (204, 304) else reply.body
        if reply.trickle:
            self.wfile = _Trickle(self.wfile, reply.trickle, self.server.owner.closing)
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
                raise ConnectionAbortedError("the server is closing")
            self._raw.write(data[index : index + 1])
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

"""A real HTTP forward proxy on loopback, so tests can see what crosses the wire.

Tests that care whether a secret travels in cleartext through a proxy (plain
``http://``) or only inside a TLS tunnel (``CONNECT`` for ``https://``) need a
proxy that records what it relays. :class:`LoggingProxy` is deliberately small:
one request per client connection, ``Connection: close`` both ways, bodies
relayed in the framing the client chose, and a timeout on every socket
operation so a stalled peer fails a test instead of hanging it::

    with LoggingProxy() as proxy:
        requests.get(url, proxies={"http": proxy.url}, timeout=10)
        assert b"secret" not in proxy.cleartext
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from urllib.parse import urlsplit

__all__ = ["TIMEOUT", "LoggingProxy"]

TIMEOUT = 10.0
_CHUNK = 65536
_MAX_LINE = 65536
_MAX_HEADERS = 100
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)
_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"

Headers = list[tuple[str, str]]


class _BadMessage(Exception):
    """The peer sent something this proxy will not guess its way through."""


def _status(code: int, reason: str) -> bytes:
    return f"HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()


class _Reader:
    """Buffered reads, so bytes that arrive after a header block are relayed, not lost."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def _fill(self) -> bool:
        data = self._sock.recv(_CHUNK)
        self._buffer += data
        return bool(data)

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readline(self) -> bytes:
        """One line including its ``\\n``; shorter only at EOF (``b""`` if nothing came)."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                return self._take(end + 1)
            if len(self._buffer) > _MAX_LINE:
                raise _BadMessage("line too long")
            if not self._fill():
                return self._take(len(self._buffer))

    def read_some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes: what is buffered, else one ``recv``; ``b""`` at EOF."""
        if not self._buffer:
            self._fill()
        return self._take(min(limit, len(self._buffer)))

    def read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise _BadMessage("connection closed mid-message")
        return self._take(size)

    def drain(self) -> bytes:
        """Whatever was read ahead of the parser; it belongs to the next stage of the relay."""
        return self._take(len(self._buffer))


def _read_head(reader: _Reader) -> bytes | None:
    """Start line and header block, raw; ``None`` if the peer closed before sending anything."""
    lines = [reader.readline()]
    if not lines[0]:
        return None
    while lines[-1] not in (b"\r\n", b"\n"):
        if not lines[-1].endswith(b"\n"):
            raise _BadMessage("connection closed mid-header")
        if len(lines) > _MAX_HEADERS:
            raise _BadMessage("too many header lines")
        lines.append(reader.readline())
    return b"".join(lines)


def _parse_head(head: bytes) -> tuple[str, Headers]:
    """The start line and the header fields, in order."""
    start, *fields = head.decode("latin-1").split("\n")[:-2]
    headers: Headers = []
    for field in fields:
        name, colon, value = field.partition(":")
        if not colon or not name or name != name.strip():
            raise _BadMessage(f"malformed header: {field!r}")
        headers.append((name, value.strip()))
    return start.strip(), headers


def _request_line(start: str) -> tuple[str, str]:
    words = start.split(" ")
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise _BadMessage(f"malformed request line: {start!r}")
    return words[0], words[1]


def _header(headers: Headers, name: str) -> str | None:
    return next((v for k, v in reversed(headers) if k.lower() == name), None)


def _end_to_end(headers: Headers) -> Headers:
    """Drop what concerns only the client-proxy hop (and what ``Connection`` names)."""
    named = {token.strip().lower() for token in (_header(headers, "connection") or "").split(",")}
    dropped = _HOP_BY_HOP | named
    return [(k, v) for k, v in headers if k.lower() not in dropped]


def _serialize(start: str, headers: Headers) -> bytes:
    lines = [start, *(f"{k}: {v}" for k, v in headers), "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _split_target(target: str) -> tuple[str, int, str]:
    """Host, port and origin-form path of an absolute ``http://`` request target."""
    try:
        parts = urlsplit(target)
        port = parts.port or 80
    except ValueError as error:
        raise _BadMessage(f"bad target {target!r}") from error
    if parts.scheme != "http" or not parts.hostname:
        raise _BadMessage(f"not an absolute http URL: {target!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, path


def _split_authority(target: str) -> tuple[str, int]:
    host, colon, port = target.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise _BadMessage(f"bad CONNECT target {target!r}")
    return host.strip("[]"), int(port)


class LoggingProxy:
    """A forward proxy that records what it saw; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._closed = False
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._handlers: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._requests: list[tuple[str, str]] = []
        self._cleartext = bytearray()
        self._tunnel_bytes = bytearray()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> LoggingProxy:
        """Bind and serve; binding here (not lazily) means ``url`` is valid on return."""
        if self._closed or self._listener is not None:
            raise RuntimeError("a LoggingProxy starts once")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((self.host, 0))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        listener.settimeout(0.05)  # poll, so close() is noticed without a wake-up trick
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._acceptor = threading.Thread(
            target=self._accept_loop, args=(listener,), name="LoggingProxy-accept", daemon=True
        )
        self._acceptor.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting and cut every connection; bounded, so a test never hangs here."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for sock in self._sockets:
                self._shutdown(sock)
        deadline = time.monotonic() + timeout
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            handlers = list(self._handlers)
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:  # only handlers stuck past the deadline leave sockets behind
            leftovers, self._sockets = self._sockets, set()
        for sock in leftovers:
            sock.close()

    def __enter__(self) -> LoggingProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- observation ---------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("LoggingProxy has not been started")
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        """``(method, target)`` per request: the absolute URL, or ``host:port`` for CONNECT."""
        with self._lock:
            return list(self._requests)

    @property
    def cleartext(self) -> bytes:
        """Every byte clients sent for plain-http forwarding: request lines, headers, bodies."""
        with self._lock:
            return bytes(self._cleartext)

    @property
    def tunnel_bytes(self) -> bytes:
        """Every byte clients sent inside CONNECT tunnels (TLS records, for https)."""
        with self._lock:
            return bytes(self._tunnel_bytes)

    # -- plumbing ------------------------------------------------------------

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        """Wake whichever thread is blocked on ``sock``; that thread still owns the close."""
        with contextlib.suppress(OSError):  # not connected, or already closed by its owner
            sock.shutdown(socket.SHUT_RDWR)

    def _track(self, sock: socket.socket) -> None:
        """Register ``sock`` for close(); refuse it if close() already swept."""
        with self._lock:
            if not self._closed:
                self._sockets.add(sock)
                return
        sock.close()
        raise ConnectionAbortedError("LoggingProxy is closed")

    def _release(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        sock.close()

    def _record(self, buffer: bytearray, data: bytes) -> None:
        with self._lock:
            buffer += data

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(TIMEOUT)
            try:
                self._track(client)
            except ConnectionAbortedError:
                return
            thread = threading.Thread(
                target=self._serve, args=(client,), name="LoggingProxy-client", daemon=True
            )
            with self._lock:
                self._handlers = [t for t in self._handlers if t.is_alive()]
                self._handlers.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        """One client connection, start to finish; a vanished peer is not a test failure."""
        try:
            self._handle(client)
        except OSError:
            pass  # peer went away, timed out, or close() cut the socket
        finally:
            self._release(client)

    def _handle(self, client: socket.socket) -> None:
        reader = _Reader(client)
        try:
            head = _read_head(reader)
            if head is None:
                return
            if not head.startswith(b"CONNECT "):
                self._record(self._cleartext, head)
            start, headers = _parse_head(head)
            method, target = _request_line(start)
            with self._lock:
                self._requests.append((method, target))
            if method == "CONNECT":
                self._tunnel(client, reader, target)
            else:
                self._forward(client, reader, method, target, headers)
        except _BadMessage:
            client.sendall(_status(400, "Bad Request"))

    def _connect(self, client: socket.socket, host: str, port: int) -> socket.socket | None:
        """A tracked upstream socket, or ``None`` after telling the client it failed."""
        try:
            upstream = socket.create_connection((host, port), timeout=TIMEOUT)
        except OSError:
            client.sendall(_status(502, "Bad Gateway"))
            return None
        self._track(upstream)
        return upstream

    # -- plain http ----------------------------------------------------------

    def _forward(
        self, client: socket.socket, reader: _Reader, method: str, target: str, headers: Headers
    ) -> None:
        host, port, path = _split_target(target)
        upstream = self._connect(client, host, port)
        if upstream is None:
            return
        try:
            outgoing = _end_to_end(headers)
            if _header(outgoing, "host") is None:
                outgoing.insert(0, ("Host", urlsplit(target).netloc))
            upstream.sendall(_serialize(f"{method} {path} HTTP/1.1", outgoing))
            self._relay_body(reader, upstream, headers)
            self._relay_response(upstream, client)
        finally:
            self._release(upstream)

    def _relay_body(self, reader: _Reader, upstream: socket.socket, headers: Headers) -> None:
        """Relay the request body in the client's own framing, logging it as cleartext."""
        encoding = (_header(headers, "transfer-encoding") or "").lower()
        if encoding.rsplit(",", 1)[-1].strip() == "chunked":
            self._relay_chunked(reader, upstream)
            return
        length = _header(headers, "content-length") or "0"
        if not length.isdigit():
            raise _BadMessage(f"bad Content-Length {length!r}")
        remaining = int(length)
        while remaining:
            data = reader.read_some(min(remaining, _CHUNK))
            if not data:
                raise _BadMessage("connection closed mid-body")
            self._pass_on(upstream, data)
            remaining -= len(data)

    def _relay_chunked(self, reader: _Reader, upstream: socket.socket) -> None:
        while True:
            line = self._pass_line(reader, upstream)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as error:
                raise _BadMessage(f"bad chunk size line {line!r}") from error
            if size == 0:
                break
            self._pass_on(upstream, reader.read_exactly(size + 2))
        while self._pass_line(reader, upstream).strip():  # trailers, then the empty line
            pass

    def _pass_line(self, reader: _Reader, upstream: socket.socket) -> bytes:
        line = reader.readline()
        if not line.endswith(b"\n"):
            raise _BadMessage("connection closed mid-body")
        self._pass_on(upstream, line)
        return line

    def _pass_on(self, upstream: socket.socket, data: bytes) -> None:
        self._record(self._cleartext, data)
        upstream.sendall(data)

    def _relay_response(self, upstream: socket.socket, client: socket.socket) -> None:
        """Rewrite only the hop-by-hop headers, then stream the rest until upstream closes."""
        reader = _Reader(upstream)
        try:
            head = _read_head(reader)
            if head is None:
                raise _BadMessage("upstream closed without a response")
            start, headers = _parse_head(head)
        except _BadMessage:
            client.sendall(_status(502, "Bad Gateway"))
            return
        client.sendall(_serialize(start, _end_to_end(headers)))
        while True:
            data = reader.read_some(_CHUNK)
            if not data:
                return
            client.sendall(data)

    # -- CONNECT -------------------------------------------------------------

    def _tunnel(self, client: socket.socket, reader: _Reader, target: str) -> None:
        host, port = _split_authority(target)
        upstream = self._connect(client, host, port)
        if upstream is None:
            return
        try:
            client.sendall(_ESTABLISHED)
            early = reader.drain()  # a client that did not wait for the 200
            if early:
                self._record(self._tunnel_bytes, early)
                upstream.sendall(early)
            self._pump(client, upstream)
        finally:
            self._release(upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until one side closes or both stay idle for TIMEOUT."""
        peer = {client: upstream, upstream: client}
        while True:
            readable, _, _ = select.select([client, upstream], [], [], TIMEOUT)
            if not readable:
                return
            for source in readable:
                data = source.recv(_CHUNK)
                if not data:
                    return
                if source is client:
                    self._record(self._tunnel_bytes, data)
                peer[source].sendall(data)

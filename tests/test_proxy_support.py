"""The logging proxy itself: other tests trust what it records, so check it first."""

from __future__ import annotations

import contextlib
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from requests_opsnow.testing import FakeOpsNow

from .proxy_support import LoggingProxy

TIMEOUT = 10.0


@pytest.fixture
def proxy() -> Iterator[LoggingProxy]:
    with LoggingProxy() as running:
        yield running


class _Hello(BaseHTTPRequestHandler):
    server: _TLSServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        body = b"hello over tls"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _TLSServer(ThreadingHTTPServer):
    """Handshakes in the handler thread, so one stalled client cannot block accept()."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Hello)
        self.context = context
        self.paths: list[str] = []

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(TIMEOUT)
        with self.context.wrap_socket(request, server_side=True) as tls:
            super().finish_request(tls, client_address)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_TLSServer, str]]:
    """A TLS origin on loopback and the path of the CA file that vouches for it."""
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    server = _TLSServer(context)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server, str(ca_path)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.timeout(30)
def test_plain_http_post_is_forwarded_and_logged(proxy: LoggingProxy, fake: FakeOpsNow) -> None:
    response = requests.post(
        fake.token_url,
        json={"apiKey": fake.api_key},
        proxies={"http": proxy.url},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    assert response.json()["data"]["accessToken"] in fake.issued_tokens
    assert proxy.requests == [("POST", fake.token_url)]
    assert f"POST {fake.token_url} HTTP/1.1".encode() in proxy.cleartext
    assert fake.api_key.encode() in proxy.cleartext
    assert proxy.tunnel_bytes == b""


@pytest.mark.timeout(30)
def test_plain_http_get_keeps_query_and_drops_hop_by_hop_headers(
    proxy: LoggingProxy, fake: FakeOpsNow
) -> None:
    url = fake.base_url + "/test/open/echo?page=2"
    response = requests.get(
        url,
        headers={"X-Marker": "m-1", "Proxy-Authorization": "Basic c2VjcmV0"},
        proxies={"http": proxy.url},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    echoed = response.json()["data"]
    assert echoed["path"] == "/test/open/echo"
    assert echoed["query"] == {"page": ["2"]}
    seen = {k.lower(): v for k, v in echoed["headers"].items()}
    assert seen["x-marker"] == "m-1"
    assert "proxy-authorization" not in seen
    assert response.headers["Connection"] == "close"
    assert proxy.requests == [("GET", url)]
    assert b"Proxy-Authorization: Basic c2VjcmV0" in proxy.cleartext


@pytest.mark.timeout(30)
def test_chunked_request_body_is_relayed(proxy: LoggingProxy, fake: FakeOpsNow) -> None:
    pieces = [b'{"apiKey": "', fake.api_key.encode(), b'"}']
    response = requests.post(
        fake.token_url,
        data=iter(pieces),
        headers={"Content-Type": "application/json"},
        proxies={"http": proxy.url},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    request = fake.token_request_log[-1]
    assert request.header("Transfer-Encoding") == "chunked"
    assert request.body == b"".join(pieces)
    assert b"Transfer-Encoding: chunked" in proxy.cleartext
    assert fake.api_key.encode() in proxy.cleartext


@pytest.mark.timeout(30)
def test_unreachable_upstream_is_a_502(proxy: LoggingProxy) -> None:
    with socket.socket() as probe:  # a port nobody listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/nowhere"
    response = requests.get(url, proxies={"http": proxy.url}, timeout=TIMEOUT)
    assert response.status_code == 502
    assert proxy.requests == [("GET", url)]


@pytest.mark.timeout(30)
def test_connect_tunnel_carries_only_ciphertext(
    proxy: LoggingProxy, tls_server: tuple[_TLSServer, str]
) -> None:
    server, ca_path = tls_server
    port = server.server_address[1]
    marker = "marker-" + secrets.token_hex(8)
    response = requests.get(
        f"https://127.0.0.1:{port}/{marker}",
        proxies={"https": proxy.url},
        verify=ca_path,
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    assert response.text == "hello over tls"
    assert server.paths == [f"/{marker}"]
    assert proxy.requests == [("CONNECT", f"127.0.0.1:{port}")]
    assert proxy.tunnel_bytes
    assert marker.encode() not in proxy.tunnel_bytes
    assert marker.encode() not in proxy.cleartext


@pytest.mark.timeout(30)
def test_close_does_not_wait_for_a_silent_client() -> None:
    proxy = LoggingProxy().start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as silent:
            silent.sendall(b"GET http://127.0.0.1:1/ HTTP/1.1\r\n")  # and never finishes
            started = time.monotonic()
            proxy.close()
            assert time.monotonic() - started < 2
            # b"" or a reset, depending on whether the proxy had read the line yet
            with contextlib.suppress(ConnectionResetError):
                assert silent.recv(1) == b""
    finally:
        proxy.close()

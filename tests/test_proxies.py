"""Proxies, with a real logging forward proxy on loopback.

On corporate machines and CI, ``HTTP_PROXY`` is often exported with no
``NO_PROXY``. The key and the token must never cross a proxy in cleartext:
plain-http token requests (loopback only) never use one, a plain-http request
the environment would proxy does not get the token, and the fake server's
users (the demo, the fixture, ``opsnow fake-server``) keep working.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests

from requests_opsnow import OpsNowAuth, OpsNowAuthError, OpsNowSession
from requests_opsnow.demo import run_demo
from requests_opsnow.testing import FakeOpsNow

from .helpers import COMPANIES
from .proxy_support import LoggingProxy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def proxy() -> Iterator[LoggingProxy]:
    with LoggingProxy() as running:
        yield running


@pytest.fixture
def proxy_environment(proxy: LoggingProxy, monkeypatch: pytest.MonkeyPatch) -> LoggingProxy:
    """HTTP_PROXY and HTTPS_PROXY exported, and no NO_PROXY: a common corporate setup."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy.url)
    return proxy


def secrets_seen(proxy: LoggingProxy, fake: FakeOpsNow) -> list[str]:
    seen = proxy.cleartext + proxy.tunnel_bytes
    return [s for s in (fake.api_key, *fake.issued_tokens) if s.encode() in seen]


def test_a_plain_http_token_request_never_goes_through_a_proxy(
    fake: FakeOpsNow, proxy_environment: LoggingProxy
) -> None:
    # The fake started before the proxy was exported: nothing added it to NO_PROXY.
    assert "NO_PROXY" not in os.environ
    OpsNowAuth(fake.api_key, base_url=fake.base_url).get_token()
    assert fake.token_requests == 1
    assert proxy_environment.requests == []


def test_a_plain_http_request_the_environment_would_proxy_gets_no_token(
    fake: FakeOpsNow, proxy_environment: LoggingProxy
) -> None:
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    with pytest.raises(OpsNowAuthError, match="NO_PROXY") as caught:
        requests.get(fake.base_url + COMPANIES, auth=auth, timeout=10)
    assert fake.base_url in str(caught.value)
    assert proxy_environment.requests == []  # refused before anything was sent
    assert fake.token_requests == 0  # and no token fetched for it


def test_with_no_proxy_set_the_request_goes_direct_with_its_token(
    fake: FakeOpsNow, proxy_environment: LoggingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    response = requests.get(fake.base_url + COMPANIES, auth=auth, timeout=10)
    assert response.status_code == 200
    assert proxy_environment.requests == []


def test_a_fake_started_with_a_proxy_exported_keeps_itself_off_the_proxy(
    proxy_environment: LoggingProxy,
) -> None:
    with FakeOpsNow() as fake:
        auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
        with requests.Session() as session:
            assert session.get(fake.base_url + COMPANIES, auth=auth, timeout=10).ok
        assert secrets_seen(proxy_environment, fake) == []
    assert proxy_environment.requests == []
    assert "NO_PROXY" not in os.environ  # put back as it was
    assert "no_proxy" not in os.environ


def test_an_existing_no_proxy_is_extended_then_restored(
    proxy_environment: LoggingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "internal.corp")
    with FakeOpsNow() as first, FakeOpsNow() as second:
        assert os.environ["NO_PROXY"] == "internal.corp,127.0.0.1"
        for fake in (first, second):
            OpsNowAuth(fake.api_key, base_url=fake.base_url).get_token()
    assert os.environ["NO_PROXY"] == "internal.corp"


def test_the_demo_works_with_a_proxy_exported(proxy_environment: LoggingProxy) -> None:
    out = io.StringIO()
    assert run_demo(out) == 0, out.getvalue()
    assert proxy_environment.requests == []


@pytest.fixture
def exported_proxy(proxy_environment: LoggingProxy) -> LoggingProxy:
    """Listed before ``opsnow_fake``: the proxy is exported when the fixture starts."""
    return proxy_environment


def test_the_opsnow_fake_fixture_works_with_a_proxy_exported(
    exported_proxy: LoggingProxy, opsnow_fake: FakeOpsNow
) -> None:
    auth = OpsNowAuth(opsnow_fake.api_key, base_url=opsnow_fake.base_url)
    response = requests.get(opsnow_fake.base_url + COMPANIES, auth=auth, timeout=10)
    assert response.status_code == 200
    assert exported_proxy.requests == []


def test_clients_of_opsnow_fake_server_work_with_a_proxy_exported(
    proxy: LoggingProxy,
) -> None:
    proxied = {name: proxy.url for name in ("HTTP_PROXY", "HTTPS_PROXY")}
    environment = {**os.environ, **proxied, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "requests_opsnow", "fake-server"],
        stdout=subprocess.PIPE, text=True, env=environment,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        exports = [server.stdout.readline() for _ in range(4)][1:]
        client = (
            "import requests, requests_opsnow, os;"
            "url = os.environ['OPSNOW_BASE_URL'] + '/platform/v2/companies';"
            "print(requests.get(url, auth=requests_opsnow.OpsNowAuth(), timeout=10).status_code)"
        )
        script = "".join(exports) + f'{sys.executable} -c "{client}"'
        result = subprocess.run(
            ["bash", "-c", script], env=environment, capture_output=True, text=True, timeout=30,
            check=False,
        )  # fmt: skip
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=10)
    assert result.stdout.strip() == "200", result.stderr
    assert proxy.requests == []


def test_proxies_on_an_opsnow_session_carry_its_token_requests_too(
    tls_fake: FakeOpsNow, ca_file: str, proxy: LoggingProxy
) -> None:
    with OpsNowSession(
        tls_fake.api_key,
        base_url=tls_fake.base_url,
        verify=ca_file,
        proxies={"https": proxy.url},
    ) as session:
        assert session.get(COMPANIES).status_code == 200
    target = tls_fake.base_url.removeprefix("https://")
    tunnels = [request for request in proxy.requests if request == ("CONNECT", target)]
    assert len(tunnels) == 2  # one for the token request, one for the API request
    assert tls_fake.token_requests == 1
    assert secrets_seen(proxy, tls_fake) == []  # inside TLS only


def test_an_opsnow_session_never_sends_its_token_through_its_own_plain_http_proxy(
    fake: FakeOpsNow, proxy: LoggingProxy
) -> None:
    with (
        OpsNowSession(fake.api_key, base_url=fake.base_url, proxies={"http": proxy.url}) as session,
        pytest.raises(OpsNowAuthError, match="proxy") as caught,
    ):
        session.get(COMPANIES)
    assert proxy.requests == []
    assert fake.token_requests == 1  # the token request itself went direct
    assert fake.issued_tokens[0].encode() not in pickle.dumps(caught.value)  # nor in the error


def test_a_tls_fake_goes_through_an_exported_https_proxy_as_any_server_would(
    tls_fake: FakeOpsNow, proxy_environment: LoggingProxy, ca_file: str
) -> None:
    # Only a plain-http fake keeps itself off the proxy (a token in cleartext must not
    # cross one); a user's proxy test with a TLS fake must see its CONNECTs.
    auth = OpsNowAuth(tls_fake.api_key, base_url=tls_fake.base_url, verify=ca_file)
    with requests.Session() as session:
        response = session.get(tls_fake.base_url + COMPANIES, auth=auth, verify=ca_file, timeout=10)
    assert response.status_code == 200
    assert [method for method, _ in proxy_environment.requests] == ["CONNECT", "CONNECT"]
    assert secrets_seen(proxy_environment, tls_fake) == []  # tunnelled, never in cleartext
    assert "NO_PROXY" not in os.environ

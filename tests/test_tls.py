"""Token requests follow the caller's TLS settings: a FakeOpsNow with its own CA (trustme).

Corporate networks inspect TLS with their own CA; scripts there pass
``verify=`` or set ``REQUESTS_CA_BUNDLE``. The token request must honour the
same settings as the API requests, and a TLS failure is not retried.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import requests

from requests_opsnow import OpsNowAuth, OpsNowSession, TokenRequestError
from requests_opsnow.testing import FakeOpsNow

from .helpers import COMPANIES, FakeClock

pytestmark = pytest.mark.timeout(30)


def test_the_fake_server_speaks_tls_with_its_own_ca(tls_fake: FakeOpsNow, ca_file: str) -> None:
    assert tls_fake.base_url.startswith("https://127.0.0.1:")
    reply = requests.post(
        tls_fake.token_url, json={"apiKey": tls_fake.api_key}, verify=ca_file, timeout=10
    )
    assert reply.status_code == 200


def test_verify_on_the_auth_is_used_for_token_requests(tls_fake: FakeOpsNow, ca_file: str) -> None:
    auth = OpsNowAuth(tls_fake.api_key, base_url=tls_fake.base_url, verify=ca_file)
    response = requests.get(tls_fake.base_url + COMPANIES, auth=auth, verify=ca_file, timeout=10)
    assert response.status_code == 200
    assert tls_fake.token_requests == 1


def test_verify_set_on_an_opsnow_session_after_construction_reaches_its_token_requests(
    tls_fake: FakeOpsNow, ca_file: str
) -> None:
    with OpsNowSession(tls_fake.api_key, base_url=tls_fake.base_url) as session:
        session.verify = ca_file
        assert session.get(COMPANIES).status_code == 200
    assert tls_fake.token_requests == 1


def test_verify_given_to_an_opsnow_session_covers_api_and_token_requests(
    tls_fake: FakeOpsNow, ca_file: str
) -> None:
    with OpsNowSession(tls_fake.api_key, base_url=tls_fake.base_url, verify=ca_file) as session:
        assert session.get(COMPANIES).status_code == 200
    assert tls_fake.token_requests == 1


def test_requests_ca_bundle_is_honoured_by_token_requests(
    tls_fake: FakeOpsNow, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_file)
    auth = OpsNowAuth(tls_fake.api_key, base_url=tls_fake.base_url)
    response = requests.get(tls_fake.base_url + COMPANIES, auth=auth, timeout=10)
    assert response.status_code == 200
    assert tls_fake.token_requests == 1


def httpx_auth(*args: Any, **options: Any) -> Any:
    from requests_opsnow.httpx import OpsNowAuth as HttpxAuth

    return HttpxAuth(*args, **options)


@pytest.mark.parametrize(
    ("make_auth", "fixes"),
    [
        (OpsNowAuth, ("OpsNowAuth(verify=", "REQUESTS_CA_BUNDLE", "OpsNowSession().verify")),
        (httpx_auth, ("OpsNowAuth(verify=", "requests_opsnow.httpx", "SSL_CERT_FILE")),
    ],
    ids=["requests", "httpx"],
)
def test_without_the_ca_one_attempt_and_an_error_naming_the_fix(
    tls_fake: FakeOpsNow, clock: FakeClock, make_auth: Callable[..., Any], fixes: tuple[str, ...]
) -> None:
    auth = make_auth(tls_fake.api_key, base_url=tls_fake.base_url, max_retries=3)
    with pytest.raises(TokenRequestError) as caught:
        auth.get_token()
    message = str(caught.value)
    assert "certificate verify failed" in message
    for fix in fixes:
        assert fix in message
    assert tls_fake.api_key not in message
    assert tls_fake.accepted_connections == 1  # a TLS failure is not retried
    assert clock.sleeps == []
    assert tls_fake.token_requests == 0  # the key never left the client


def test_a_ca_bundle_that_cannot_be_loaded_is_one_error_naming_the_fix(
    tls_fake: FakeOpsNow, clock: FakeClock, tmp_path: Path
) -> None:
    missing = str(tmp_path / "corp-ca.pem")
    auth = OpsNowAuth(tls_fake.api_key, base_url=tls_fake.base_url, verify=missing)
    with pytest.raises(TokenRequestError) as caught:
        auth.get_token()
    message = str(caught.value)
    assert "the CA bundle or client certificate given cannot be used" in message
    assert "invalid path" in message  # requests' own words
    assert "OpsNowAuth(verify=" in message
    assert clock.sleeps == []  # not retried: a missing file does not appear in a second
    assert tls_fake.accepted_connections == 0


# -- the httpx auth: the same corporate CA, given with httpx's names -------------------------


@pytest.mark.parametrize("given", ["path", "context"])
def test_the_httpx_auth_trusts_a_ca_given_as_a_path_or_a_context(
    tls_fake: FakeOpsNow, ca_file: str, given: str
) -> None:
    from requests_opsnow.httpx import OpsNowAuth as HttpxAuth

    verify = ca_file if given == "path" else ssl.create_default_context(cafile=ca_file)
    auth = HttpxAuth(tls_fake.api_key, base_url=tls_fake.base_url, verify=verify)
    with httpx.Client(auth=auth, verify=ssl.create_default_context(cafile=ca_file)) as client:
        assert client.get(tls_fake.base_url + COMPANIES, timeout=10).status_code == 200
    assert tls_fake.token_requests == 1


def test_the_async_httpx_auth_trusts_a_ca_given_as_a_path(
    tls_fake: FakeOpsNow, ca_file: str
) -> None:
    from requests_opsnow.httpx import OpsNowAuth as HttpxAuth

    auth = HttpxAuth(tls_fake.api_key, base_url=tls_fake.base_url, verify=ca_file)

    async def call() -> int:
        context = ssl.create_default_context(cafile=ca_file)
        async with httpx.AsyncClient(auth=auth, verify=context) as client:
            response = await client.get(tls_fake.base_url + COMPANIES, timeout=10)
            return response.status_code

    assert asyncio.run(call()) == 200
    assert tls_fake.token_requests == 1

"""Shared fixtures: a clean environment, fake servers, auth factory, a movable clock."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
import trustme
from hypothesis import settings

from requests_opsnow import OpsNowAuth, _clock
from requests_opsnow.testing import FakeOpsNow

from .helpers import Cli, FakeClock

pytest_plugins = ["pytester"]  # tests of what users' own test runs see

OTHER_HOST = "127.0.0.2"

# Property tests: thorough by hand, bounded under CI (.ci/run sets CI=true); no deadline,
# because these machines are shared and a slow example is not a failure.
settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile("ci", max_examples=60, deadline=None, print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


@pytest.fixture(autouse=True)
def _clean_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No OPSNOW_* leaks in from the machine; caches and profiles live under temp dirs."""
    for name in (
        "OPSNOW_API_KEY", "OPSNOW_API_KEY_FILE", "OPSNOW_BASE_URL", "OPSNOW_REGION",
        "OPSNOW_PROFILE", "OPSNOW_TOKEN_CACHE", "PYTHON_KEYRING_BACKEND",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    # Never the user's own profiles: an empty config folder of the test's own.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    for name in (
        "REQUESTS_CA_BUNDLE",  # requests prefers it to session.verify: tests set their own
        "CURL_CA_BUNDLE",
        "NO_PROXY",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeOpsNow]:
    with FakeOpsNow() as server:
        yield server


@pytest.fixture
def other_host() -> Iterator[FakeOpsNow]:
    """A second server on another loopback address: the "foreign origin"."""
    with FakeOpsNow(host=OTHER_HOST) as server:
        yield server


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A private CA, as a corporate TLS-inspecting proxy has."""
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "corp-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def tls_fake(ca: trustme.CA) -> Iterator[FakeOpsNow]:
    """FakeOpsNow over https, with a certificate from ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with FakeOpsNow(ssl_context=context) as server:
        yield server


@pytest.fixture
def make_auth(fake: FakeOpsNow) -> Iterator[Callable[..., OpsNowAuth]]:
    """Build OpsNowAuth objects pointed at ``fake``; their sessions are closed after the test."""
    made: list[OpsNowAuth] = []

    def factory(**options: Any) -> OpsNowAuth:
        options.setdefault("base_url", fake.base_url)
        api_key = options.pop("api_key", fake.api_key)
        auth = OpsNowAuth(api_key, **options)
        made.append(auth)
        return auth

    yield factory
    for auth in made:
        auth.close()


@pytest.fixture
def cli(fake: FakeOpsNow, tmp_path: Path) -> Cli:
    return Cli(fake, tmp_path)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake_clock = FakeClock(_clock.now())
    monkeypatch.setattr(_clock, "now", fake_clock.now)
    monkeypatch.setattr(_clock, "sleep", fake_clock.sleep)
    return fake_clock

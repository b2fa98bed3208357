"""The public surface: exports match the README, options are validated clearly."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import requests

import requests_opsnow
from requests_opsnow import (
    GLOBAL_BASE_URL,
    KOREA_BASE_URL,
    InvalidApiKeyError,
    OpsNowAPIError,
    OpsNowAuth,
    OpsNowAuthError,
    TokenRequestError,
    TokenResponseError,
    base_url_for_region,
)
from requests_opsnow.testing import FakeOpsNow

from .helpers import FakeClock

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_exports() -> set[str]:
    block = re.search(r"from requests_opsnow import \(\n(.*?)\)", README.read_text(), re.S)
    assert block, "README has no 'from requests_opsnow import (...)' block"
    return {name.strip() for name in block.group(1).replace("\n", "").split(",") if name.strip()}


def test_all_is_what_the_readme_documents() -> None:
    assert set(requests_opsnow.__all__) == readme_exports()
    for name in requests_opsnow.__all__:
        assert hasattr(requests_opsnow, name)


def test_signature_is_the_specified_one() -> None:
    parameters = inspect.signature(OpsNowAuth).parameters
    assert list(parameters) == [
        "api_key", "base_url", "token_url", "refresh_margin", "timeout",
        "max_retries", "allowed_hosts", "cache", "profile", "session", "verify", "cert",
        "proxies",
    ]  # fmt: skip
    assert parameters["api_key"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(parameters.values())[1:])
    assert issubclass(OpsNowAuth, requests.auth.AuthBase)


@pytest.mark.parametrize(
    "error", [InvalidApiKeyError, TokenRequestError, TokenResponseError, OpsNowAPIError]
)
def test_every_error_is_an_opsnow_and_a_requests_error(error: type[Exception]) -> None:
    assert issubclass(error, OpsNowAuthError)
    assert issubclass(error, requests.RequestException)
    assert issubclass(OpsNowAPIError, requests.HTTPError)


@pytest.mark.parametrize("key", [None, "", "   ", "\n"])
def test_missing_key_is_a_value_error_naming_the_variable(key: str | None) -> None:
    with pytest.raises(ValueError, match="OPSNOW_API_KEY"):
        OpsNowAuth(key)


def test_key_and_base_url_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSNOW_API_KEY", " env-key\n")
    monkeypatch.setenv("OPSNOW_BASE_URL", "https://api.kr.opsnow360.io/")
    auth = OpsNowAuth()
    assert auth.base_url == KOREA_BASE_URL
    assert auth.token_url == KOREA_BASE_URL + "/platform/v2/identity/api-keys/token"
    assert "env-key" not in repr(auth)


def test_defaults_point_at_the_global_region() -> None:
    auth = OpsNowAuth("k")
    assert auth.base_url == GLOBAL_BASE_URL
    assert auth.refresh_margin == 300.0


def test_token_url_can_be_overridden() -> None:
    auth = OpsNowAuth("k", token_url="https://login.opsnow360.io/token")
    assert auth.token_url == "https://login.opsnow360.io/token"
    assert "login.opsnow360.io" in repr(auth)


@pytest.mark.parametrize(("name", "url"), [("kr", KOREA_BASE_URL), ("Global", GLOBAL_BASE_URL)])
def test_regions_by_name(name: str, url: str) -> None:
    assert base_url_for_region(name) == url


def test_unknown_region_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="global, kr, legacy"):
        base_url_for_region("mars")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"refresh_margin": -1}, ValueError, "refresh_margin"),
        ({"refresh_margin": float("nan")}, ValueError, "refresh_margin"),
        ({"refresh_margin": "300"}, TypeError, "refresh_margin"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": (1, -1)}, ValueError, "timeout"),
        ({"timeout": True}, TypeError, "timeout"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": 1.5}, TypeError, "max_retries"),
        ({"base_url": "ftp://api.opsnow360.io"}, ValueError, "base_url"),
        ({"token_url": "http://api.opsnow360.io/t"}, ValueError, "token_url"),
        ({"allowed_hosts": ["https://api.example.com"]}, ValueError, "allowed_hosts"),
    ],
)
def test_bad_options_fail_at_construction_with_a_clear_message(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        OpsNowAuth("secret-key-value", **options)
    assert "secret-key-value" not in str(caught.value)


def test_none_means_the_default(fake: FakeOpsNow, clock: FakeClock) -> None:
    auth = OpsNowAuth(
        fake.api_key, base_url=fake.base_url, refresh_margin=None, timeout=None, max_retries=None
    )
    assert auth.refresh_margin == 300.0
    fake.fail_token_requests(503, count=-1)
    with pytest.raises(TokenRequestError):
        auth.get_token()
    assert fake.token_requests == 4  # the default: 3 retries
    auth.close()


def test_explicit_zero_options_are_honoured() -> None:
    auth = OpsNowAuth("k", refresh_margin=0, max_retries=0)
    assert auth.refresh_margin == 0


def test_submodules_export_only_what_the_package_exports() -> None:
    """Everything public is importable from the package, as the README says; the testing
    helpers (``requests_opsnow.testing`` and its pytest plugin) are their own public modules."""
    import importlib
    import pkgutil

    standalone = {"requests_opsnow.testing", "requests_opsnow.pytest_plugin"}
    readme = README.read_text()
    for info in pkgutil.iter_modules(requests_opsnow.__path__, "requests_opsnow."):
        if info.name == "requests_opsnow.__main__":
            continue  # it runs the command line
        exported = getattr(importlib.import_module(info.name), "__all__", [])
        if info.name in standalone:
            assert all(name in readme for name in exported), info.name
        else:
            assert set(exported) <= set(requests_opsnow.__all__), info.name


@pytest.mark.parametrize("suffix", ["/platform/v2", "/platform/v2/", "/platform"])
def test_a_base_url_holding_the_apis_path_is_refused_naming_the_fix(suffix: str) -> None:
    with pytest.raises(ValueError, match="base_url must be the API's root") as caught:
        OpsNowAuth("key", base_url="https://user:pw@api.opsnow360.io" + suffix)
    assert "https://api.opsnow360.io" in str(caught.value)
    assert "pw" not in str(caught.value)

"""OPSNOW_TOKEN_CACHE: a shared token store for scripts that cannot be changed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import requests

from requests_opsnow import OpsNowAuth
from requests_opsnow.cache import cache_key
from requests_opsnow.testing import FakeOpsNow

from .helpers import COMPANIES, Cli, legacy_scripts_at_once

pytestmark = pytest.mark.timeout(60)


def token_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) if folder.exists() else []


@pytest.fixture
def legacy_environment(fake: FakeOpsNow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSNOW_API_KEY", fake.api_key)
    monkeypatch.setenv("OPSNOW_BASE_URL", fake.base_url)


@pytest.mark.usefixtures("legacy_environment")
def test_file_folder_from_the_environment_holds_the_token(
    fake: FakeOpsNow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSNOW_TOKEN_CACHE", f"file:{tmp_path / 'tokens'}")
    requests.get(fake.base_url + COMPANIES, auth=OpsNowAuth(), timeout=10)
    (stored,) = token_files(tmp_path / "tokens")
    assert stored.stem == cache_key(fake.token_url, fake.api_key)


@pytest.mark.usefixtures("legacy_environment")
def test_file_means_the_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("OPSNOW_TOKEN_CACHE", "file")
    OpsNowAuth().get_token()
    assert len(token_files(tmp_path / "requests-opsnow")) == 1


@pytest.mark.parametrize("value", ["memory", "", "  memory  "])
@pytest.mark.usefixtures("legacy_environment")
def test_memory_writes_nothing(value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("OPSNOW_TOKEN_CACHE", value)
    OpsNowAuth().get_token()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("legacy_environment")
def test_an_explicit_cache_beats_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from requests_opsnow import FileTokenCache

    monkeypatch.setenv("OPSNOW_TOKEN_CACHE", f"file:{tmp_path / 'from-env'}")
    OpsNowAuth(cache=FileTokenCache(tmp_path / "given")).get_token()
    assert token_files(tmp_path / "from-env") == []
    assert len(token_files(tmp_path / "given")) == 1


def test_eight_legacy_processes_sharing_a_file_cache_make_one_token_request(
    fake: FakeOpsNow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    statuses = legacy_scripts_at_once(fake, f"file:{tmp_path}", monkeypatch)
    assert statuses == [200] * 8
    assert fake.token_requests == 1


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("disk", "'disk'"),
        ("file:relative/folder", "absolute"),
        ("memcached://user:s3cret-pass@cache:11211", "memcached://cache:11211"),
        ("redis:/:s3cret-pass@cache:6379", "redis://cache:6379"),  # a typo: no netloc
        ("redis//:s3cret-pass@cache:6379", "'cache:6379'"),
        ("redis", "'redis'"),
    ],
)
def test_a_bad_value_is_a_value_error_naming_the_variable_at_construction(
    value: str, named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSNOW_TOKEN_CACHE", value)
    with pytest.raises(ValueError, match="OPSNOW_TOKEN_CACHE") as caught:
        OpsNowAuth("secret-key-value")
    assert named in str(caught.value)
    assert "s3cret-pass" not in str(caught.value)
    assert "secret-key-value" not in str(caught.value)


def test_a_redis_url_without_redis_installed_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if redis-py were not installed
    monkeypatch.delitem(sys.modules, "requests_opsnow.rediscache", raising=False)
    monkeypatch.setenv("OPSNOW_TOKEN_CACHE", "redis://:s3cret-pass@redis.internal:6380/0")
    with pytest.raises(ImportError) as caught:
        OpsNowAuth("secret-key-value")
    message = str(caught.value)
    assert "requests-opsnow[redis]" in message
    assert "OPSNOW_TOKEN_CACHE" in message
    assert "s3cret-pass" not in message


def test_the_cli_honours_the_variable(cli: Cli, fake: FakeOpsNow, tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    first = cli("token", OPSNOW_TOKEN_CACHE=f"file:{folder}")
    second = cli("token", OPSNOW_TOKEN_CACHE=f"file:{folder}")
    assert first.returncode == second.returncode == 0
    assert len(token_files(folder)) == 1
    assert token_files(cli.cache_home / "requests-opsnow") == []  # not the CLI's default
    assert fake.token_requests == 1

    in_memory = cli("token", OPSNOW_TOKEN_CACHE="memory")
    assert in_memory.returncode == 0
    assert fake.token_requests == 2  # memory: a new process, a new token
    assert token_files(cli.cache_home / "requests-opsnow") == []


def test_the_cli_reports_a_bad_value_as_a_usage_error(cli: Cli) -> None:
    result = cli("token", OPSNOW_TOKEN_CACHE="disk")
    assert result.returncode == 2
    assert "OPSNOW_TOKEN_CACHE" in result.stderr

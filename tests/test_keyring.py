"""Profiles whose key is in the OS keyring, with real keyring backends for tests.

The keyring extra is optional: these tests need it installed (the whole suite
runs with it; .ci/run also runs the profile tests without it).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

keyring = pytest.importorskip("keyring", reason="the keyring extra is not installed")

from keyring.backend import KeyringBackend  # noqa: E402
from keyring.backends import fail  # noqa: E402
from keyring.errors import KeyringError  # noqa: E402

from requests_opsnow import ApiKeyUnavailableError, OpsNowAuth  # noqa: E402
from requests_opsnow import _profiles as profiles  # noqa: E402
from requests_opsnow.testing import FakeOpsNow  # noqa: E402

from .helpers import Cli  # noqa: E402
from .keyring_support import MemoryKeyring  # noqa: E402
from .test_profiles import key_sent, run_configure_in_a_terminal, write_config  # noqa: E402

pytestmark = pytest.mark.timeout(60)

SERVICE = profiles.KEYRING_SERVICE


@pytest.fixture
def config_home() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "opsnow"


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


def test_a_keyring_profile_gives_its_key(
    fake: FakeOpsNow, config_home: Path, memory_keyring: MemoryKeyring
) -> None:
    write_config(config_home, f"[kr]\nbase_url = {fake.base_url}\napi_key_source = keyring\n")
    memory_keyring.set_password(SERVICE, "kr", fake.api_key)
    assert OpsNowAuth(profile="kr").get_token() == fake.issued_tokens[0]
    assert key_sent(fake) == fake.api_key


def test_a_keyring_error_names_the_profile(config_home: Path) -> None:
    class BrokenKeyring(MemoryKeyring):
        def get_password(self, service: str, username: str) -> str | None:
            raise KeyringError("locked")

    write_config(config_home, "[default]\napi_key_source = keyring\n")
    previous = keyring.get_keyring()
    keyring.set_keyring(BrokenKeyring())
    try:
        with pytest.raises(ApiKeyUnavailableError, match="'default': the OS keyring failed"):
            OpsNowAuth()
    finally:
        keyring.set_keyring(previous)


def test_no_keyring_backend_says_so_and_points_at_the_alternatives(config_home: Path) -> None:
    write_config(config_home, "[default]\napi_key_source = keyring\n")
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        with pytest.raises(ApiKeyUnavailableError, match="no OS keyring backend") as caught:
            OpsNowAuth()
    finally:
        keyring.set_keyring(previous)
    assert "api_key_command" in str(caught.value)


@pytest.fixture
def cli_keyring(tmp_path: Path) -> dict[str, str]:
    """Environment for `opsnow` subprocesses: a keyring in a JSON file the test can read."""
    return {
        "PYTHON_KEYRING_BACKEND": "tests.keyring_support.FileKeyring",
        "OPSNOW_TEST_KEYRING": str(tmp_path / "keyring.json"),
        "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"],
    }


def test_configure_in_a_terminal_never_echoes_the_key_nor_writes_it_to_the_config(
    fake: FakeOpsNow, cli: Cli, cli_keyring: dict[str, str], config_home: Path
) -> None:
    environment = {**cli.env, **cli_keyring}
    environment.pop("OPSNOW_API_KEY")
    code, transcript = run_configure_in_a_terminal(
        ["--base-url", fake.base_url, "configure", "--profile", "work"], environment, fake.api_key
    )
    assert code == 0, transcript
    assert fake.api_key not in transcript  # typed without echo, never printed
    assert "profile 'work' saved" in transcript
    assert fake.api_key not in (config_home / "config").read_text()
    stored = json.loads(Path(cli_keyring["OPSNOW_TEST_KEYRING"]).read_text())
    assert stored == [{"service": SERVICE, "user": "work", "password": fake.api_key}]
    assert fake.token_requests == 1  # the key was checked

    token = cli("--profile", "work", "token", **cli_keyring, OPSNOW_API_KEY="")
    assert token.returncode == 0, token.stderr
    assert token.stdout.strip() in fake.issued_tokens


def test_configure_without_a_keyring_backend_says_so_and_writes_nothing(
    fake: FakeOpsNow, cli: Cli, config_home: Path
) -> None:
    result = cli(
        "--base-url", fake.base_url, "configure", "--profile", "x",
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring", OPSNOW_API_KEY="",
        XDG_CONFIG_HOME=os.environ["XDG_CONFIG_HOME"],
    )  # fmt: skip
    assert result.returncode == 2
    assert "no OS keyring backend" in result.stderr
    assert "--api-key-command" in result.stderr
    assert "--insecure-storage" in result.stderr
    assert not config_home.exists()


def test_configure_with_a_keyring_that_refuses_the_key_exits_3_and_saves_no_profile(
    fake: FakeOpsNow, cli: Cli, cli_keyring: dict[str, str], config_home: Path
) -> None:
    environment = {
        **cli.env,
        **cli_keyring,
        "PYTHON_KEYRING_BACKEND": "tests.keyring_support.LockedKeyring",
    }
    environment.pop("OPSNOW_API_KEY")
    code, transcript = run_configure_in_a_terminal(
        ["--base-url", fake.base_url, "configure", "--no-verify"], environment, fake.api_key
    )
    assert code == 3, transcript
    assert "the OS keyring failed" in transcript
    assert fake.api_key not in transcript
    assert not config_home.exists()  # no profile that points at a key that is not there


@pytest.fixture
def use_keyring() -> Iterator[Callable[[KeyringBackend], None]]:
    previous = keyring.get_keyring()
    yield keyring.set_keyring
    keyring.set_keyring(previous)


@pytest.mark.timeout(15)
def test_a_keyring_that_never_answers_is_given_up_on_within_its_bound(
    config_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_keyring: Callable[[KeyringBackend], None],
) -> None:
    answer = threading.Event()

    class LockedForever(MemoryKeyring):  # as a keyring waiting for its unlock prompt
        def get_password(self, service: str, username: str) -> str | None:
            answer.wait(30)
            return None

    monkeypatch.setattr(profiles, "KEYRING_TIMEOUT", 0.5)
    use_keyring(LockedForever())
    write_config(config_home, "[kr]\napi_key_source = keyring\n")
    try:
        with pytest.raises(ApiKeyUnavailableError, match=r"did not answer within 0\.5 s") as caught:
            OpsNowAuth(profile="kr")
        assert "'kr'" in str(caught.value)
        with pytest.raises(ApiKeyUnavailableError):
            OpsNowAuth(profile="kr")  # at once: no second call piles up behind the first
        keyring_threads = [t for t in threading.enumerate() if "keyring" in t.name]
        assert len(keyring_threads) == 1
    finally:
        answer.set()  # the backend's own call ends, and its thread with it
        for thread in threading.enumerate():
            if thread.name == "requests-opsnow-keyring":
                thread.join(5)


def test_any_keyring_backend_error_is_unavailable_without_its_message(
    config_home: Path, use_keyring: Callable[[KeyringBackend], None]
) -> None:
    class Leaky(MemoryKeyring):
        def get_password(self, service: str, username: str) -> str | None:
            raise RuntimeError("backend exploded; secret: hunter2")

    use_keyring(Leaky())
    write_config(config_home, "[default]\napi_key_source = keyring\n")
    with pytest.raises(
        ApiKeyUnavailableError, match=r"the OS keyring failed \(RuntimeError\)"
    ) as caught:
        OpsNowAuth()
    assert "hunter2" not in str(caught.value)
    assert caught.value.__context__ is None
    assert caught.value.__cause__ is None


def test_opsnow_token_with_a_failing_keyring_backend_exits_3_without_its_message(
    cli: Cli, cli_keyring: dict[str, str], config_home: Path
) -> None:
    write_config(config_home, "[default]\napi_key_source = keyring\n")
    leaky = {**cli_keyring, "PYTHON_KEYRING_BACKEND": "tests.keyring_support.LeakyKeyring"}
    result = cli("token", **leaky, OPSNOW_API_KEY="")
    assert result.returncode == 3, result.stderr
    assert "the OS keyring failed (RuntimeError)" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr

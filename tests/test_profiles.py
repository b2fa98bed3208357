"""Profiles and key sources: a real config file, a real keyring backend, real key commands.

``docs/design.md``: "Profiles". The resolution order, case by case: the
argument, the environment, the profile named by ``profile=`` or
``OPSNOW_PROFILE``, the ``[default]`` profile.
"""

from __future__ import annotations

import json
import os
import pty
import select
import sys
import time
from pathlib import Path

import pytest
import requests

from requests_opsnow import (
    ApiKeyUnavailableError,
    FileTokenCache,
    OpsNowAuth,
    OpsNowSession,
)
from requests_opsnow import _profiles as profiles
from requests_opsnow.httpx import OpsNowAuth as HttpxOpsNowAuth
from requests_opsnow.testing import FakeOpsNow, forget_tokens

from .helpers import COMPANIES, Cli

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def config_home() -> Path:
    """The test's own (empty) config folder, as the autouse fixture set XDG_CONFIG_HOME."""
    return Path(os.environ["XDG_CONFIG_HOME"]) / "opsnow"


def write_config(config_home: Path, text: str) -> Path:
    config_home.mkdir(parents=True, exist_ok=True)
    path = config_home / "config"
    path.write_text(text)
    return path


def key_sent(fake: FakeOpsNow) -> str:
    """The key the last token request carried."""
    return str(json.loads(fake.token_request_log[-1].body)["apiKey"])


# -- resolution order ---------------------------------------------------------------------


def write_credentials(config_home: Path, keys: dict[str, str]) -> None:
    """The 0600 plaintext credentials file (what --insecure-storage writes)."""
    config_home.mkdir(parents=True, exist_ok=True)
    path = config_home / "credentials"
    path.write_text("".join(f"[{name}]\napi_key = {key}\n" for name, key in keys.items()))
    path.chmod(0o600)


@pytest.fixture
def two_profiles(fake: FakeOpsNow, config_home: Path) -> FakeOpsNow:
    """[default] and [work], both on the fake server, each with a key of its own."""
    write_config(
        config_home,
        f"[default]\nbase_url = {fake.base_url}\napi_key_source = plaintext\n\n"
        f"[work]\nbase_url = {fake.base_url}\napi_key_source = plaintext\n",
    )
    write_credentials(config_home, {"default": "default-profile-key", "work": "work-profile-key"})
    return fake


def test_the_argument_beats_the_environment_and_the_profile(
    two_profiles: FakeOpsNow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSNOW_API_KEY", "environment-key")
    auth = OpsNowAuth(two_profiles.api_key, profile="work")
    auth.get_token()
    assert key_sent(two_profiles) == two_profiles.api_key
    assert auth.base_url == two_profiles.base_url  # the profile still gives the base URL


def test_the_environment_beats_a_named_profile(
    two_profiles: FakeOpsNow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSNOW_API_KEY", two_profiles.api_key)
    OpsNowAuth(profile="work").get_token()
    assert key_sent(two_profiles) == two_profiles.api_key


def test_profile_argument_beats_opsnow_profile_beats_default(
    two_profiles: FakeOpsNow, monkeypatch: pytest.MonkeyPatch
) -> None:
    for build, expected in [
        (lambda: OpsNowAuth(), "default-profile-key"),
        (lambda: OpsNowAuth(profile="work"), "work-profile-key"),
    ]:
        with pytest.raises(requests.RequestException):  # the fake knows neither key
            build().get_token()
        assert key_sent(two_profiles) == expected
    monkeypatch.setenv("OPSNOW_PROFILE", "work")
    with pytest.raises(requests.RequestException):
        OpsNowAuth().get_token()
    assert key_sent(two_profiles) == "work-profile-key"
    forget_tokens()  # the default key's rejection opened a backoff window: no request in it
    with pytest.raises(requests.RequestException):
        OpsNowAuth(profile="default").get_token()
    assert key_sent(two_profiles) == "default-profile-key"


def test_base_url_argument_beats_environment_beats_profile_region(
    config_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(
        config_home, "[default]\nregion = kr\n[legacy]\nbase_url = https://api.opsnow.io\n"
    )
    assert OpsNowAuth("k").base_url == "https://api.kr.opsnow360.io"
    assert OpsNowAuth("k", profile="legacy").base_url == "https://api.opsnow.io"
    monkeypatch.setenv("OPSNOW_BASE_URL", "https://gateway.corp.example")
    assert OpsNowAuth("k").base_url == "https://gateway.corp.example"
    assert (
        OpsNowAuth("k", base_url="https://api.opsnow360.io").base_url == "https://api.opsnow360.io"
    )


def test_a_named_profile_takes_nothing_from_default(
    fake: FakeOpsNow, config_home: Path, tmp_path: Path
) -> None:
    write_config(
        config_home,
        f"[default]\nregion = kr\ntoken_cache = file:{tmp_path / 'default-tokens'}\n"
        "api_key_source = plaintext\n\n"
        f"[bare]\nbase_url = {fake.base_url}\n",
    )
    write_credentials(config_home, {"default": fake.api_key})
    assert OpsNowAuth("k", profile="bare").base_url == fake.base_url
    with pytest.raises(ValueError, match="profile 'bare' names no key source") as caught:
        OpsNowAuth(profile="bare")  # the default profile's key is not borrowed
    assert "opsnow configure --profile bare" in str(caught.value)
    assert fake.api_key not in str(caught.value)
    OpsNowAuth(fake.api_key, profile="bare").get_token()
    assert not (tmp_path / "default-tokens").exists()  # nor its token cache
    assert OpsNowAuth("k").base_url == "https://api.kr.opsnow360.io"


def test_each_new_auth_reads_the_config_file_as_it_is_now(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(config_home, "[default]\nregion = kr\n")
    assert OpsNowAuth("k").base_url == "https://api.kr.opsnow360.io"
    path.write_text("[default]\nbase_url = https://api.opsnow.io\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a clock with coarse mtimes
    assert OpsNowAuth("k").base_url == "https://api.opsnow.io"
    path.unlink()
    assert OpsNowAuth("k").base_url == "https://api.opsnow360.io"
    monkeypatch.delenv("XDG_CONFIG_HOME")  # then ~/.config/opsnow, wherever HOME is now
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_config(tmp_path / "home" / ".config" / "opsnow", "[default]\nregion = kr\n")
    assert OpsNowAuth("k").base_url == "https://api.kr.opsnow360.io"


def test_without_a_home_folder_there_are_no_profiles_and_naming_one_is_an_error(
    fake: FakeOpsNow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", "not/an/absolute/folder")  # as for a user with no home
    auth = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    assert auth.get_token() == fake.issued_tokens[0]
    with pytest.raises(ValueError, match="no config folder: set XDG_CONFIG_HOME or HOME"):
        OpsNowAuth(fake.api_key, profile="work")


def test_token_cache_argument_beats_environment_beats_profile(
    fake: FakeOpsNow, config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_profile, from_env, given = tmp_path / "profile", tmp_path / "env", tmp_path / "given"
    write_config(config_home, f"[default]\ntoken_cache = file:{from_profile}\n")
    OpsNowAuth(fake.api_key, base_url=fake.base_url).get_token()
    assert list(from_profile.glob("*.json"))
    monkeypatch.setenv("OPSNOW_TOKEN_CACHE", f"file:{from_env}")
    OpsNowAuth(fake.api_key, base_url=fake.base_url, refresh_margin=1).get_token()
    assert list(from_env.glob("*.json"))
    cache = FileTokenCache(given)
    OpsNowAuth(fake.api_key, base_url=fake.base_url, refresh_margin=2, cache=cache).get_token()
    assert list(given.glob("*.json"))


def test_two_profiles_with_different_keys_get_two_tokens_each_from_its_own_key(
    fake: FakeOpsNow, config_home: Path
) -> None:
    with FakeOpsNow() as other:
        write_config(
            config_home,
            f"[a]\nbase_url = {fake.base_url}\napi_key_source = plaintext\n"
            f"[b]\nbase_url = {other.base_url}\napi_key_source = plaintext\n",
        )
        write_credentials(config_home, {"a": fake.api_key, "b": other.api_key})
        with OpsNowSession(profile="a") as first, OpsNowSession(profile="b") as second:
            assert first.get(COMPANIES).ok
            assert second.get(COMPANIES).ok
        assert (fake.token_requests, other.token_requests) == (1, 1)
        assert key_sent(fake) == fake.api_key
        assert key_sent(other) == other.api_key


def test_the_httpx_auth_reads_profiles_too(fake: FakeOpsNow, config_home: Path) -> None:
    write_config(config_home, f"[kr]\nbase_url = {fake.base_url}\napi_key_source = plaintext\n")
    write_credentials(config_home, {"kr": fake.api_key})
    assert HttpxOpsNowAuth(profile="kr").get_token() == fake.issued_tokens[0]


# -- errors --------------------------------------------------------------------------------


def test_nothing_configured_is_a_value_error_naming_the_variable_and_configure() -> None:
    with pytest.raises(ValueError, match="OPSNOW_API_KEY") as caught:
        OpsNowAuth()
    assert "opsnow configure" in str(caught.value)


def test_a_missing_profile_is_a_value_error_naming_it_and_the_fix(config_home: Path) -> None:
    write_config(config_home, "[default]\nregion = kr\n")
    with pytest.raises(ValueError, match="'staging'") as caught:
        OpsNowAuth("key-given-anyway", profile="staging")
    assert "opsnow configure --profile staging" in str(caught.value)
    assert "key-given-anyway" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    ["[default\nregion = kr\n", "region = kr\n", "[a]\n[a]\n"],
    ids=["bracket", "no-section", "duplicate"],
)
def test_an_unreadable_config_is_a_value_error_naming_the_file(
    config_home: Path, text: str
) -> None:
    path = write_config(config_home, text)
    with pytest.raises(ValueError, match="cannot read") as caught:
        OpsNowAuth()
    assert str(path) in str(caught.value)


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "api-key-helper"
    path.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    path.chmod(0o700)
    return str(path)


@pytest.mark.parametrize(
    "more_output",
    ["", "print('url: https://app.opsnow360.io')"],  # as `pass show` prints other fields
    ids=["the-key", "the-key-then-other-lines"],
)
def test_an_api_key_command_s_first_line_is_the_key(
    fake: FakeOpsNow, config_home: Path, tmp_path: Path, more_output: str
) -> None:
    runs = tmp_path / "runs"
    helper = script(
        tmp_path, f"open({str(runs)!r}, 'a').write('run'); print({fake.api_key!r}); {more_output}"
    )
    write_config(
        config_home, f"[default]\nbase_url = {fake.base_url}\napi_key_command = {helper}\n"
    )
    assert OpsNowAuth().get_token() == fake.issued_tokens[0]
    OpsNowAuth().get_token()
    assert runs.read_text() == "run"  # once: the key is remembered for the process


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("sys.stderr.write('oops: SECRET-IN-STDERR'); sys.exit(3)", "exit status 3"),
        ("pass", "printed no key"),
        ("print('SECRET-IN-STDOUT', flush=True); time.sleep(30)", "longer than 0.5 s"),
    ],
    ids=["exit-status", "no-output", "timeout"],
)
def test_a_failing_api_key_command_names_the_profile_and_never_echoes(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, message: str
) -> None:
    monkeypatch.setattr(profiles, "API_KEY_COMMAND_TIMEOUT", 0.5)
    write_config(config_home, f"[ops]\napi_key_command = {script(tmp_path, body)}\n")
    with pytest.raises(ApiKeyUnavailableError, match=message) as caught:
        OpsNowAuth(profile="ops")
    assert "'ops'" in str(caught.value)
    assert "SECRET-IN-STDERR" not in str(caught.value)
    assert caught.value.__context__ is None  # a timeout's exception holds the output so far
    assert caught.value.__cause__ is None


def test_a_plaintext_credentials_file_must_be_private(config_home: Path) -> None:
    write_config(config_home, "[default]\napi_key_source = plaintext\n")
    credentials = config_home / "credentials"
    credentials.write_text("[default]\napi_key = plaintext-key\n")
    credentials.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600") as caught:
        OpsNowAuth()
    assert "plaintext-key" not in str(caught.value)
    credentials.write_text("api_key = plaintext-key\n")  # no section: the parser quotes it
    credentials.chmod(0o600)
    with pytest.raises(ValueError, match="MissingSectionHeaderError at line 1") as caught:
        OpsNowAuth()
    assert "plaintext-key" not in str(caught.value)
    assert caught.value.__context__ is None
    assert caught.value.__cause__ is None
    credentials.write_text("[default]\napi_key = plaintext-key\n")
    credentials.chmod(0o600)
    assert OpsNowAuth(base_url="https://api.opsnow360.io")._api_key == "plaintext-key"


# -- the command line -------------------------------------------------------------------------


def run_configure_in_a_terminal(
    args: list[str], environment: dict[str, str], typed_key: str
) -> tuple[int, str]:
    """Run ``opsnow ... configure`` in a pseudo-terminal and type the key at its prompt."""
    pid, terminal = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(sys.executable, [sys.executable, "-m", "requests_opsnow", *args], environment)
    transcript = b""
    typed = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        transcript += chunk
        if not typed and b"not echoed" in transcript:
            os.write(terminal, typed_key.encode() + b"\r")
            typed = True
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    return os.waitstatus_to_exitcode(status), transcript.decode(errors="replace")


def test_configure_with_a_command_profiles_status_and_logout(
    fake: FakeOpsNow, cli: Cli, config_home: Path, tmp_path: Path
) -> None:
    helper = script(tmp_path, f"print({fake.api_key!r})")
    env = {"OPSNOW_API_KEY": "", "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}
    configured = cli(
        "configure", "--profile", "ops", "--base-url", fake.base_url,
        "--api-key-command", helper, "--token-cache", f"file:{tmp_path / 'tokens'}", **env,
    )  # fmt: skip
    assert configured.returncode == 0, configured.stderr
    listed = cli("profiles", **env)
    assert listed.returncode == 0
    assert "ops" in listed.stdout
    assert helper in listed.stdout
    assert cli("--profile", "ops", "token", **env).returncode == 0
    status = cli("--profile", "ops", "status", **env)
    assert status.returncode == 0, status.stderr
    assert "profile: ops" in status.stdout
    assert "cached token: expires" in status.stdout
    for secret in (fake.api_key, *fake.issued_tokens):
        assert secret not in listed.stdout + status.stdout + configured.stdout
    assert list((tmp_path / "tokens").glob("*.json"))

    logout = cli("logout", "--profile", "ops", **env)
    assert logout.returncode == 0, logout.stderr
    assert not list((tmp_path / "tokens").glob("*.json"))  # its cached token is gone


def test_logout_deletes_a_plaintext_key(fake: FakeOpsNow, cli: Cli, config_home: Path) -> None:
    env = {"OPSNOW_API_KEY": "", "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}
    code, transcript = run_configure_in_a_terminal(
        ["--base-url", fake.base_url, "configure", "--insecure-storage", "--no-verify"],
        {**cli.env, **env},
        fake.api_key,
    )
    assert code == 0, transcript
    credentials = config_home / "credentials"
    assert oct(credentials.stat().st_mode & 0o777) == "0o600"
    assert fake.api_key in credentials.read_text()
    assert cli("logout", **env).returncode == 0
    assert fake.api_key not in credentials.read_text()
    missing = cli("token", **env)
    assert missing.returncode == 3
    assert "opsnow configure" in missing.stderr


def test_a_missing_profile_on_the_command_line_exits_2(cli: Cli) -> None:
    result = cli("--profile", "nope", "token", XDG_CONFIG_HOME=os.environ["XDG_CONFIG_HOME"])
    assert result.returncode == 2
    assert "opsnow configure --profile nope" in result.stderr


def test_a_keyring_profile_without_the_keyring_library_names_the_extra(
    config_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "keyring", None)  # as without the keyring extra
    write_config(config_home, "[default]\napi_key_source = keyring\n")
    with pytest.raises(ApiKeyUnavailableError, match=r"requests-opsnow\[keyring\]"):
        OpsNowAuth()


def test_configure_without_the_keyring_library_points_at_the_alternatives(
    fake: FakeOpsNow, cli: Cli, config_home: Path, tmp_path: Path
) -> None:
    # A keyring package that cannot be imported, first on the path: as if not installed.
    (tmp_path / "shadow" / "keyring").mkdir(parents=True)
    (tmp_path / "shadow" / "keyring" / "__init__.py").write_text("raise ImportError('absent')")
    result = cli(
        "--base-url", fake.base_url, "configure",
        PYTHONPATH=os.pathsep.join([str(tmp_path / "shadow"), cli.env["PYTHONPATH"]]),
        OPSNOW_API_KEY="", XDG_CONFIG_HOME=os.environ["XDG_CONFIG_HOME"],
    )  # fmt: skip
    assert result.returncode == 2
    assert "requests-opsnow[keyring]" in result.stderr
    assert "--api-key-command" in result.stderr
    assert "--insecure-storage" in result.stderr
    assert not config_home.exists()


def test_configure_with_a_refused_key_exits_3_and_saves_nothing(
    fake: FakeOpsNow, cli: Cli, config_home: Path
) -> None:
    env = {"OPSNOW_API_KEY": "", "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}
    code, transcript = run_configure_in_a_terminal(
        ["--base-url", fake.base_url, "configure", "--insecure-storage"],
        {**cli.env, **env},
        "wrong-key-that-stays-secret",
    )
    assert code == 3, transcript
    assert "rejected" in transcript
    assert "wrong-key-that-stays-secret" not in transcript
    assert not config_home.exists()


def test_profiles_and_status_never_show_a_password_in_a_url(cli: Cli, config_home: Path) -> None:
    write_config(
        config_home,
        "[default]\nbase_url = https://deploy:b4se-secret@127.0.0.1:9/api?sig=s1gned\n"
        "token_cache = redis://:r3dis-secret@127.0.0.1:9/0\n",
    )
    env = {"XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"], "OPSNOW_BASE_URL": ""}
    listed, status = cli("profiles", **env), cli("status", **env)
    assert listed.returncode == status.returncode == 0, listed.stderr + status.stderr
    assert "https://127.0.0.1:9/api" in listed.stdout
    assert "redis://127.0.0.1:9/0" in listed.stdout
    assert "https://127.0.0.1:9/api" in status.stdout
    shown = listed.stdout + listed.stderr + status.stdout + status.stderr
    for secret in ("b4se-secret", "r3dis-secret", "s1gned"):
        assert secret not in shown


@pytest.mark.parametrize(
    ("source_before", "command", "environment"),
    [
        (
            "plaintext",
            ["configure", "--profile", "p", "--api-key-command", "HELPER", "--no-verify"],
            {},
        ),
        ("command", ["logout", "--profile", "p"], {}),
        ("command", ["logout"], {"OPSNOW_PROFILE": "p"}),
    ],
    ids=["configure-to-a-command", "logout", "logout-of-opsnow-profile"],
)
def test_a_plaintext_key_does_not_outlive_its_profile(
    fake: FakeOpsNow,
    cli: Cli,
    config_home: Path,
    tmp_path: Path,
    source_before: str,
    command: list[str],
    environment: dict[str, str],
) -> None:
    helper = script(tmp_path, f"print({fake.api_key!r})")
    write_config(
        config_home,
        f"[p]\nbase_url = {fake.base_url}\napi_key_source = {source_before}\n"
        f"api_key_command = {helper}\n[other]\napi_key_source = plaintext\n",
    )
    write_credentials(config_home, {"p": "old-plaintext-key", "other": "other-profile-key"})
    env = {"OPSNOW_API_KEY": "", "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}
    argv = [helper if part == "HELPER" else part for part in command]
    result = cli("--base-url", fake.base_url, *argv, **env, **environment)
    assert result.returncode == 0, result.stderr
    credentials = (config_home / "credentials").read_text()
    assert "old-plaintext-key" not in credentials
    assert "other-profile-key" in credentials


def test_status_on_a_fresh_machine_shows_what_it_knows_and_the_fix(cli: Cli) -> None:
    status = cli("status", OPSNOW_API_KEY="", OPSNOW_BASE_URL="")
    assert status.returncode == 3
    assert "profile: (none)" in status.stdout
    assert "base URL: https://api.opsnow360.io" in status.stdout
    assert "region: global" in status.stdout
    assert "key: not configured" in status.stdout
    assert "to fix: opsnow configure" in status.stdout
    line = status.stderr.strip()
    assert line.startswith("opsnow: error: no OpsNow API key")
    assert "OPSNOW_API_KEY" in line
    assert "opsnow configure" in line
    assert "api_key=" not in status.stdout + status.stderr  # no Python advice on the command line


def test_status_after_logout_says_where_the_key_would_be_and_how_to_store_it(
    fake: FakeOpsNow, cli: Cli, config_home: Path
) -> None:
    write_config(config_home, "[kr]\nregion = kr\napi_key_source = plaintext\n")
    write_credentials(config_home, {"kr": fake.api_key})
    env = {
        "OPSNOW_API_KEY": "",
        "OPSNOW_BASE_URL": "",
        "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"],
    }
    assert cli("--profile", "kr", "logout", **env).returncode == 0
    status = cli("--profile", "kr", "status", **env)
    assert status.returncode == 3
    assert "profile: kr" in status.stdout
    assert "region: kr" in status.stdout
    assert f"key: in {config_home / 'credentials'}" in status.stdout
    assert "no api_key for it" in status.stdout
    assert "to fix: opsnow configure --profile kr --insecure-storage" in status.stdout
    assert "api_key=" not in status.stdout + status.stderr
    assert fake.api_key not in status.stdout + status.stderr

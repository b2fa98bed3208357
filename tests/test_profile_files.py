"""The config and credentials files as outside data: who may write them, what they may be.

``docs/design.md``: "Profiles" (trust rules and limits). Tests that need a
second user run as root (as CI does) and hand files to uid 65534.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest

from requests_opsnow import OpsNowAuth
from requests_opsnow._userfiles import MAX_CONFIG_SIZE
from requests_opsnow.testing import FakeOpsNow

from .helpers import Cli
from .test_profiles import script, write_config, write_credentials

pytestmark = pytest.mark.timeout(60)

OTHER_UID = 65534
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown"
)


@pytest.fixture
def config_home() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "opsnow"


def finishes_within(
    seconds: float, action: Callable[[], object], unblock: Callable[[], None]
) -> object:
    """What ``action`` returned or raised, run in a thread; fails if it is still running after
    ``seconds`` (then ``unblock`` lets it end)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(action())
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    hung = worker.is_alive()
    if hung:
        unblock()
        worker.join(5)
    assert not hung, "blocked"
    return outcome[0]


# -- who may write them -----------------------------------------------------------------------


@pytest.fixture
def command_profile(fake: FakeOpsNow, config_home: Path, tmp_path: Path) -> Path:
    """A [default] profile whose key command leaves a mark when it runs; the mark's path."""
    ran = tmp_path / "the-command-ran"
    helper = script(tmp_path, f"open({str(ran)!r}, 'w').write('ran'); print({fake.api_key!r})")
    write_config(
        config_home, f"[default]\nbase_url = {fake.base_url}\napi_key_command = {helper}\n"
    )
    return ran


@pytest.mark.parametrize(
    ("what", "change", "fix"),
    [
        ("config", lambda path: path.chmod(0o666), "chmod go-w"),
        ("config", lambda path: path.chmod(0o620), "chmod go-w"),
        ("folder", lambda path: path.chmod(0o777), "chmod go-w"),
        pytest.param(
            "config", lambda path: os.chown(path, OTHER_UID, -1), "chown", marks=needs_root
        ),
        pytest.param(
            "folder", lambda path: os.chown(path, OTHER_UID, -1), "chown", marks=needs_root
        ),
    ],
    ids=["config-0666", "config-group-writable", "folder-0777", "config-owner", "folder-owner"],
)
def test_a_config_another_user_could_write_is_refused_before_its_command_runs(
    fake: FakeOpsNow,
    config_home: Path,
    command_profile: Path,
    what: str,
    change: Callable[[Path], None],
    fix: str,
) -> None:
    refused = config_home / "config" if what == "config" else config_home
    change(refused)
    with pytest.raises(ValueError, match=fix) as caught:
        OpsNowAuth()
    assert str(refused) in str(caught.value)
    assert not command_profile.exists()  # the command never ran
    assert fake.token_requests == 0  # and its base_url was never used
    assert fake.api_key not in str(caught.value)


@needs_root
def test_a_config_linked_to_another_user_s_file_is_refused(
    fake: FakeOpsNow, config_home: Path, command_profile: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "theirs"
    (config_home / "config").rename(elsewhere)
    os.chown(elsewhere, OTHER_UID, -1)
    (config_home / "config").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="chown"):
        OpsNowAuth()
    assert not command_profile.exists()


def test_a_config_of_the_user_s_own_is_used(fake: FakeOpsNow, command_profile: Path) -> None:
    assert OpsNowAuth().get_token() == fake.issued_tokens[0]
    assert command_profile.exists()


@needs_root
def test_a_credentials_file_of_another_user_is_refused(config_home: Path) -> None:
    write_config(config_home, "[default]\napi_key_source = plaintext\n")
    write_credentials(config_home, {"default": "planted-key"})
    os.chown(config_home / "credentials", OTHER_UID, -1)
    with pytest.raises(ValueError, match="chown") as caught:
        OpsNowAuth(base_url="https://api.opsnow360.io")
    assert str(config_home / "credentials") in str(caught.value)
    assert "planted-key" not in str(caught.value)


# -- what they may be --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["config", "credentials"])
def test_a_fifo_in_place_of_a_profile_file_is_refused_not_waited_on(
    config_home: Path, name: str
) -> None:
    write_config(config_home, "[default]\napi_key_source = plaintext\n")
    fifo = config_home / name
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo, 0o600)

    def unblock() -> None:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    outcome = finishes_within(5, lambda: OpsNowAuth(base_url="https://api.opsnow360.io"), unblock)
    assert isinstance(outcome, ValueError)
    assert f"cannot read {fifo}: not a regular file" in str(outcome)


def test_a_config_larger_than_the_limit_is_refused(config_home: Path) -> None:
    path = write_config(config_home, "[default]\nregion = kr\n" + "# padding\n" * MAX_CONFIG_SIZE)
    with pytest.raises(ValueError, match=f"larger than {MAX_CONFIG_SIZE} bytes") as caught:
        OpsNowAuth("k")
    assert str(path) in str(caught.value)


# -- concurrent and careless writers -------------------------------------------------------------


def test_concurrent_configures_lose_no_profile_and_no_key(
    fake: FakeOpsNow, cli: Cli, config_home: Path
) -> None:
    environment = {**cli.env, "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}
    environment.pop("OPSNOW_API_KEY")
    argv = [sys.executable, "-m", "requests_opsnow", "--base-url", fake.base_url, "configure"]
    runs = [
        subprocess.Popen(
            [*argv, "--profile", f"p{n}", "--insecure-storage", "--no-verify"],
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # no terminal: the key is read from stdin
        )
        for n in range(8)
    ]
    for run in runs:  # every one at its prompt; then all answer at once
        assert run.stderr is not None
        prompt = ""
        while not prompt.endswith("(not echoed): "):
            prompt += run.stderr.read(1) or pytest.fail(f"no prompt: {prompt}")
    for n, run in enumerate(runs):
        assert run.stdin is not None
        run.stdin.write(f"key-of-p{n}\n")
        run.stdin.flush()
    outcomes = [run.communicate(timeout=30) for run in runs]
    assert [run.returncode for run in runs] == [0] * 8, outcomes
    assert all("saved" in out for out, _ in outcomes)
    config, credentials = configparser.ConfigParser(), configparser.ConfigParser()
    config.read(config_home / "config")
    credentials.read(config_home / "credentials")
    assert sorted(config.sections()) == [f"p{n}" for n in range(8)]
    assert {name: credentials[name]["api_key"] for name in credentials.sections()} == {
        f"p{n}": f"key-of-p{n}" for n in range(8)
    }


def test_configure_writes_through_a_dotfile_manager_s_link(
    fake: FakeOpsNow, cli: Cli, config_home: Path, tmp_path: Path
) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    kept = dotfiles / "opsnow-config"
    kept.write_text("[old]\nregion = kr\n")
    config_home.mkdir(parents=True)
    (config_home / "config").symlink_to(kept)
    helper = script(tmp_path, f"print({fake.api_key!r})")
    result = cli(
        "--base-url", fake.base_url, "configure", "--profile", "new", "--api-key-command", helper,
        "--no-verify", XDG_CONFIG_HOME=os.environ["XDG_CONFIG_HOME"], OPSNOW_API_KEY="",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert os.readlink(config_home / "config") == str(kept)  # still the manager's link
    saved = configparser.ConfigParser()
    saved.read(kept)
    assert saved.sections() == ["old", "new"]
    assert [p.name for p in dotfiles.iterdir()] == ["opsnow-config"]  # no temporary left


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"--profile": "a\nb"}, "profile name"),
        ({"--profile": "a\rb"}, "profile name"),
        ({"--profile": " padded"}, "profile name"),
        ({"--token-cache": "rdis://:pw@typo"}, "token_cache must be memory, file"),
        ({"--base-url": "http://api.example.com"}, "base_url must be an https:// URL"),
        ({"--api-key-command": "pass show opsnow\nrm -rf ~"}, "control character"),
        ({"--api-key-command": "pass show 'opsnow"}, "api_key_command cannot be split"),
    ],
    ids=["lf-name", "cr-name", "padded-name", "token-cache", "http", "newline-command", "quote"],
)
def test_configure_refuses_what_the_library_would_not_read_and_saves_nothing(
    fake: FakeOpsNow,
    cli: Cli,
    config_home: Path,
    tmp_path: Path,
    options: dict[str, str],
    message: str,
) -> None:
    settings = {
        "--profile": "p",
        "--base-url": fake.base_url,
        "--api-key-command": script(tmp_path, f"print({fake.api_key!r})"),
        **options,
    }
    base_url = settings.pop("--base-url")
    argv = [part for option in settings.items() for part in option]
    result = cli(
        "--base-url", base_url, "configure", *argv, "--no-verify",
        XDG_CONFIG_HOME=os.environ["XDG_CONFIG_HOME"], OPSNOW_API_KEY="",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "pw@" not in result.stderr
    assert not (config_home / "config").exists()


def test_a_profile_named_like_the_parser_s_own_defaults_is_an_ordinary_profile(
    fake: FakeOpsNow, cli: Cli, config_home: Path, tmp_path: Path
) -> None:
    write_config(config_home, "[default]\nregion = kr\n")
    env = {"XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"], "OPSNOW_API_KEY": ""}
    helper = script(tmp_path, "print('their-key')")
    saved = cli(
        "--base-url", "https://attacker.example", "configure", "--profile", "__none__",
        "--api-key-command", helper, "--no-verify", **env,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    assert OpsNowAuth("k").base_url == "https://api.kr.opsnow360.io"  # [default] keeps its own
    listed = cli("profiles", **env)
    assert "__none__: https://attacker.example" in listed.stdout

"""Key sources that misbehave: a helper command's output, its children, its time; the key itself.

``docs/design.md``: "Profiles" (the limits). Real helper scripts, run as
``api_key_command``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from requests_opsnow import ApiKeyUnavailableError, OpsNowAuth
from requests_opsnow import _profiles as profiles
from requests_opsnow._token import MAX_TOKEN_LENGTH
from requests_opsnow.testing import FakeOpsNow

from .helpers import FakeClock, run_together
from .test_profiles import script, write_config, write_credentials

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def config_home() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "opsnow"


def command_profile(
    config_home: Path, helper: str, base_url: str = "https://api.opsnow360.io"
) -> None:
    write_config(config_home, f"[default]\nbase_url = {base_url}\napi_key_command = {helper}\n")


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie nobody reaped has ended too)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def ends_soon(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_endless_output_is_cut_at_the_limit_and_the_helper_stopped(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profiles, "API_KEY_COMMAND_TIMEOUT", 3.0)
    pid_file = tmp_path / "pid"
    helper = script(
        tmp_path,
        f"import os; open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "while True: sys.stdout.write('y' * 65536 + '\\n')",  # as `yes` does
    )
    command_profile(config_home, helper)
    with pytest.raises(ApiKeyUnavailableError) as caught:
        OpsNowAuth()
    message = str(caught.value)
    assert f"printed more than {profiles.MAX_KEY_COMMAND_OUTPUT} bytes" in message
    assert "'default'" in message
    assert "yyy" not in message
    assert ends_soon(int(pid_file.read_text()))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("helper_kind", ["ignores-sigterm", "wrapper-with-a-child"])
def test_a_helper_that_takes_too_long_is_stopped_with_its_children(
    config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper_kind: str
) -> None:
    monkeypatch.setattr(profiles, "API_KEY_COMMAND_TIMEOUT", 0.5)
    pids = tmp_path / "pids"
    helper = tmp_path / "slow-helper"
    helper.write_text(
        "#!/bin/sh\n"
        + ("trap '' TERM\n" if helper_kind == "ignores-sigterm" else "")
        + f"sleep 300 &\necho $$ $! > {pids}\nwait\n"
    )
    helper.chmod(0o700)
    command_profile(config_home, str(helper))
    with pytest.raises(ApiKeyUnavailableError, match=r"longer than 0\.5 s"):
        OpsNowAuth()
    shell, child = map(int, pids.read_text().split())
    assert ends_soon(shell)
    assert ends_soon(child)  # no orphan left per attempt


def test_a_helper_whose_child_keeps_its_output_open_is_done_when_it_exits(
    fake: FakeOpsNow, config_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profiles, "API_KEY_COMMAND_TIMEOUT", 5.0)
    pid_file = tmp_path / "pid"
    helper = script(
        tmp_path,
        "import subprocess\n"
        f"print({fake.api_key!r}, flush=True)\n"
        "child = subprocess.Popen(['sleep', '30'])  # inherits stdout, as an agent might\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))",
    )
    command_profile(config_home, helper, fake.base_url)
    started = time.monotonic()
    try:
        auth = OpsNowAuth()
        assert time.monotonic() - started < 4  # not the 5 s timeout: done when it exited
        assert auth.get_token() == fake.issued_tokens[0]
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), 9)


@pytest.mark.parametrize(
    "length", [MAX_TOKEN_LENGTH + 1, 10_000_000], ids=["one-too-long", "ten-megabytes"]
)
def test_an_absurdly_long_key_from_a_command_is_refused(
    config_home: Path, tmp_path: Path, length: int
) -> None:
    helper = script(tmp_path, f"sys.stdout.write('k' * {length} + '\\n')")
    command_profile(config_home, helper)
    with pytest.raises(ApiKeyUnavailableError, match="'default'") as caught:
        OpsNowAuth()
    assert "k" * 100 not in str(caught.value)
    assert str(MAX_TOKEN_LENGTH) in str(caught.value) or str(
        profiles.MAX_KEY_COMMAND_OUTPUT
    ) in str(caught.value)


def test_an_absurdly_long_plaintext_key_is_refused(config_home: Path) -> None:
    write_config(config_home, "[default]\napi_key_source = plaintext\n")
    write_credentials(config_home, {"default": "k" * (MAX_TOKEN_LENGTH + 1)})
    with pytest.raises(ApiKeyUnavailableError, match=f"at most {MAX_TOKEN_LENGTH}") as caught:
        OpsNowAuth(base_url="https://api.opsnow360.io")
    assert "k" * 100 not in str(caught.value)


def test_the_longest_key_is_accepted(fake: FakeOpsNow, config_home: Path, tmp_path: Path) -> None:
    longest = "k" * MAX_TOKEN_LENGTH
    command_profile(config_home, script(tmp_path, f"print({longest!r})"), fake.base_url)
    assert OpsNowAuth()._api_key == longest


# -- once per process ---------------------------------------------------------------------------


def counting_helper(tmp_path: Path, body: str) -> tuple[str, Path]:
    """A helper that notes each run in a file, then runs ``body``; and that file."""
    runs = tmp_path / "runs"
    helper = script(tmp_path, f"open({str(runs)!r}, 'a').write('.')\n{body}")
    return helper, runs


def test_threads_building_their_first_auth_at_once_run_the_command_once(
    fake: FakeOpsNow, config_home: Path, tmp_path: Path
) -> None:
    helper, runs = counting_helper(tmp_path, f"time.sleep(0.3); print({fake.api_key!r})")
    command_profile(config_home, helper, fake.base_url)
    auths = run_together(16, OpsNowAuth)
    assert {auth._api_key for auth in auths} == {fake.api_key}
    assert runs.read_text() == "."


def test_a_failing_command_is_not_run_again_until_its_failure_is_forgotten(
    config_home: Path, tmp_path: Path, clock: FakeClock
) -> None:
    helper, runs = counting_helper(tmp_path, "time.sleep(0.2); sys.exit(4)")
    command_profile(config_home, helper)

    def error_of_a_build() -> ApiKeyUnavailableError:
        with pytest.raises(ApiKeyUnavailableError) as caught:
            OpsNowAuth()
        return caught.value

    errors = run_together(8, error_of_a_build)  # at once
    errors += [error_of_a_build() for _ in range(5)]  # then one after the other
    assert runs.read_text() == "."  # once, for 13 builds
    remembered = f"does not ask again for {profiles.KEY_SOURCE_RETRY_AFTER:g} s"
    assert all("exit status 4" in str(error) for error in errors)
    assert sum(remembered in str(error) for error in errors) == 12  # all but the first
    assert len({id(error) for error in errors}) == len(errors)  # each caller its own

    clock.advance(profiles.KEY_SOURCE_RETRY_AFTER)
    with pytest.raises(ApiKeyUnavailableError):
        OpsNowAuth()
    assert runs.read_text() == ".."

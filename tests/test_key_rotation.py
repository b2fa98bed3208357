"""A new key without a restart (issue 19, item 2): a rejected key is read again from its
source once, and a different key is used at once; ``OPSNOW_API_KEY_FILE`` is read again
when it changes. ``docs/design.md``: "A new key without a restart"."""

from __future__ import annotations

import json
import logging
import os
import pickle
from functools import partial
from pathlib import Path
from typing import Callable

import httpx
import pytest
import requests

from requests_opsnow import ApiKeyUnavailableError, InvalidApiKeyError, OpsNowAuth
from requests_opsnow import _profiles as profiles
from requests_opsnow.httpx import OpsNowAuth as HttpxOpsNowAuth
from requests_opsnow.testing import FakeOpsNow

from .helpers import FakeClock, run_together
from .test_profiles import script, write_config

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 10


def keys_sent(fake: FakeOpsNow) -> list[str]:
    """The key each token request carried, in order."""
    return [str(json.loads(request.body)["apiKey"]) for request in fake.token_request_log]


def companies(fake: FakeOpsNow) -> str:
    return fake.base_url + "/platform/v2/companies"


def rotate(fake: FakeOpsNow, new_key: str) -> str:
    """What an operator does: OpsNow now accepts only the new key, and every token of the
    old one is revoked."""
    old, fake.api_key = fake.api_key, new_key
    fake.revoke_tokens()
    return old


@pytest.fixture
def key_file(fake: FakeOpsNow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A mounted secret holding the fake's key, named by OPSNOW_API_KEY_FILE."""
    path = tmp_path / "secret" / "opsnow-api-key"
    path.parent.mkdir()
    path.write_text(fake.api_key + "\n")
    monkeypatch.setenv("OPSNOW_API_KEY_FILE", str(path))
    return path


def call_after_a_rotation(
    fake: FakeOpsNow,
    auth: OpsNowAuth,
    put_in_source: Callable[[str], object],
    caplog: pytest.LogCaptureFixture,
) -> tuple[str, int]:
    """A call, then a rotation (the new key put in the auth's source), then a call: the
    old key, and the status of the call after the rotation. Neither key is logged."""
    with requests.Session() as session:
        assert session.get(companies(fake), auth=auth, timeout=TIMEOUT).status_code == 200
        old = rotate(fake, "the-new-key")
        put_in_source("the-new-key")
        with caplog.at_level(logging.WARNING, logger="requests_opsnow"):
            status = session.get(companies(fake), auth=auth, timeout=TIMEOUT).status_code
    assert "the-new-key" not in caplog.text
    assert old not in caplog.text
    return old, status


def replace_secret(path: Path, key: str) -> None:
    """As the kubelet does: the new file written beside, then renamed over the old."""
    new = path.with_name(".new")
    new.write_text(key + "\n")
    os.replace(new, path)


# -- OPSNOW_API_KEY_FILE ----------------------------------------------------------------


def test_the_key_file_s_first_line_is_the_key(fake: FakeOpsNow, key_file: Path) -> None:
    key_file.write_text(f"  {fake.api_key}  \nrotated: 2026-12-01\n")
    response = requests.get(
        companies(fake), auth=OpsNowAuth(base_url=fake.base_url), timeout=TIMEOUT
    )
    assert response.status_code == 200
    assert keys_sent(fake) == [fake.api_key]


def test_opsnow_api_key_wins_over_the_key_file(
    fake: FakeOpsNow, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file.write_text("not-the-key\n")
    monkeypatch.setenv("OPSNOW_API_KEY", fake.api_key)
    OpsNowAuth(base_url=fake.base_url).get_token()
    assert keys_sent(fake) == [fake.api_key]


def test_a_rotated_key_file_is_used_by_a_running_auth_without_a_failed_call(
    fake: FakeOpsNow, key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = OpsNowAuth(base_url=fake.base_url)
    old, status = call_after_a_rotation(fake, auth, partial(replace_secret, key_file), caplog)
    assert status == 200  # the 401 was answered by a token of the new key
    assert keys_sent(fake) == [old, "the-new-key"]  # the old key was not tried again
    assert "the key file changed" in caplog.text


def test_a_key_file_that_changes_is_used_at_the_next_token_request(
    fake: FakeOpsNow, key_file: Path, clock: FakeClock
) -> None:
    # Rotated ahead of the revocation: the old key's token serves until it falls due, and
    # the token request then sends the new key.
    auth = OpsNowAuth(base_url=fake.base_url)
    with requests.Session() as session:
        session.get(companies(fake), auth=auth, timeout=TIMEOUT)
        old, fake.api_key = fake.api_key, "the-new-key"
        replace_secret(key_file, "the-new-key")
        for _ in range(3):
            assert session.get(companies(fake), auth=auth, timeout=TIMEOUT).status_code == 200
        assert keys_sent(fake) == [old]
        clock.advance(3600)
        assert session.get(companies(fake), auth=auth, timeout=TIMEOUT).status_code == 200
    assert keys_sent(fake) == [old, "the-new-key"]


def test_a_key_revoked_before_its_file_is_rotated_is_replaced_when_the_file_is(
    fake: FakeOpsNow, key_file: Path
) -> None:
    auth = OpsNowAuth(base_url=fake.base_url)
    auth.get_token()
    old = rotate(fake, "the-new-key")
    auth.invalidate()
    with pytest.raises(InvalidApiKeyError):
        auth.get_token()  # the file still holds the old key: a backoff window opens
    replace_secret(key_file, "the-new-key")
    assert auth.get_token() == fake.issued_tokens[-1]  # within the window: the new key
    assert keys_sent(fake) == [old, old, "the-new-key"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read it (No such file or directory)"),
        ("", "the file holds no key"),
        ("\n\n", "the file holds no key"),
        ("k" * 8193, "is 8193 characters long: not an API key (at most 8192)"),
    ],
    ids=["missing", "empty", "blank-lines", "too-long"],
)
def test_a_key_file_without_a_key_is_a_clear_error(
    fake: FakeOpsNow, key_file: Path, content: str | None, expected: str
) -> None:
    if content is None:
        key_file.unlink()
    else:
        key_file.write_text(content)
    with pytest.raises(ApiKeyUnavailableError) as caught:
        OpsNowAuth(base_url=fake.base_url)
    message = str(caught.value)
    assert message.startswith(f"OPSNOW_API_KEY_FILE={key_file}")
    assert expected in message
    assert "kkkk" not in message


def test_a_key_file_that_is_a_fifo_is_refused_not_waited_on(
    fake: FakeOpsNow, key_file: Path
) -> None:
    key_file.unlink()
    os.mkfifo(key_file)
    with pytest.raises(ApiKeyUnavailableError, match=r"OPSNOW_API_KEY_FILE=.*cannot read it"):
        OpsNowAuth(base_url=fake.base_url)


# -- a profile's command ----------------------------------------------------------------


@pytest.fixture
def command_key(fake: FakeOpsNow, tmp_path: Path) -> Path:
    """A profile whose api_key_command prints the key a file holds (a vault, say), and
    notes each run in ``runs``."""
    vault = tmp_path / "vault"
    vault.write_text(fake.api_key)
    runs = tmp_path / "runs"
    helper = script(
        tmp_path,
        f"open({str(runs)!r}, 'a').write('run\\n')\nprint(open({str(vault)!r}).read())",
    )
    config_home = Path(os.environ["XDG_CONFIG_HOME"]) / "opsnow"
    write_config(
        config_home, f"[default]\nbase_url = {fake.base_url}\napi_key_command = {helper}\n"
    )
    return vault


def runs(vault: Path) -> int:
    path = vault.with_name("runs")
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_rotated_key_behind_a_profile_s_command_is_used_after_one_rejection(
    fake: FakeOpsNow, command_key: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, status = call_after_a_rotation(fake, OpsNowAuth(), command_key.write_text, caplog)
    assert status == 200  # the API's 401, a rejected key, the new key, replayed
    assert keys_sent(fake) == [old, old, "the-new-key"]
    assert runs(command_key) == 2  # once at the start, once after the rejection
    assert "the API key was rejected" in caplog.text


def test_a_rejected_key_s_command_is_run_again_at_most_once_per_interval(
    fake: FakeOpsNow, command_key: Path, clock: FakeClock
) -> None:
    auth = OpsNowAuth()
    rotate(fake, "the-new-key")  # and the vault still holds the old one
    for _ in range(20):
        with pytest.raises(InvalidApiKeyError):
            auth.get_token()
    assert runs(command_key) == 2  # the first read, and one read again after the rejection
    assert fake.token_requests == 1  # the rest fell in the rejected key's backoff window

    command_key.write_text("the-new-key")
    clock.advance(profiles.KEY_SOURCE_RETRY_AFTER)
    assert auth.get_token() == fake.issued_tokens[-1]  # read again: the new key, at once
    assert runs(command_key) == 3


def test_eight_threads_meeting_a_rotated_key_read_its_source_once_and_switch_once(
    fake: FakeOpsNow, command_key: Path
) -> None:
    auth = OpsNowAuth()
    old = rotate(fake, "the-new-key")
    command_key.write_text("the-new-key")
    statuses = run_together(
        8, lambda: requests.get(companies(fake), auth=auth, timeout=TIMEOUT).status_code
    )
    assert statuses == [200] * 8
    assert runs(command_key) == 2
    assert keys_sent(fake) == [old, "the-new-key"]


def test_a_copied_auth_reads_its_key_file_again_too(fake: FakeOpsNow, key_file: Path) -> None:
    copied = pickle.loads(pickle.dumps(OpsNowAuth(base_url=fake.base_url)))
    old = rotate(fake, "the-new-key")
    replace_secret(key_file, "the-new-key")
    assert copied.get_token() == fake.issued_tokens[-1]
    assert keys_sent(fake) == ["the-new-key"]
    assert old not in pickle.dumps(copied).decode("latin-1")  # it carries the key it uses


def test_an_httpx_async_auth_takes_the_new_key(fake: FakeOpsNow, command_key: Path) -> None:
    import anyio

    auth = HttpxOpsNowAuth()
    old = rotate(fake, "the-new-key")
    command_key.write_text("the-new-key")

    async def call() -> int:
        async with httpx.AsyncClient(auth=auth, timeout=TIMEOUT) as client:
            return (await client.get(companies(fake))).status_code

    assert anyio.run(call) == 200
    assert keys_sent(fake) == [old, "the-new-key"]


def test_a_source_that_fails_when_read_again_leaves_the_rejection_as_it_was(
    fake: FakeOpsNow, command_key: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = OpsNowAuth()
    rotate(fake, "the-new-key")
    command_key.unlink()  # the helper now fails (its vault is gone)
    with (
        caplog.at_level(logging.WARNING, logger="requests_opsnow"),
        pytest.raises(InvalidApiKeyError),
    ):
        auth.get_token()
    assert "reading it again failed" in caplog.text
    assert "exit status 1" in caplog.text
    assert fake.token_requests == 1

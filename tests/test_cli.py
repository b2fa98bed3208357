"""The ``opsnow`` command line, run as a real subprocess against FakeOpsNow."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from requests_opsnow.testing import FakeOpsNow

from .helpers import Cli

pytestmark = pytest.mark.timeout(60)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_token_twice_makes_one_token_request(cli: Cli, fake: FakeOpsNow) -> None:
    first, second = cli("token"), cli("token")
    assert first.returncode == second.returncode == 0
    assert first.stdout.strip() == second.stdout.strip() == fake.issued_tokens[0]
    assert fake.token_requests == 1


def test_token_cache_file_is_private_and_holds_neither_key_nor_its_name(
    cli: Cli, fake: FakeOpsNow
) -> None:
    assert cli("token").returncode == 0
    folder = cli.cache_home / "requests-opsnow"
    (token_file,) = folder.glob("*.json")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    content = token_file.read_text()
    assert fake.api_key not in content
    assert "OPSNOW_API_KEY" not in content


def test_token_json_has_the_expiry(cli: Cli, fake: FakeOpsNow) -> None:
    result = cli("token", "--json")
    assert result.returncode == 0
    payload = json.loads(result.stdout)
    assert payload["access_token"] == fake.issued_tokens[0]
    assert payload["expires_at"].endswith("Z")


def test_no_cache_leaves_no_files(cli: Cli, fake: FakeOpsNow) -> None:
    assert cli("token", "--no-cache").returncode == 0
    assert not cli.cache_home.exists()


def test_get_prints_the_json(cli: Cli) -> None:
    result = cli("get", "/platform/v2/companies", "-p", "page=2")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["data"]["page"] == 2
    assert payload["data"]["companies"][0]["name"] == "Acme"
    assert result.stdout.startswith("{\n  ")  # pretty-printed


def test_post_sends_the_json_body(cli: Cli, fake: FakeOpsNow) -> None:
    result = cli("post", "/test/echo", "--json", '{"name": "x"}')
    assert result.returncode == 0, result.stderr
    assert fake.api_requests[-1].method == "POST"
    assert json.loads(fake.api_requests[-1].body) == {"name": "x"}


def test_request_sends_any_method(cli: Cli, fake: FakeOpsNow) -> None:
    assert cli("request", "DELETE", "test/echo").returncode == 0
    assert (fake.api_requests[-1].method, fake.api_requests[-1].path) == ("DELETE", "/test/echo")


def test_bad_key_exits_3_with_one_line_and_no_key(cli: Cli) -> None:
    result = cli("get", "/platform/v2/companies", OPSNOW_API_KEY="wrong-key-12345")
    assert result.returncode == 3
    line = one_line(result.stderr)
    assert "rejected" in line
    assert "wrong-key-12345" not in result.stderr + result.stdout


def test_missing_key_exits_3_naming_the_variable(cli: Cli, fake: FakeOpsNow) -> None:
    result = cli("token", OPSNOW_API_KEY="")
    assert result.returncode == 3
    assert "OPSNOW_API_KEY" in one_line(result.stderr)
    assert fake.token_requests == 0


@pytest.mark.parametrize("path", ["/test/status/401", "/test/status/404", "/nowhere"])
def test_api_errors_exit_1(cli: Cli, path: str) -> None:
    result = cli("get", path)
    assert result.returncode == 1
    assert "40" in one_line(result.stderr)
    assert "Traceback" not in result.stderr


def test_unreachable_token_endpoint_exits_3(cli: Cli) -> None:
    result = cli("token", "--timeout", "1", OPSNOW_BASE_URL="http://127.0.0.1:9")
    assert result.returncode == 3
    assert "token request" in one_line(result.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        [],
        ["get"],
        ["post", "/x", "--json", "{not json"],
        ["get", "/x", "-p", "novalue"],
        ["get", "/x", "--region", "kr", "--base-url", "https://api.opsnow360.io"],
    ],
)
def test_usage_errors_exit_2(cli: Cli, args: list[str]) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(cli: Cli) -> None:
    result = cli("--debug", "get", "/x", OPSNOW_API_KEY="wrong-key-12345")
    assert result.returncode == 3
    assert "Traceback" in result.stderr
    assert "wrong-key-12345" not in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        "token",
        "get",
        "post",
        "request",
        "demo",
        "fake-server",
        "configure",
        "profiles",
        "status",
        "logout",
    ],
)
def test_every_command_has_help_with_an_example(cli: Cli, command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0
    assert "example:" in result.stdout


def test_demo_exits_0(cli: Cli) -> None:
    result = cli("demo", OPSNOW_API_KEY="", OPSNOW_BASE_URL="")
    assert result.returncode == 0, result.stderr
    assert "demo finished" in result.stdout


def test_fake_server_prints_its_url_and_key_and_serves(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "requests_opsnow", "fake-server", "--ttl", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        base_url = lines[1].strip().partition("=")[2]
        api_key = lines[2].strip().partition("=")[2]
        with requests.Session() as s:
            token = s.post(
                base_url + FakeOpsNow.TOKEN_PATH, json={"apiKey": api_key}, timeout=5
            ).json()["data"]
        assert token["expiresIn"] == 60
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)
    assert process.returncode in (0, 130)


def test_token_due_for_refresh_is_replaced_before_printing(cli: Cli, fake: FakeOpsNow) -> None:
    import time

    from requests_opsnow import Token
    from requests_opsnow.cache import cache_key
    from requests_opsnow.filecache import FileTokenCache

    now = time.time()
    due = Token("planted-due-token", expires_at=now + 100, issued_at=now - 3500)
    FileTokenCache(cli.cache_home / "requests-opsnow").set(
        cache_key(fake.token_url, fake.api_key), due
    )

    first, second = cli("token"), cli("token")

    assert first.stdout.strip() == second.stdout.strip() == fake.issued_tokens[0]
    assert fake.token_requests == 1


def test_an_error_is_one_line_even_when_the_server_message_has_newlines(
    cli: Cli, fake: FakeOpsNow
) -> None:
    body = {"status": "fail", "error": {"code": 401, "message": "Invalid key.\nRotate it\r\nNow"}}
    fake.fail_token_requests(401, body=json.dumps(body).encode())
    result = cli("token")
    assert result.returncode == 3
    assert "Invalid key. Rotate it Now" in one_line(result.stderr)


def test_token_renew_forgets_the_cached_token(cli: Cli, fake: FakeOpsNow) -> None:
    first = cli("token").stdout.strip()
    renewed = cli("token", "--renew").stdout.strip()
    assert renewed != first
    assert cli("token").stdout.strip() == renewed
    assert fake.token_requests == 2


def test_an_insecure_base_url_is_a_usage_error_that_hides_its_credentials(cli: Cli) -> None:
    result = cli("--base-url", "http://someone:s3cret@api.example.com/x?sig=abc123", "token")
    assert result.returncode == 2
    message = one_line(result.stderr)
    assert "https" in message
    assert "s3cret" not in message
    assert "abc123" not in message


def test_an_unreachable_api_exits_1_and_an_unreachable_token_endpoint_exits_3(
    cli: Cli, fake: FakeOpsNow
) -> None:
    # The API on a port where nothing listens, the token endpoint on the fake server.
    api_down = cli("get", "http://127.0.0.1:9/platform/v2/companies", "--timeout", "2")
    assert api_down.returncode == 1, api_down.stderr
    assert fake.token_requests == 1  # the token was there: the API was not
    token_down = cli("get", "/platform/v2/companies", OPSNOW_BASE_URL="http://127.0.0.1:9")
    assert token_down.returncode == 3, token_down.stderr


def test_an_api_error_is_reported_as_the_opsnow_api_error_would_say_it(
    cli: Cli, fake: FakeOpsNow
) -> None:
    result = cli("get", "/platform/v2/nope", "-p", "secret=s3cret")
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"opsnow: error: OpsNow API error 404 on GET {fake.base_url}/platform/v2/nope: Not found"
    )


def test_fake_server_json_is_one_line_a_program_can_read() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "requests_opsnow", "fake-server", "--json"],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        details = json.loads(process.stdout.readline())
        reply = requests.post(
            details["base_url"] + FakeOpsNow.TOKEN_PATH,
            json={"apiKey": details["api_key"]},
            timeout=5,
        )
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)
    assert reply.status_code == 200
    assert details["no_proxy"] == "127.0.0.1"


def test_status_says_where_the_cached_token_came_from_when_it_was_obtained_and_is_due(
    cli: Cli, tmp_path: Path
) -> None:
    key_file = tmp_path / "secret"
    key_file.write_text(cli.fake.api_key + "\n")
    env = {"OPSNOW_TOKEN_CACHE": "file", "OPSNOW_API_KEY": "", "OPSNOW_API_KEY_FILE": str(key_file)}
    assert cli("token", **env).returncode == 0
    (token_file,) = (cli.cache_home / "requests-opsnow").glob("*.json")
    record = json.loads(token_file.read_text())

    status = cli("status", **env)

    assert status.returncode == 0, status.stderr
    assert f"key: the first line of {key_file} (OPSNOW_API_KEY_FILE)" in status.stdout
    assert f"cached token: expires {moment(record['expires_at'])}, from the file store" in (
        status.stdout
    )
    due = record["expires_at"] - 300  # the default margin: 5 minutes before expiry
    assert f"obtained {moment(record['issued_at'])}; refresh due by {moment(due)}" in status.stdout
    assert cli.fake.api_key not in status.stdout
    assert record["access_token"] not in status.stdout


def moment(epoch: float) -> str:
    """A moment as ``opsnow status`` prints it."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")

"""The README and the documentation stay true: the README is short, works on the package
index (absolute links only) and its examples run; the API reference names every public
name; the command lines the docs show are ones ``opsnow`` accepts.

The documentation's own examples run under ``sphinx-build -b doctest`` (``.ci/run``).
"""

from __future__ import annotations

import configparser
import contextlib
import io
import re
import shlex
import types
import uuid
from pathlib import Path

import pytest
import requests
import responses

import requests_opsnow
from requests_opsnow import GLOBAL_BASE_URL, OpsNowAuth
from requests_opsnow.cli import main as opsnow_main
from requests_opsnow.testing import FakeOpsNow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language blocks of a Markdown text."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)


def test_the_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= README_MAX_LINES


def test_every_readme_link_is_absolute() -> None:
    """The package index shows the README as the long description: a relative link, or a
    link to a heading, breaks there."""
    text = README.read_text()
    targets = re.findall(r"\]\(([^)\s]+)", text)  # [text](target) and ![alt](target)
    targets += re.findall(r"^\[[^\]]+\]:\s*(\S+)", text, re.M)  # [label]: target
    targets += re.findall(r"""(?:src|href)=["']([^"']+)""", text)  # inline HTML
    assert targets, "no link found: the pattern is wrong"
    assert [t for t in targets if not t.startswith("https://")] == []


def test_the_readme_gives_the_install_line_and_every_extra() -> None:
    text = README.read_text()
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    extras = set(config["options.extras_require"]) - {"test", "docs"}
    assert "\npip install requests-opsnow\n" in text
    for extra in extras:
        assert f"pip install 'requests-opsnow[{extra}]'" in text, extra


def test_the_first_step_after_the_install_line_needs_nothing_more() -> None:
    """A new user runs the install line, then the README's first command. Each
    ``opsnow configure`` that stores the key in the keyring comes after the line that
    installs the keyring extra; the others need no extra."""
    text = README.read_text()
    after_install = text[text.index("\npip install requests-opsnow\n") :]
    commands = [
        line.strip()
        for block in fenced_blocks(after_install, "sh")
        for line in block.splitlines()
        if line.strip()
    ]
    assert commands[0] == "opsnow demo"
    keyring_extra = "pip install 'requests-opsnow[keyring]'"
    for index, command in enumerate(commands):
        words = shlex.split(command, comments=True)
        if words[:2] == ["opsnow", "configure"] and not {
            "--api-key-command", "--insecure-storage"
        } & set(words):  # fmt: skip
            assert keyring_extra in commands[:index], command


def run_readme_example(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run one README example offline: the API's host is answered by ``responses`` (with
    a key of this test's own, as tokens are shared per key in a process), loopback by the
    fake; ``my_script`` is a script that calls the API with ``OpsNowAuth()``."""

    def my_script_main() -> None:
        auth = OpsNowAuth()
        url = f"{auth.base_url}/platform/v2/companies"
        requests.get(url, auth=auth, timeout=10).raise_for_status()

    monkeypatch.setenv("OPSNOW_API_KEY", f"readme-key-{uuid.uuid4().hex}")
    namespace: dict[str, object] = {"my_script": types.SimpleNamespace(main=my_script_main)}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru("http://127.0.0.1")
        mock.post(
            f"{GLOBAL_BASE_URL}/platform/v2/identity/api-keys/token",
            json={"status": "success", "data": {"accessToken": "readme-token", "expiresIn": 3600}},
        )
        mock.get(
            f"{GLOBAL_BASE_URL}/platform/v2/companies",
            json={"status": "success", "data": {"companies": []}},
            match=[responses.matchers.header_matcher({"Authorization": "Bearer readme-token"})],
        )
        exec(compile(source, str(README), "exec"), namespace)  # noqa: S102 (our own README)
        for name, test in list(namespace.items()):
            if name.startswith("test_") and callable(test):
                with FakeOpsNow() as opsnow_fake, monkeypatch.context() as patch:
                    test(opsnow_fake, patch)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(block, id=block.strip().splitlines()[0][:40])
        for block in fenced_blocks(README.read_text(), "python")
        if "# before" not in block  # the old script's line, shown as it was
    ],
)
def test_the_readme_examples_run(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run_readme_example(source, monkeypatch)


def test_the_api_reference_names_every_public_name() -> None:
    reference = (DOCS / "api.rst").read_text()
    documented = set(re.findall(r"^\.\. auto\w+:: (\S+)", reference, re.M))
    assert {f"requests_opsnow.{name}" for name in requests_opsnow.__all__} <= documented
    assert "requests_opsnow.httpx.OpsNowAuth" in documented
    assert "requests_opsnow.pytest_plugin.opsnow_fake" in documented
    # The testing helpers: the whole module, so every name of its __all__.
    assert re.search(r"^\.\. automodule:: requests_opsnow\.testing\n   :members:", reference, re.M)


def documented_command_lines() -> list[str]:
    """The ``opsnow ...`` lines of the shell blocks of the README and the docs, once each."""
    lines: list[str] = []
    for path in [README, *sorted(DOCS.glob("*.md"))]:
        for block in fenced_blocks(path.read_text(), "sh"):
            lines += [line for line in block.splitlines() if line.startswith("opsnow ")]
    return sorted(set(lines))


def opsnow_help(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        opsnow_main([*args, "--help"])
    assert exited.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize(
    "line",
    [pytest.param(line, id=line.split("#")[0].strip()) for line in documented_command_lines()],
)
def test_the_documented_command_lines_are_ones_opsnow_accepts(line: str) -> None:
    words = shlex.split(re.sub(r"\[(--[^]]*)\]", r"\1", line), comments=True)[1:]
    assert words[0] in opsnow_help(), line
    options = [word.split("=")[0] for word in words if word.startswith("-")]
    command_help = opsnow_help(words[0])
    for option in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", command_help), option

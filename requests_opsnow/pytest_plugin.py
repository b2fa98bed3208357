"""pytest plugin (registered through the ``pytest11`` entry point ``opsnow``).

It provides the fixture ``opsnow_fake``: a started
:class:`~requests_opsnow.testing.FakeOpsNow`, closed after the test. The
fixture does not touch ``os.environ``; point code that reads its settings from
the environment at the fake with ``monkeypatch``::

    def test_companies(opsnow_fake, monkeypatch):
        monkeypatch.setenv("OPSNOW_API_KEY", opsnow_fake.api_key)
        monkeypatch.setenv("OPSNOW_BASE_URL", opsnow_fake.base_url)
        ...
        assert opsnow_fake.token_requests == 1

Failures, delays and malformed token payloads can be injected with
``opsnow_fake.fail_token_requests(...)``, ``set_token_delay(...)`` and
``set_token_body(...)``.

Every test also starts with no token in the process
(:func:`~requests_opsnow.testing.forget_tokens`): tokens are shared per key in a
process, and a test that mocks the token endpoint (``responses``,
``requests-mock``) must see its own token request whatever test ran before it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from requests_opsnow.testing import FakeOpsNow, forget_tokens

__all__ = ["opsnow_fake"]


@pytest.fixture(autouse=True)
def _opsnow_forget_tokens() -> None:
    """No token from an earlier test: each test's mocks see their own token request."""
    forget_tokens()


@pytest.fixture
def opsnow_fake() -> Iterator[FakeOpsNow]:
    """A running fake OpsNow server on loopback, closed after the test."""
    with FakeOpsNow() as fake:
        yield fake

"""Secrets in logs, reprs and messages; copies and pickles.

``docs/design.md``: "Secrets", "Copies, pickles and forks".
"""

from __future__ import annotations

import copy
import gc
import logging
import pickle
from pathlib import Path
from typing import Callable

import pytest
import requests

from requests_opsnow import OpsNowAuth, OpsNowSession, TokenRequestError
from requests_opsnow.testing import FakeOpsNow

from .helpers import COMPANIES, FakeClock, MakeAuth, bearer, refresh_threads, wait_until

pytestmark = pytest.mark.timeout(20)


def secrets_of(fake: FakeOpsNow) -> list[str]:
    return [fake.api_key, *fake.issued_tokens]


def test_no_log_line_at_any_level_holds_the_key_or_a_token(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    session: requests.Session,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        session.auth = make_auth(max_retries=1)
        fake.fail_token_requests(503, count=1)
        session.get(fake.base_url + COMPANIES)  # retry, fetch
        session.get(fake.base_url + COMPANIES)  # reuse
        fake.revoke_tokens()
        session.get(fake.base_url + COMPANIES)  # 401, refresh, replay
        clock.advance(3600 - 100)
        fake.fail_token_requests(500, count=-1)
        session.get(fake.base_url + COMPANIES)  # failed early refresh: warning
        assert wait_until(lambda: not refresh_threads())
        fake.reset()
        clock.advance(3600)
        session.get(fake.base_url + COMPANIES)  # expired: blocking refresh
    messages = [record.getMessage() for record in caplog.records]
    assert any("replaying" in m for m in messages)
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    for secret in secrets_of(fake):
        assert all(secret not in message for message in messages)


def test_happy_path_logs_nothing_above_debug(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    session: requests.Session,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="requests_opsnow"):
        session.auth = make_auth()
        for _ in range(3):
            session.get(fake.base_url + COMPANIES)
    assert caplog.records  # the decisions are logged...
    assert all(r.levelno == logging.DEBUG for r in caplog.records)  # ...at DEBUG only


def test_repr_shows_the_endpoint_never_the_key_or_token(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    auth = make_auth()
    auth.get_token()
    text = repr(auth) + str(auth)
    assert fake.token_url in text
    for secret in secrets_of(fake):
        assert secret not in text
    assert fake.api_key not in repr(vars(auth)["_store"])


def test_error_messages_never_hold_the_key(fake: FakeOpsNow, make_auth: MakeAuth) -> None:
    fake.fail_token_requests(500, body=f'{{"message": "bad key {fake.api_key}"}}'.encode())
    with pytest.raises(TokenRequestError) as caught:
        make_auth(max_retries=0).get_token()
    assert "bad key ***" in str(caught.value)
    assert fake.api_key not in str(caught.value)


def test_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("requests_opsnow").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


@pytest.mark.parametrize("make_copy", [copy.deepcopy, lambda a: pickle.loads(pickle.dumps(a))])
def test_copied_auth_carries_no_token_and_shares_the_processs_token(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    session: requests.Session,
    make_copy: Callable[[OpsNowAuth], OpsNowAuth],
) -> None:
    original = make_auth()
    original.get_token()
    assert fake.issued_tokens[0].encode() not in pickle.dumps(original)
    clone = make_copy(original)
    response = session.get(fake.base_url + COMPANIES, auth=clone, timeout=10)
    assert response.status_code == 200
    assert fake.token_requests == 1  # one token per key in a process, copies included
    assert bearer(fake.api_requests[-1]) == fake.issued_tokens[0]


@pytest.mark.parametrize("make_copy", [copy.deepcopy, lambda s: pickle.loads(pickle.dumps(s))])
def test_copied_session_holding_the_auth_works(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    make_copy: Callable[[requests.Session], requests.Session],
) -> None:
    with requests.Session() as original:
        original.auth = make_auth()
        original.get(fake.base_url + COMPANIES, timeout=10)
        with make_copy(original) as clone:
            assert clone.get(fake.base_url + COMPANIES, timeout=10).status_code == 200
            assert isinstance(clone.auth, OpsNowAuth)
    assert fake.token_requests == 1


@pytest.mark.parametrize("make_copy", [copy.deepcopy, lambda a: pickle.loads(pickle.dumps(a))])
def test_a_copy_of_an_auth_using_the_environments_store_shares_its_token(
    fake: FakeOpsNow,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_copy: Callable[[OpsNowAuth], OpsNowAuth],
) -> None:
    monkeypatch.setenv("OPSNOW_TOKEN_CACHE", f"file:{tmp_path}")
    original = OpsNowAuth(fake.api_key, base_url=fake.base_url)
    clone = make_copy(original)
    url = fake.base_url + COMPANIES
    with requests.Session() as session:
        assert session.get(url, auth=original, timeout=10).ok
        fake.revoke_tokens()
        assert session.get(url, auth=original, timeout=10).history  # 401, refresh, replay
        after = session.get(url, auth=clone, timeout=10)
    assert after.ok
    assert not after.history  # the copy already had the refreshed token
    assert fake.token_requests == 2


def test_a_shallow_copy_of_an_opsnow_session_leaves_the_original_its_settings(
    tls_fake: FakeOpsNow, ca_file: str
) -> None:
    with OpsNowSession(tls_fake.api_key, base_url=tls_fake.base_url, verify=ca_file) as session:
        shallow = copy.copy(session)  # shares the session's own auth
        del shallow
        gc.collect()
        assert session.get(COMPANIES).status_code == 200  # its token request trusted the CA
    assert tls_fake.token_requests == 1

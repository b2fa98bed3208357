"""OpsNowSession against FakeOpsNow: paths, User-Agent, retries, OpsNowAPIError, 401 replay."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import pickle
import socket
from collections.abc import Iterator
from typing import Any, Callable

import pytest
import requests
from requests_futures.sessions import FuturesSession
from requests_toolbelt import MultipartEncoder
from urllib3.exceptions import ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from requests_opsnow import GLOBAL_BASE_URL, OpsNowAPIError, OpsNowAuth, __version__
from requests_opsnow._config import API_TIMEOUT
from requests_opsnow.session import (
    RETRY_AFTER_MAX,
    OpsNowSession,
    _OpsNowRetry,
    _retry_policy,
    raise_for_opsnow_error,
)
from requests_opsnow.testing import FakeOpsNow, Reply

from .helpers import COMPANIES, FakeClock, MakeAuth, wait_until

pytestmark = pytest.mark.timeout(20)

MakeSession = Callable[..., OpsNowSession]


@pytest.fixture
def make_session(make_auth: MakeAuth) -> Iterator[MakeSession]:
    """OpsNowSessions on ``fake`` (through ``make_auth``), closed after the test."""
    made: list[OpsNowSession] = []

    def factory(**options: Any) -> OpsNowSession:
        if "auth" not in options and "api_key" not in options:
            options["auth"] = make_auth()
        s = OpsNowSession(**options)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# -- URLs and headers ----------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPANIES, COMPANIES.lstrip("/")])
def test_relative_paths_with_and_without_leading_slash(
    fake: FakeOpsNow, make_session: MakeSession, path: str
) -> None:
    response = make_session().get(path, params={"page": "2"})
    assert response.status_code == 200
    assert response.json()["data"]["page"] == 2
    assert response.url == f"{fake.base_url}{COMPANIES}?page=2"


@pytest.mark.parametrize("suffix", ["/platform/v2", "/platform/v2/"])
@pytest.mark.parametrize("path", ["companies", "/companies"])
def test_a_base_url_path_prefix_is_kept_for_both_path_forms(
    fake: FakeOpsNow, make_session: MakeSession, suffix: str, path: str
) -> None:
    response = make_session(base_url=fake.base_url + suffix).get(path)
    assert response.status_code == 200
    assert fake.api_requests[-1].path == COMPANIES


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/platform/v2/companies", "https://gw.example/opsnow/platform/v2/companies"),
        ("platform/v2/companies", "https://gw.example/opsnow/platform/v2/companies"),
        ("companies?page=2", "https://gw.example/opsnow/companies?page=2"),
        ("", "https://gw.example/opsnow/"),
        (b"/platform", "https://gw.example/opsnow/platform"),
        ("https://other.example/a/../b?q=", "https://other.example/a/../b?q="),
        ("http://gw.example/elsewhere", "http://gw.example/elsewhere"),
        ("//other.example/x", "https://other.example/x"),
    ],
)
def test_create_url(url: str | bytes, expected: str) -> None:
    with OpsNowSession("key", base_url="https://gw.example/opsnow/") as s:
        assert s.base_url == "https://gw.example/opsnow/"
        assert s.create_url(url) == expected


def test_absolute_urls_pass_through_unchanged(fake: FakeOpsNow, make_session: MakeSession) -> None:
    s = make_session(base_url=fake.base_url + "/platform/v2")
    response = s.get(fake.base_url + "/test/echo?x=1")
    assert response.json()["data"]["path"] == "/test/echo"
    assert response.json()["data"]["query"] == {"x": ["1"]}


def test_base_url_defaults_to_the_auths_then_the_environment(
    fake: FakeOpsNow, make_session: MakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert make_session().base_url == fake.base_url + "/"
    assert make_session(api_key="key").base_url == GLOBAL_BASE_URL + "/"
    monkeypatch.setenv("OPSNOW_BASE_URL", "https://api.kr.opsnow360.io/")
    s = make_session(api_key="key")
    assert s.base_url == "https://api.kr.opsnow360.io/"
    assert s.auth.base_url == "https://api.kr.opsnow360.io"


def test_user_agent_names_the_package_requests_and_python(
    fake: FakeOpsNow, make_session: MakeSession
) -> None:
    make_session().get(COMPANIES)
    agent = fake.api_requests[-1].header("User-Agent")
    assert agent is not None
    assert agent.startswith(f"requests-opsnow/{__version__} ")
    assert f"requests/{requests.__version__}" in agent
    assert "Python/" in agent


def test_a_session_built_from_a_key_works_and_closes_its_auth(fake: FakeOpsNow) -> None:
    s = OpsNowSession(fake.api_key, base_url=fake.base_url)
    assert isinstance(s.auth, OpsNowAuth)
    assert s.get(COMPANIES).status_code == 200
    s.close()
    assert wait_until(lambda: fake.open_connections == 0)  # nothing left open


def test_options_are_checked() -> None:
    auth = OpsNowAuth("key")
    with pytest.raises(TypeError, match="not both"):
        OpsNowSession("key", auth=auth)
    with pytest.raises(TypeError, match="not both"):
        OpsNowSession(auth=auth, timeout=3)
    for bad in (True, 1.5, "3"):
        with pytest.raises(TypeError, match="retries"):
            OpsNowSession("key", retries=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retries"):
        OpsNowSession("key", retries=-1)
    with pytest.raises(ValueError, match="OPSNOW_API_KEY"):
        OpsNowSession()


@pytest.mark.parametrize(
    "make_copy",
    [copy.deepcopy, lambda s: pickle.loads(pickle.dumps(s))],
    ids=["deepcopy", "pickle"],
)
def test_a_copied_session_keeps_base_url_auth_and_retries(
    fake: FakeOpsNow, make_session: MakeSession, make_copy: Callable[[Any], Any]
) -> None:
    original = make_session(base_url=fake.base_url + "/platform/v2")
    with make_copy(original) as clone:
        assert clone.base_url == original.base_url
        assert isinstance(clone.get_adapter("http://x").max_retries, _OpsNowRetry)
        fake.fail_api_requests(503)
        assert clone.get("companies").status_code == 200
        assert isinstance(clone.auth, OpsNowAuth)
        clone.auth.close()


# -- the retry policy ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "retried"),
    [
        ("GET", 429, True),
        ("POST", 429, True),
        ("PATCH", 429, True),
        ("GET", 503, True),
        ("PUT", 502, True),
        ("DELETE", 504, True),
        ("POST", 503, False),
        ("PATCH", 502, False),
        ("GET", 500, False),
        ("GET", 404, False),
    ],
)
def test_which_statuses_are_retried(method: str, status: int, retried: bool) -> None:
    assert _retry_policy(None).is_retry(method, status) is retried


def test_retry_state_keeps_the_subclass() -> None:
    policy = _retry_policy(None)
    assert type(policy.new()) is _OpsNowRetry
    assert type(policy.increment("GET", "/x", error=ProtocolError("dropped"))) is _OpsNowRetry


def test_connection_errors_follow_urllib3_and_read_timeouts_are_not_retried() -> None:
    policy = _retry_policy(None)
    with pytest.raises(ProtocolError):  # dropped after sending: idempotent methods only
        policy.increment("POST", "/x", error=ProtocolError("dropped"))
    assert policy.increment("GET", "/x", error=ProtocolError("dropped")).total == 2
    with pytest.raises(ReadTimeoutError):
        policy.increment("GET", "/x", error=ReadTimeoutError(None, "/x", "read timed out"))  # type: ignore[arg-type]


def test_get_is_retried_on_503_then_succeeds(
    fake: FakeOpsNow, make_session: MakeSession, clock: FakeClock
) -> None:
    s = make_session()
    fake.fail_api_requests(503)
    response = s.get(COMPANIES)
    assert response.status_code == 200
    assert len(fake.api_requests) == 2
    assert clock.sleeps == []  # urllib3 does not wait before the first retry


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_429_with_retry_after_is_waited_for_and_retried_on_any_method(
    fake: FakeOpsNow, make_session: MakeSession, clock: FakeClock, method: str
) -> None:
    s = make_session()
    s.get(COMPANIES)  # the token first
    fake.reset_counts()
    fake.fail_api_requests(429, retry_after="1")
    response = s.request(method, "/test/echo", json={"n": 1})
    assert response.status_code == 200
    assert clock.sleeps == [1.0]
    first, second = fake.api_requests
    assert first.method == second.method == method
    assert first.body == second.body == json.dumps({"n": 1}).encode()


def test_post_is_not_retried_on_503(
    fake: FakeOpsNow, make_session: MakeSession, clock: FakeClock
) -> None:
    s = make_session()
    fake.fail_api_requests(503, retry_after="1")
    response = s.post("/test/echo", json={"n": 1})
    assert response.status_code == 503
    assert len(fake.api_requests) == 1
    assert clock.sleeps == []


def test_retries_are_bounded_and_the_last_response_is_returned(
    fake: FakeOpsNow, make_session: MakeSession, clock: FakeClock
) -> None:
    s = make_session()
    fake.fail_api_requests(502, count=10)
    response = s.get(COMPANIES)
    assert response.status_code == 502
    assert len(fake.api_requests) == 4
    assert clock.sleeps == [1.0, 2.0]
    with pytest.raises(OpsNowAPIError):
        response.raise_for_status()


def test_a_retry_after_too_long_is_not_waited_for(
    fake: FakeOpsNow, make_session: MakeSession, clock: FakeClock
) -> None:
    s = make_session()
    fake.fail_api_requests(429, retry_after=str(int(RETRY_AFTER_MAX) + 1))
    response = s.get(COMPANIES)
    assert response.status_code == 429
    assert len(fake.api_requests) == 1
    assert clock.sleeps == []


def test_an_unreadable_retry_after_falls_back_to_backoff(
    fake: FakeOpsNow, make_session: MakeSession, clock: FakeClock
) -> None:
    s = make_session()
    fake.fail_api_requests(429, count=2, retry_after="soon")
    assert s.get(COMPANIES).status_code == 200
    assert clock.sleeps == [1.0]


@pytest.mark.parametrize(("retries", "requests_made"), [(0, 1), (1, 2)])
def test_retries_sets_the_number_of_retries(
    fake: FakeOpsNow, make_session: MakeSession, clock: FakeClock, retries: int, requests_made: int
) -> None:
    s = make_session(retries=retries)
    fake.fail_api_requests(429, count=5, retry_after="1")
    assert s.get(COMPANIES).status_code == 429
    assert len(fake.api_requests) == requests_made


def test_a_retry_object_is_used_as_given(fake: FakeOpsNow, make_session: MakeSession) -> None:
    retry = Retry(total=1, status_forcelist=[500], raise_on_status=False)
    s = make_session(retries=retry)
    assert s.get_adapter("https://x").max_retries is retry
    fake.fail_api_requests(500, count=5)
    assert s.get(COMPANIES).status_code == 500
    assert len(fake.api_requests) == 2


def test_failed_connects_are_retried_on_any_method(
    make_session: MakeSession, clock: FakeClock
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(requests.ConnectionError):
        make_session().post(f"http://127.0.0.1:{port}/x", json={})
    assert clock.sleeps == [1.0, 2.0]  # three retries


def test_a_rewindable_file_body_is_resent_whole(
    fake: FakeOpsNow, make_session: MakeSession, clock: FakeClock
) -> None:
    s = make_session()
    fake.fail_api_requests(429)
    response = s.post("/test/echo", data=io.BytesIO(b"x" * 1000))
    assert response.json()["data"]["body_sha256"] == sha256(b"x" * 1000)
    assert [r.body for r in fake.api_requests] == [b"x" * 1000] * 2


@pytest.mark.parametrize("kind", ["generator", "multipart"])
def test_a_body_that_cannot_be_rewound_is_sent_once(
    fake: FakeOpsNow, make_session: MakeSession, clock: FakeClock, kind: str
) -> None:
    s = make_session()
    fake.fail_api_requests(429, retry_after="1")
    data: Any = (
        (chunk for chunk in [b"a", b"b"])
        if kind == "generator"
        else MultipartEncoder(fields={"f": "v"})
    )
    response = s.post("/test/echo", data=data)
    assert response.status_code == 429
    assert len(fake.api_requests) == 1
    assert fake.api_requests[0].body
    assert clock.sleeps == []


# -- OpsNowAPIError ------------------------------------------------------------------


def test_raise_for_status_raises_opsnow_api_error_with_the_servers_code_and_message(
    fake: FakeOpsNow, make_session: MakeSession
) -> None:
    s = make_session()
    response = s.get("/platform/v2/nope", params={"secret": "s3cret"})
    with pytest.raises(requests.HTTPError) as caught:
        response.raise_for_status()
    error = caught.value
    assert isinstance(error, OpsNowAPIError)
    assert (error.code, error.message) == (404, "Not found")
    assert error.response is response
    assert error.request is response.request
    assert str(error) == f"OpsNow API error 404 on GET {fake.base_url}/platform/v2/nope: Not found"
    assert "s3cret" not in str(error)
    assert fake.issued_tokens[0] not in str(error)


def test_an_api_error_pickles_with_its_response_but_without_the_token(
    fake: FakeOpsNow, make_session: MakeSession
) -> None:
    s = make_session()
    s.get(COMPANIES)
    fake.revoke_tokens()  # the error's response has a history: a 401 to the first token
    response = s.get("/platform/v2/nope")
    with pytest.raises(OpsNowAPIError) as caught:
        response.raise_for_status()
    pickled = pickle.dumps(caught.value)  # a result backend, an error tracker, a process pool
    for token in fake.issued_tokens:
        assert token.encode() not in pickled
    restored = pickle.loads(pickled)
    assert type(restored) is OpsNowAPIError
    assert (str(restored), restored.code, restored.message) == (str(caught.value), 404, "Not found")
    assert restored.response.status_code == 404
    assert restored.response.json() == response.json()
    assert restored.request.url == response.request.url
    assert [r.status_code for r in restored.response.history] == [401]
    assert restored.request.headers["Authorization"] == "[redacted]"
    # The caller's own objects still show what was sent.
    assert caught.value.request.headers["Authorization"] == f"Bearer {fake.issued_tokens[1]}"


def one_line(s: OpsNowSession) -> None:
    s.get("/platform/v2/nope").raise_for_status()


def bound(s: OpsNowSession) -> None:
    check = s.get("/platform/v2/nope").raise_for_status
    check()


def after_pickling(s: OpsNowSession) -> None:
    pickle.loads(pickle.dumps(s.get("/platform/v2/nope"))).raise_for_status()


def in_a_with_block(s: OpsNowSession) -> None:
    with s.get("/platform/v2/nope") as response:
        response.raise_for_status()


def from_requests_futures(s: OpsNowSession) -> None:
    with FuturesSession(session=s, max_workers=1) as futures:
        futures.get("/platform/v2/nope").result(timeout=10).raise_for_status()


def or_ok(s: OpsNowSession) -> None:
    assert (s.get("/platform/v2/nope").raise_for_status() or "ok") != "ok"


@pytest.mark.parametrize(
    "idiom", [one_line, bound, after_pickling, in_a_with_block, from_requests_futures, or_ok]
)
def test_every_raise_for_status_idiom_raises_opsnow_api_error(
    make_session: MakeSession, idiom: Callable[[OpsNowSession], None]
) -> None:
    with pytest.raises(OpsNowAPIError, match=r"OpsNow API error 404 on GET .*: Not found"):
        idiom(make_session())


def test_a_replayed_and_redirected_response_keeps_its_401_and_opsnow_errors(
    fake: FakeOpsNow, make_session: MakeSession
) -> None:
    fake.route("GET", "/test/moved", lambda request: Reply(302, headers={"Location": "nope"}))
    s = make_session()
    s.get(COMPANIES)
    fake.revoke_tokens()
    response = s.get("/test/moved")
    assert response.history[0].status_code == 401  # the replay's redirect keeps it first
    assert response.status_code == 404
    with pytest.raises(OpsNowAPIError, match="Not found"):
        pickle.loads(pickle.dumps(response)).raise_for_status()


def test_raise_for_status_is_silent_on_success(make_session: MakeSession) -> None:
    response = make_session().get(COMPANIES)
    assert response.raise_for_status() is None


def test_a_replayed_response_and_per_request_hooks_keep_opsnow_errors(
    fake: FakeOpsNow, make_session: MakeSession
) -> None:
    s = make_session()
    s.get(COMPANIES)
    fake.revoke_tokens()
    response = s.get("/platform/v2/nope", hooks={"response": [lambda r, **kw: None]})
    assert [r.status_code for r in [*response.history, response]] == [401, 404]
    with pytest.raises(OpsNowAPIError, match="Not found"):
        response.raise_for_status()


def test_401_replay_works_through_the_session(fake: FakeOpsNow, make_session: MakeSession) -> None:
    s = make_session()
    assert s.get(COMPANIES).status_code == 200
    fake.revoke_tokens()
    response = s.get(COMPANIES)
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert fake.token_requests == 2
    assert fake.api_requests[-1].header("Authorization") == f"Bearer {fake.issued_tokens[1]}"


def error_response(
    status: int,
    body: object,
    *,
    reason: str = "",
    url: str = "https://api.example/p?token=abc",
    authorization: str | None = None,
) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = reason
    response._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response.url = url
    if authorization is not None:
        response.request = requests.Request("POST", url).prepare()
        response.request.headers["Authorization"] = authorization
    return response


@pytest.mark.parametrize(
    ("response", "code", "message", "text"),
    [
        (
            error_response(502, b"<html>bad gateway</html>", reason="Bad Gateway"),
            502,
            "Bad Gateway",
            "OpsNow API error 502 on request to https://api.example/p: Bad Gateway",
        ),
        (
            error_response(599, {"error": "x"}),
            599,
            "HTTP error",
            "OpsNow API error 599 on request to https://api.example/p: HTTP error",
        ),
        (
            error_response(
                429, {"status": "fail", "error": {"code": "QUOTA", "message": "Slow\ndown"}}
            ),
            "QUOTA",
            "Slow down",
            "OpsNow API error 429 on request to https://api.example/p: Slow down (code QUOTA)",
        ),
        (
            error_response(
                403,
                {"error": {"code": 403, "message": "token tok-123 denied"}},
                url="https://user:pw@api.example/p#frag",
                authorization="Bearer tok-123",
            ),
            403,
            "token [token] denied",
            "OpsNow API error 403 on POST https://api.example/p: token [token] denied",
        ),
    ],
    ids=["not-json", "not-opsnow", "string-code", "masked"],
)
def test_raise_for_opsnow_error_for_plain_responses(
    response: requests.Response, code: int | str, message: str, text: str
) -> None:
    with pytest.raises(OpsNowAPIError) as caught:
        raise_for_opsnow_error(response)
    assert (caught.value.code, caught.value.message, str(caught.value)) == (code, message, text)


@pytest.mark.parametrize("status", [200, 204, 302, 399, 600])
def test_raise_for_opsnow_error_ignores_non_error_statuses(status: int) -> None:
    raise_for_opsnow_error(error_response(status, {}))


class TimeoutRecorder(requests.adapters.HTTPAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[Any] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.timeouts.append(kwargs.get("timeout"))
        return super().send(request, **kwargs)


def test_every_request_has_a_timeout_unless_told_otherwise(
    fake: FakeOpsNow, make_auth: Callable[..., OpsNowAuth]
) -> None:
    with OpsNowSession(auth=make_auth()) as s:
        recorder = TimeoutRecorder()
        s.mount("http://", recorder)
        s.get(COMPANIES)
        s.get(COMPANIES, timeout=3)
        s.timeout = None
        s.get(COMPANIES)
    assert recorder.timeouts == [API_TIMEOUT, 3, None]


def test_a_retry_policy_that_retries_401_is_refused_given_or_mounted_later(
    make_session: MakeSession,
) -> None:
    outage = Retry(total=3, status_forcelist=[401, 503])
    with pytest.raises(ValueError, match=r"401 in status_forcelist.*leave 401 out"):
        OpsNowSession("key", retries=outage)
    s = make_session()
    with pytest.raises(ValueError, match="resends the rejected token until it expires"):
        s.mount("https://", requests.adapters.HTTPAdapter(max_retries=outage))
    s.mount("https://", requests.adapters.HTTPAdapter(max_retries=Retry(status_forcelist=[503])))

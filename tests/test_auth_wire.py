"""OpsNowAuth on the wire against FakeOpsNow: caching, refresh, 401 replay, bodies, hosts."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator
from typing import Any, Callable

import pytest
import requests
from requests.adapters import HTTPAdapter
from requests_toolbelt import MultipartEncoder

from requests_opsnow import OpsNowAuth, OpsNowAuthError, ReplaySkippedWarning
from requests_opsnow._lifecycle import REFRESH_JITTER
from requests_opsnow.testing import FakeOpsNow

from .helpers import COMPANIES, FakeClock, MakeAuth, bearer, refresh_threads, wait_until

pytestmark = pytest.mark.timeout(20)


# -- caching ("Token lifecycle") ------------------------------------------------------------


def test_one_token_serves_many_requests_and_sessions(fake: FakeOpsNow, make_auth: MakeAuth) -> None:
    auth = make_auth()
    for _ in range(2):
        with requests.Session() as s:
            s.auth = auth
            for _ in range(3):
                assert s.get(fake.base_url + COMPANIES).status_code == 200
    assert requests.get(fake.base_url + COMPANIES, auth=auth, timeout=5).status_code == 200

    assert fake.token_requests == 1
    assert {bearer(r) for r in fake.api_requests} == {fake.issued_tokens[0]}


def test_get_token_returns_the_cached_token(fake: FakeOpsNow, make_auth: MakeAuth) -> None:
    auth = make_auth()
    assert auth.get_token() == auth.get_token() == fake.issued_tokens[0]
    assert fake.token_requests == 1


def test_invalidate_makes_the_next_request_fetch(
    fake: FakeOpsNow, make_auth: MakeAuth, session: requests.Session
) -> None:
    auth = make_auth()
    session.get(fake.base_url + COMPANIES, auth=auth)
    auth.invalidate()
    session.get(fake.base_url + COMPANIES, auth=auth)
    assert fake.token_requests == 2
    assert [bearer(r) for r in fake.api_requests] == fake.issued_tokens


# -- early refresh ("Token lifecycle") ------------------------------------------------------


def test_token_refreshed_before_expiry_without_the_server_seeing_a_401(
    fake: FakeOpsNow, make_auth: MakeAuth, session: requests.Session, clock: FakeClock
) -> None:
    fake.ttl = 3600
    auth = make_auth(refresh_margin=300)
    session.auth = auth
    first = session.get(fake.base_url + COMPANIES)
    clock.advance(3600 - 300 + 1)  # due, still valid: background refresh
    due = session.get(fake.base_url + COMPANIES)
    assert wait_until(lambda: len(fake.issued_tokens) == 2 and not refresh_threads())
    after = session.get(fake.base_url + COMPANIES)

    assert [r.status_code for r in (first, due, after)] == [200, 200, 200]
    assert [r.history for r in (first, due, after)] == [[], [], []]
    assert fake.token_requests == 2
    assert bearer(fake.api_requests[-1]) == fake.issued_tokens[1]


def test_expired_token_blocks_until_a_new_one_arrives(
    fake: FakeOpsNow, make_auth: MakeAuth, session: requests.Session, clock: FakeClock
) -> None:
    auth = make_auth()
    session.get(fake.base_url + COMPANIES, auth=auth)
    clock.advance(3600)
    response = session.get(fake.base_url + COMPANIES, auth=auth)
    assert response.status_code == 200
    assert fake.token_requests == 2
    assert bearer(fake.api_requests[-1]) == fake.issued_tokens[1]


@pytest.mark.parametrize(
    ("ttl", "margin", "advance", "refreshed"),
    [
        (10, 300, 4.9, False),  # margin capped at half of 10 s: not due yet
        (10, 300, 5.1, True),
        (3600, 0, 3599, False),  # an explicit 0 means "at expiry", not a default
        (3600, 300, 3600 - 300 * (1 + REFRESH_JITTER) - 1, False),  # jitter: due earlier...
        (3600, 300, 3301, True),  # ...never later
    ],
)
def test_refresh_is_due_margin_before_expiry_capped_at_half_lifetime(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    clock: FakeClock,
    ttl: float,
    margin: float,
    advance: float,
    refreshed: bool,
) -> None:
    fake.ttl = ttl
    auth = make_auth(refresh_margin=margin)
    auth.get_token()
    clock.advance(advance)
    auth.get_token()
    assert wait_until(lambda: not refresh_threads())
    assert fake.token_requests == (2 if refreshed else 1)


# -- one replay after a 401 ("Replay after a 401") ------------------------------------------


def test_401_is_replayed_once_with_a_new_token(
    fake: FakeOpsNow, make_auth: MakeAuth, session: requests.Session
) -> None:
    session.auth = make_auth()
    session.get(fake.base_url + COMPANIES)
    fake.revoke_tokens()
    response = session.get(fake.base_url + COMPANIES, params={"page": 2})

    assert response.status_code == 200
    assert response.json()["data"]["page"] == 2
    assert [r.status_code for r in response.history] == [401]
    assert response.history[0].raw.closed
    assert fake.token_requests == 2
    rejected, replayed = fake.api_requests[-2:]
    assert (bearer(rejected), bearer(replayed)) == tuple(fake.issued_tokens)
    assert rejected.query == replayed.query == {"page": ["2"]}


def test_second_401_is_returned_not_replayed(
    fake: FakeOpsNow, make_auth: MakeAuth, session: requests.Session
) -> None:
    response = session.get(fake.base_url + "/test/status/401", auth=make_auth())

    assert response.status_code == 401
    assert [r.status_code for r in response.history] == [401]
    assert len(fake.api_requests) == 2
    assert fake.token_requests == 2


def test_other_errors_are_returned_untouched(
    fake: FakeOpsNow, make_auth: MakeAuth, session: requests.Session
) -> None:
    response = session.get(fake.base_url + "/test/status/403", auth=make_auth())
    assert response.status_code == 403
    assert not response.history
    assert fake.token_requests == 1


def test_replay_keeps_headers_and_cookies(
    fake: FakeOpsNow, make_auth: MakeAuth, session: requests.Session
) -> None:
    session.auth = make_auth()
    session.cookies.set("sid", "abc123")
    session.get(fake.base_url + COMPANIES)
    fake.revoke_tokens()
    session.get(fake.base_url + "/test/echo", headers={"X-Trace": "t-1"})

    rejected, replayed = fake.api_requests[-2:]
    for sent in (rejected, replayed):
        assert sent.header("X-Trace") == "t-1"
        assert sent.header("Cookie") == "sid=abc123"
    assert bearer(replayed) == fake.issued_tokens[-1]


class RecordingAdapter(HTTPAdapter):
    """Records the send options of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[dict[str, Any]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.options.append(dict(kwargs))
        return super().send(request, **kwargs)


def test_replay_uses_the_same_send_options(
    fake: FakeOpsNow, make_auth: MakeAuth, session: requests.Session
) -> None:
    adapter = RecordingAdapter()
    session.mount("http://", adapter)
    session.auth = make_auth()
    session.get(fake.base_url + COMPANIES)
    fake.revoke_tokens()
    options = {"timeout": (3.0, 7.0), "verify": False, "stream": True, "cert": None}
    response = session.get(fake.base_url + COMPANIES, proxies={"ftp": "http://unused"}, **options)
    response.close()

    assert response.history
    rejected, replayed = adapter.options[-2:]
    assert rejected == replayed
    assert replayed["timeout"] == (3.0, 7.0)
    assert replayed["stream"] is True
    assert replayed["verify"] is False


def test_stream_through_a_replay_on_a_one_connection_pool(
    fake: FakeOpsNow, make_auth: MakeAuth, session: requests.Session
) -> None:
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1, pool_block=True))
    session.auth = make_auth()
    session.get(fake.base_url + COMPANIES)
    fake.revoke_tokens()
    with session.get(fake.base_url + COMPANIES, stream=True) as response:
        assert response.status_code == 200
        assert b"Acme" in b"".join(response.iter_content(64))
    assert session.get(fake.base_url + COMPANIES).status_code == 200  # the pool still works


# -- bodies ("Bodies") ----------------------------------------------------------------------


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    "body_kwargs",
    [
        {"data": b"\x00raw bytes\xff"},
        {"data": "text body with unicode: caf\u00e9".encode()},
        {"data": "plain str body"},
        {"json": {"name": "Acme", "tags": ["a", "b"], "n": 1}},
        {"data": {"field": "value", "other": "x y"}},
        {"files": {"upload": ("report.csv", b"a,b\n1,2\n")}},
    ],
    ids=["bytes", "utf8-bytes", "str", "json", "form", "requests-multipart"],
)
def test_replay_resends_the_body_identically(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    session: requests.Session,
    body_kwargs: dict[str, Any],
) -> None:
    session.auth = make_auth()
    session.get(fake.base_url + COMPANIES)
    fake.revoke_tokens()
    response = session.post(fake.base_url + "/test/echo", **body_kwargs)

    assert response.status_code == 200
    assert response.history
    rejected, replayed = fake.api_requests[-2:]
    assert rejected.body == replayed.body
    assert replayed.body
    assert rejected.header("Content-Type") == replayed.header("Content-Type")


def test_file_body_is_rewound_to_where_it_started(
    fake: FakeOpsNow, make_auth: MakeAuth, session: requests.Session, tmp_path: Any
) -> None:
    path = tmp_path / "upload.txt"
    path.write_bytes(b"SKIPPED-HEADER\n" + b"payload line\n" * 100)
    session.auth = make_auth()
    session.get(fake.base_url + COMPANIES)
    fake.revoke_tokens()
    with path.open("rb") as upload:
        upload.readline()  # the caller consumed a header line before sending
        response = session.post(fake.base_url + "/test/echo", data=upload)

    assert response.status_code == 200
    assert response.history
    expected = b"payload line\n" * 100
    assert [r.body for r in fake.api_requests[-2:]] == [expected, expected]
    assert response.json()["data"]["body_sha256"] == _sha(expected)


def _generator_body() -> Iterator[bytes]:
    yield b"chunk-1;"
    yield b"chunk-2;"


def _multipart_body() -> MultipartEncoder:
    return MultipartEncoder(fields={"field": "value", "file": ("a.txt", io.BytesIO(b"data"))})


def _pipe_body() -> Any:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"from a pipe")
    os.close(write_fd)
    return os.fdopen(read_fd, "rb")


@pytest.mark.parametrize(
    "make_body",
    [_generator_body, lambda: iter([b"a", b"b"]), _multipart_body, _pipe_body],
    ids=["generator", "iterator", "MultipartEncoder", "pipe"],
)
def test_unrewindable_body_is_never_resent_and_its_dead_token_is_dropped(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    session: requests.Session,
    caplog: pytest.LogCaptureFixture,
    make_body: Callable[[], Any],
) -> None:
    session.auth = make_auth()
    session.get(fake.base_url + COMPANIES)
    fake.revoke_tokens()

    def upload() -> requests.Response:
        body = make_body()
        headers = {"Content-Type": body.content_type} if isinstance(body, MultipartEncoder) else {}
        try:
            return session.post(fake.base_url + "/test/echo", data=body, headers=headers)
        finally:
            if hasattr(body, "close"):
                body.close()

    with (
        caplog.at_level(logging.WARNING, logger="requests_opsnow"),
        pytest.warns(ReplaySkippedWarning, match="cannot be rewound") as warned,
    ):
        response = upload()
    assert response.status_code == 401
    assert not response.history
    assert [r.path for r in fake.api_requests] == [COMPANIES, "/test/echo"]
    assert fake.api_requests[-1].body  # the one request sent had its whole body
    assert fake.token_requests == 1
    assert "cannot be rewound" in caplog.text
    assert warned[0].filename == __file__  # it points at the caller's line, not at requests

    again = upload()  # the rejected token was dropped: this one gets a new token at once
    assert again.status_code == 200
    assert not again.history
    assert fake.token_requests == 2
    assert bearer(fake.api_requests[-1]) == fake.issued_tokens[-1]


# -- where the token goes ("Where the token goes") ------------------------------------------


def test_redirect_to_another_host_that_answers_401_never_gets_the_token(
    fake: FakeOpsNow, other_host: FakeOpsNow, make_auth: MakeAuth, session: requests.Session
) -> None:
    target = other_host.base_url + "/test/echo"
    response = session.get(
        fake.base_url + "/test/redirect", params={"to": target}, auth=make_auth()
    )

    assert response.status_code == 401
    assert [r.status_code for r in response.history] == [302]
    (foreign,) = other_host.api_requests
    assert foreign.header("Authorization") is None
    assert fake.token_requests == 1
    assert len(fake.api_requests) == 1


def test_request_to_a_host_not_allowed_gets_no_token_and_causes_no_fetch(
    fake: FakeOpsNow, other_host: FakeOpsNow, make_auth: MakeAuth, session: requests.Session
) -> None:
    response = session.get(other_host.base_url + "/test/open/echo", auth=make_auth())
    assert response.status_code == 200
    assert other_host.api_requests[0].header("Authorization") is None
    assert fake.token_requests == 0


def test_allowed_hosts_receive_the_token(
    fake: FakeOpsNow, other_host: FakeOpsNow, make_auth: MakeAuth, session: requests.Session
) -> None:
    auth = make_auth(allowed_hosts=["127.0.0.2"])
    session.get(other_host.base_url + "/test/open/echo", auth=auth)
    assert bearer(other_host.api_requests[0]) == fake.issued_tokens[0]


@pytest.mark.parametrize(
    "url",
    [
        "https://api.opsnow360.io/platform/v2/companies",
        "https://api.kr.opsnow360.io/x",
        "https://opsnow360.io/x",
        "https://api.opsnow.io/x",
        "https://API.OPSNOW360.IO/x",
    ],
)
def test_opsnow_hosts_get_the_token(fake: FakeOpsNow, make_auth: MakeAuth, url: str) -> None:
    prepared = make_auth()(requests.Request("GET", url).prepare())
    assert prepared.headers["Authorization"] == f"Bearer {fake.issued_tokens[0]}"


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        ("API.Example.com", "https://api.example.com/x"),
        ("api.example.com:8443", "https://api.example.com:8443/x"),
        ("*.example.com", "https://deep.api.example.com/x"),
        ("[::1]", "http://[::1]:8080/x"),
    ],
)
def test_allowed_host_entries_are_normalised(
    fake: FakeOpsNow, make_auth: MakeAuth, allowed: str, url: str
) -> None:
    prepared = make_auth(allowed_hosts=[allowed])(requests.Request("GET", url).prepare())
    assert prepared.headers["Authorization"] == f"Bearer {fake.issued_tokens[0]}"


@pytest.mark.parametrize(
    "url",
    [
        "https://opsnow360.io.evil.example/x",
        "https://evilopsnow360.io/x",
        "https://example.com/x",
        "http://127.0.0.3/x",
    ],
)
def test_lookalike_hosts_get_nothing(fake: FakeOpsNow, make_auth: MakeAuth, url: str) -> None:
    prepared = make_auth()(requests.Request("GET", url).prepare())
    assert "Authorization" not in prepared.headers
    assert fake.token_requests == 0


def test_plain_http_to_an_opsnow_host_is_refused(fake: FakeOpsNow, make_auth: MakeAuth) -> None:
    auth = make_auth()
    request = requests.Request("GET", "http://api.opsnow360.io/platform/v2/companies").prepare()
    with pytest.raises(OpsNowAuthError, match="plain http"):
        auth(request)
    assert "Authorization" not in request.headers
    assert fake.token_requests == 0


@pytest.mark.parametrize(
    ("option", "url"),
    [("base_url", "http://api.opsnow360.io"), ("token_url", "http://10.0.0.1/token")],
)
def test_plain_http_endpoint_is_rejected_at_construction(option: str, url: str) -> None:
    with pytest.raises(ValueError, match="https://"):
        OpsNowAuth("key", **{option: url})


@pytest.mark.parametrize(
    ("url", "attached"),
    [
        ("https://internal.corp:8443/x", True),
        ("https://internal.corp:9999/x", False),
        ("https://internal.corp/x", False),  # 443: not the port given
        ("https://api.internal.corp:8443/x", False),
    ],
)
def test_a_port_given_in_allowed_hosts_is_a_port_required(
    fake: FakeOpsNow, make_auth: MakeAuth, url: str, attached: bool
) -> None:
    prepared = make_auth(allowed_hosts=["internal.corp:8443"])(
        requests.Request("GET", url).prepare()
    )
    assert ("Authorization" in prepared.headers) is attached


def test_a_wildcard_with_a_port_requires_the_port_too(
    fake: FakeOpsNow, make_auth: MakeAuth
) -> None:
    auth = make_auth(allowed_hosts=["*.corp.example:8443"])
    for url, attached in [
        ("https://a.corp.example:8443/x", True),
        ("https://a.corp.example/x", False),
    ]:
        prepared = auth(requests.Request("GET", url).prepare())
        assert ("Authorization" in prepared.headers) is attached, url


@pytest.mark.parametrize(
    "entry", ["https://user:s3cret@api.example.com", "user:s3cret@api.example.com", "host:99999"]
)
def test_a_bad_allowed_hosts_entry_is_refused_without_echoing_credentials(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed_hosts") as caught:
        OpsNowAuth("secret-key-value", allowed_hosts=[entry])
    assert "s3cret" not in str(caught.value)

"""An OAuth2 client-credentials token endpoint on FakeOpsNow, for run.py's requests-auth peer.

requests-auth's ``OAuth2ClientCredentials`` cannot send OpsNow's token request
(a JSON ``{"apiKey": ...}``), so to race it against requests-opsnow the fake
server gets an OAuth2 token endpoint of its own: a form POST of
``grant_type=client_credentials`` with the API key as the client secret (in the
form or as the HTTP Basic password), answered with
``{"access_token", "token_type": "Bearer", "expires_in"}``. Its tokens are the
fake's own, so they work on every API path; it keeps its own count, because
``fake.token_requests`` counts only the OpsNow endpoint.

``python benchmarks/oauth_route.py --ttl S --token-delay D`` serves a FakeOpsNow
with this route in a process of its own (run.py's ``fake_server_process(...,
oauth=True)``), printing one line of JSON as ``opsnow fake-server --json`` does;
the route is at ``base_url + OAUTH_PATH``, and ``GET base_url + COUNTS_PATH``
answers the token requests both endpoints have had so far, ``{"opsnow": n,
"oauth": n}``. Ctrl-C (SIGINT) stops it.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import signal
import sys
import threading
from urllib.parse import parse_qs, urlsplit

from requests_opsnow.testing import FakeOpsNow, RecordedRequest, Reply

OAUTH_PATH = "/oauth/token"
COUNTS_PATH = "/bench/token-requests"


class OAuthTokenRoute:
    """The route's handler and its request count (POSTs, failed ones included)."""

    def __init__(self, fake: FakeOpsNow, path: str = OAUTH_PATH) -> None:
        self.url = fake.base_url + path
        self._fake = fake
        self._lock = threading.Lock()
        self._count = 0

    @property
    def token_requests(self) -> int:
        with self._lock:
            return self._count

    def reset_counts(self) -> None:
        with self._lock:
            self._count = 0

    def __call__(self, request: RecordedRequest) -> Reply:
        if request.method != "POST":
            return Reply.opsnow_error(405, Allow="POST")
        with self._lock:
            self._count += 1
        form = parse_qs(request.body.decode("latin-1"))
        if form.get("grant_type") != ["client_credentials"]:
            return Reply.json(400, {"error": "unsupported_grant_type"})
        secret = form.get("client_secret", [None])[0]
        secret = secret or _basic_password(request.header("Authorization"))
        if not _same(secret, self._fake.api_key):
            return Reply.json(401, {"error": "invalid_client"})
        token, ttl = self._fake.issue_token()  # paced by fake.set_token_delay(), as OpsNow's is
        expires_in = int(ttl) if float(ttl).is_integer() else ttl
        return Reply.json(
            200, {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
        )


def add_oauth_token_route(fake: FakeOpsNow, path: str = OAUTH_PATH) -> OAuthTokenRoute:
    """Serve an OAuth2 client-credentials token endpoint at ``path`` on ``fake`` (started)."""
    route = OAuthTokenRoute(fake, path)
    fake.route("*", path, route, authorized=False)
    return route


def _basic_password(authorization: str | None) -> str | None:
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:
        return None
    return decoded.partition(":")[2]


def _same(given: str | None, expected: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())


def main(argv: list[str] | None = None) -> int:
    """A FakeOpsNow with the OAuth2 route, until SIGINT: for a process-separate fake."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--ttl", type=float, default=3600.0, help="token lifetime in seconds")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per token")
    args = parser.parse_args(argv)
    # SIGINT stops it even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with FakeOpsNow(ttl=args.ttl) as fake:
        fake.set_token_delay(args.token_delay)
        oauth = add_oauth_token_route(fake)

        def counts(request: RecordedRequest) -> Reply:
            return Reply.json(200, {"opsnow": fake.token_requests, "oauth": oauth.token_requests})

        fake.route("GET", COUNTS_PATH, counts, authorized=False)
        host = urlsplit(fake.base_url).hostname
        details = {"base_url": fake.base_url, "api_key": fake.api_key, "no_proxy": host}
        print(json.dumps(details), flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            return 0
    return 0  # pragma: no cover - left by Ctrl-C


if __name__ == "__main__":
    sys.exit(main())

"""The ``opsnow`` command line (also ``python -m requests_opsnow``).

Exit codes: 0 ok, 1 API error, 2 usage, 3 authentication or token error.
Errors are one line on stderr (a traceback only with ``--debug``), never the key.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

import requests

from ._config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    PROFILE_ENV,
    REGIONS,
    TOKEN_CACHE_ENV,
    TOKEN_TIMEOUT,
    NoApiKeyError,
    Sources,
    base_url_for_region,
)
from ._version import __version__
from .errors import OpsNowAuthError

if TYPE_CHECKING:
    from .auth import OpsNowAuth
    from .cache import TokenCache
    from .session import OpsNowSession

EXIT_OK, EXIT_API_ERROR, EXIT_USAGE, EXIT_AUTH = 0, 1, 2, 3


class UsageError(Exception):
    """Bad arguments or configuration: exit 2."""


class ApiError(Exception):
    """The API answered with an error status: exit 1."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    try:
        result: int = args.run(args)
        return result
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - every failure becomes one line and an exit code
        return _report(error, debug=args.debug)


def _report(error: Exception, *, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    code = _exit_code(error)
    message = _no_key_message(error) if isinstance(error, NoApiKeyError) else str(error)
    text = " ".join(message.split())  # one line, whatever a server put in its message
    print(f"opsnow: error: {text}", file=sys.stderr)
    return code


def _no_key_message(error: NoApiKeyError) -> str:
    """The missing key's advice in the command line's words (the library's names api_key=)."""
    if error.profile is None:
        return f"no OpsNow API key: set {API_KEY_ENV}, or store one with: opsnow configure"
    return (
        f"no OpsNow API key: profile {error.profile!r} names no key source; set {API_KEY_ENV},"
        f" or store one with: opsnow configure --profile {error.profile}"
    )


def _exit_code(error: Exception) -> int:
    from ._cli_profiles import ConfigureError

    if isinstance(error, (OpsNowAuthError, NoApiKeyError)):
        return EXIT_AUTH  # no key, or the key or its source failed
    if isinstance(error, (UsageError, ConfigureError, ValueError, ImportError)):
        return EXIT_USAGE
    return EXIT_API_ERROR


# -- commands ---------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(sys.stdout)


def _run_token(args: argparse.Namespace) -> int:
    auth = _auth(args)
    try:
        if args.renew:
            auth.invalidate()
        token = auth.get_token_info(fresh=True)
        if args.json:
            print(json.dumps(_token_json(token.value, token.expires_at), indent=2))
        else:
            print(token.value)
    finally:
        auth.close()
    return EXIT_OK


def _token_json(token: str, expires_at: float) -> dict[str, Any]:
    moment = datetime.fromtimestamp(expires_at, tz=timezone.utc)
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_at": moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def _run_request(args: argparse.Namespace) -> int:
    body = _json_body(args.json) if args.json is not None else None
    params = _params(args.param)  # usage errors before any network call
    session, auth = _session(args)
    try:
        auth.get_token_info(fresh=True)  # a due token is refreshed now, not by a thread we'd kill
        response = session.request(args.method.upper(), args.path, params=params, json=body)
        with response:
            _print_body(response)
            if response.status_code >= 400:
                _raise_api_error(response)
    finally:
        session.close()
        auth.close()
    return EXIT_OK


def _run_fake_server(args: argparse.Namespace) -> int:
    import threading

    from .testing import FakeOpsNow

    with FakeOpsNow(port=args.port, ttl=args.ttl) as fake:
        fake.set_token_delay(args.token_delay)
        host = urlsplit(fake.base_url).hostname
        if args.json:  # one line for programs (benchmarks, scripts) to read
            details = {"base_url": fake.base_url, "api_key": fake.api_key, "no_proxy": host}
            print(json.dumps(details), flush=True)
        else:
            print(f"fake OpsNow server on {fake.base_url} (token lifetime {args.ttl:g} s)")
            print(f"export {BASE_URL_ENV}={fake.base_url}")
            print(f"export {API_KEY_ENV}={fake.api_key}")
            print(f"export NO_PROXY={host}${{NO_PROXY:+,$NO_PROXY}}  # never through a proxy")
            print("press Ctrl-C to stop", flush=True)
        threading.Event().wait()  # until KeyboardInterrupt
    return EXIT_OK  # pragma: no cover - left by Ctrl-C


# -- helpers ------------------------------------------------------------------------------


def _base_url(args: argparse.Namespace) -> str | None:
    if args.region is not None:
        if args.base_url is not None:
            raise UsageError("give --base-url or --region, not both")
        return base_url_for_region(args.region)
    base: str | None = args.base_url
    return base


def _auth(args: argparse.Namespace) -> OpsNowAuth:
    """The auth of the command: key and settings from the options, the environment and
    the profile (``--profile``, ``OPSNOW_PROFILE``, ``[default]``), in that order."""
    from .auth import OpsNowAuth

    return OpsNowAuth(
        base_url=_base_url(args),
        cache=_store(args),
        timeout=args.timeout,
        profile=args.profile,
    )


def _store(args: argparse.Namespace) -> TokenCache | None:
    """--no-cache: memory; else OPSNOW_TOKEN_CACHE's or the profile's store (None); else the
    file cache.

    A command runs for a moment: without a store that outlives it, every run
    would fetch a token.
    """
    from .cache import MemoryTokenCache
    from .filecache import FileTokenCache

    if args.no_cache:
        return MemoryTokenCache()
    if os.environ.get(TOKEN_CACHE_ENV, "").strip():
        return None
    profile = Sources(args.profile).profile()
    if profile is not None and profile.token_cache:
        return None
    return FileTokenCache()


def _run_configure(args: argparse.Namespace) -> int:
    from ._cli_profiles import run_configure

    return run_configure(args)


def _run_profiles(args: argparse.Namespace) -> int:
    from ._cli_profiles import run_profiles

    return run_profiles(args)


def _run_status(args: argparse.Namespace) -> int:
    from ._cli_profiles import run_status

    return run_status(args, _base_url(args), _store(args), lambda: _auth(args))


def _run_logout(args: argparse.Namespace) -> int:
    from ._cli_profiles import run_logout

    try:
        auth: OpsNowAuth | None = _auth(args)
    except (NoApiKeyError, OpsNowAuthError):  # no key left to find its cached tokens by
        auth = None
    return run_logout(args, auth)


def _session(args: argparse.Namespace) -> tuple[OpsNowSession, OpsNowAuth]:
    from .session import OpsNowSession

    auth = _auth(args)
    return OpsNowSession(auth=auth, base_url=auth.base_url), auth


def _params(pairs: Sequence[str]) -> list[tuple[str, str]]:
    params = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"-p takes NAME=VALUE, got {pair!r}")
        params.append((name, value))
    return params


def _json_body(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--json is not valid JSON: {exc}") from None


def _print_body(response: requests.Response) -> None:
    try:
        payload = response.json()
    except ValueError:
        if response.text:
            print(response.text)
        return
    print(json.dumps(payload, indent=2, ensure_ascii=False))


def _raise_api_error(response: requests.Response) -> None:
    from .errors import OpsNowAPIError
    from .session import raise_for_opsnow_error

    try:
        raise_for_opsnow_error(response)
    except OpsNowAPIError as error:
        raise ApiError(str(error)) from None


# -- parser ----------------------------------------------------------------------------------


def _add_common_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Options accepted before and after the command; only the top level sets defaults."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--base-url",
        default=default(None),
        help=f"API base URL (default: ${BASE_URL_ENV}, else the profile's, else global)",
    )
    parser.add_argument(
        "--region",
        choices=sorted(REGIONS),
        default=default(None),
        help="API region instead of a URL",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(TOKEN_TIMEOUT),
        help="token request timeout in seconds",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        default=default(False),
        help="do not use the token file cache",
    )
    parser.add_argument(
        "--profile",
        default=default(None),
        help=f"the profile to use (default: ${PROFILE_ENV}, else [default])",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="log to stderr, show tracebacks",
    )


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, defaults=False)

    parser = argparse.ArgumentParser(
        prog="opsnow",
        description=f"Call the OpsNow API with automatic token handling. The API key comes"
        f" from ${API_KEY_ENV}, else from a profile (opsnow configure).",
        epilog="exit codes: 0 ok, 1 API error, 2 usage, 3 authentication or token error",
    )
    _add_common_options(parser, defaults=True)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, run: Callable[[argparse.Namespace], int], text: str, example: str
    ) -> Any:
        sub = commands.add_parser(
            name, help=text, description=text, epilog=f"example:\n  {example}",
            parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        sub.set_defaults(run=run)
        return sub

    command(
        "demo", _run_demo,
        "walk through token handling against an embedded fake server (no key needed)",
        "opsnow demo",
    )  # fmt: skip
    token = command(
        "token", _run_token,
        "print a valid token (cached in a file, so repeated calls do not fetch)",
        'curl -H "Authorization: Bearer $(opsnow token)" https://api.opsnow360.io/...',
    )  # fmt: skip
    token.add_argument("--json", action="store_true", help="print JSON with the expiry")
    token.add_argument(
        "--renew", action="store_true", help="forget the cached token and fetch a new one"
    )

    get = command("get", _run_request, "GET an API path and print the JSON",
                  "opsnow get /platform/v2/companies -p page=2")  # fmt: skip
    get.set_defaults(method="GET", json=None)
    post = command("post", _run_request, "POST JSON to an API path and print the JSON",
                   "opsnow post /platform/v2/things --json '{\"name\": \"x\"}'")  # fmt: skip
    post.set_defaults(method="POST")
    request = command("request", _run_request, "send any method to an API path",
                      "opsnow request DELETE /platform/v2/things/42")  # fmt: skip
    request.add_argument("method", help="HTTP method, e.g. GET, PUT, DELETE")
    for sub in (get, post, request):
        sub.add_argument("path", help="API path, e.g. /platform/v2/companies")
        sub.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                         help="query parameter (repeatable)")  # fmt: skip
    for sub in (post, request):
        sub.add_argument("--json", metavar="JSON", help="request body as JSON text")

    configure = command(
        "configure", _run_configure,
        "store a profile: its key (asked for without echo) and its region",
        "opsnow configure --profile kr --region kr",
    )  # fmt: skip
    configure.add_argument(
        "--api-key-command", metavar="COMMAND",
        help="read the key from the first line of this command's output (Vault, 1Password,"
        " pass...), run without a shell, once per process that needs it",
    )  # fmt: skip
    configure.add_argument(
        "--insecure-storage", action="store_true",
        help="keep the key in a 0600 plaintext file when there is no OS keyring",
    )  # fmt: skip
    configure.add_argument(
        "--token-cache", metavar="VALUE",
        help=f"the profile's token cache (the values ${TOKEN_CACHE_ENV} takes)",
    )  # fmt: skip
    configure.add_argument(
        "--no-verify", action="store_true", help="do not check the key with a token request"
    )
    command("profiles", _run_profiles, "list profiles, their region and key source (never a key)",
            "opsnow profiles")  # fmt: skip
    command("status", _run_status,
            "show the profile, base URL, key source, token cache and cached token's expiry",
            "opsnow --profile kr status")  # fmt: skip
    command("logout", _run_logout, "delete a profile's stored key and its cached tokens",
            "opsnow logout --profile kr")  # fmt: skip

    fake = command("fake-server", _run_fake_server,
                   "run the fake OpsNow server for local work; prints its URL and test key",
                   "opsnow fake-server --port 8080 --ttl 60")  # fmt: skip
    fake.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    fake.add_argument("--ttl", type=float, default=3600.0, help="token lifetime in seconds")
    fake.add_argument(
        "--token-delay", type=float, default=0.0, help="seconds each token request takes"
    )
    fake.add_argument(
        "--json",
        action="store_true",
        help="print one JSON line (base_url, api_key, no_proxy) instead of shell exports",
    )
    return parser

"""``opsnow configure``, ``profiles``, ``status`` and ``logout``: profiles from the command line.

No key is ever printed, and none goes into the config file: ``configure``
reads it without echo (``getpass``) and keeps it in the OS keyring, or leaves
it to an ``api_key_command``, or (only with ``--insecure-storage``) writes it
to a 0600 ``credentials`` file.
"""

from __future__ import annotations

import argparse
import getpass
import os
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from ._config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    KEY_FILE_ENV,
    PROFILE_ENV,
    REGIONS,
    TOKEN_CACHE_ENV,
    NoApiKeyError,
    Sources,
)
from ._hosts import safe_place, safe_url
from ._profiles import (
    DEFAULT_PROFILE,
    Profile,
    api_key_of,
    check_profile,
    config_path,
    credentials_path,
    delete_key,
    keyring_problem,
    named_profile,
    read_profiles,
    save_profile,
    store_in_keyring,
)
from .errors import ApiKeyUnavailableError

if TYPE_CHECKING:
    from .auth import OpsNowAuth
    from .cache import TokenCache


class ConfigureError(Exception):
    """``opsnow configure`` cannot do what was asked: a usage error (exit 2)."""


def run_configure(args: argparse.Namespace) -> int:
    name = args.profile or DEFAULT_PROFILE
    source = _key_source(args)
    region, base_url = _where(args)
    profile = Profile(
        name=name,
        region=region,
        base_url=base_url,
        token_cache=args.token_cache,
        api_key_source=source,
        api_key_command=args.api_key_command,
    )
    check_profile(profile)  # what the library would not read back: before any key is asked
    # A command is run now: it works, or the error says why.
    api_key = api_key_of(profile) if source == "command" else _ask_key(name)
    if not args.no_verify:
        _verify(profile, api_key or "", args.timeout)
    if source == "keyring":
        store_in_keyring(profile, api_key or "")  # first: if refused, no profile is saved
    path = save_profile(profile, api_key if source == "plaintext" else None)
    where = {
        "keyring": "in the OS keyring",
        "command": f"from: {args.api_key_command}",
        "plaintext": f"in {credentials_path()} (0600)",
    }[source]
    print(f"profile {name!r} saved in {path}; its key {where}")
    return 0


def _key_source(args: argparse.Namespace) -> str:
    if args.api_key_command:
        return "command"
    if args.insecure_storage:
        return "plaintext"
    problem = keyring_problem()
    if problem is not None:
        raise ConfigureError(
            f"cannot store the key: {problem}. Read it from a password manager with"
            " --api-key-command 'pass show opsnow' (for instance), keep it in a 0600 file"
            f" with --insecure-storage ({credentials_path()}), or set {API_KEY_ENV}"
        )
    return "keyring"


def _ask_key(name: str) -> str:
    key = getpass.getpass(f"OpsNow API key for profile {name!r} (not echoed): ").strip()
    if not key:
        raise ConfigureError("no key given; nothing was saved")
    return key


def _where(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``(region, base_url)``: from the options, else asked for."""
    if args.base_url is not None and args.region is not None:
        raise ConfigureError("give --base-url or --region, not both")
    if args.base_url is not None:
        return None, args.base_url.rstrip("/")
    if args.region is not None:
        return args.region, None
    answer = input(f"Region ({', '.join(sorted(REGIONS))}) [global]: ").strip().lower()
    region = answer or "global"
    if region not in REGIONS:
        raise ConfigureError(
            f"unknown region {region!r}; choose one of {', '.join(sorted(REGIONS))}"
        )
    return region, None


def _verify(profile: Profile, api_key: str, timeout: float) -> None:
    """One token request with the new key; nothing is saved if it is refused."""
    from .auth import OpsNowAuth
    from .cache import MemoryTokenCache

    base_url = profile.base_url or REGIONS[profile.region or "global"]
    OpsNowAuth(api_key, base_url=base_url, cache=MemoryTokenCache(), timeout=timeout).get_token()


def run_profiles(args: argparse.Namespace) -> int:
    profiles = read_profiles()
    if not profiles:
        print(f"no profiles in {config_path()}; create one with: opsnow configure")
        return 0
    active = args.profile or os.environ.get(PROFILE_ENV, "").strip() or DEFAULT_PROFILE
    for name in sorted(profiles):
        profile = profiles[name]
        marker = "*" if name == active else " "
        where = (
            safe_url(profile.base_url)
            if profile.base_url
            else f"region {profile.region or 'global'}"
        )
        source = _describe_source(profile)
        cache = f", token cache {safe_place(profile.token_cache)}" if profile.token_cache else ""
        print(f"{marker} {name}: {where}, key {source}{cache}")
    return 0


def _describe_source(profile: Profile) -> str:
    if profile.api_key_source == "command" or (
        profile.api_key_source is None and profile.api_key_command
    ):
        return f"from the command {profile.api_key_command!r}"
    return {
        "keyring": "in the OS keyring",
        "plaintext": f"in {credentials_path()}",
    }.get(profile.api_key_source or "", "not configured")


def run_status(
    args: argparse.Namespace,
    base_url: str | None,
    store: TokenCache | None,
    build_auth: Callable[[], OpsNowAuth],
) -> int:
    """What the commands would use. Without a key, what is known all the same, why there
    is none and the command that fixes it; then the error (exit 3)."""
    sources = Sources(args.profile)
    profile = sources.profile()
    print(f"profile: {profile.name if profile is not None else '(none)'}")
    url = sources.base_url(base_url)
    print(f"base URL: {safe_url(url)}")
    region = next((name for name, known in REGIONS.items() if known == url), None)
    if region is not None:
        print(f"region: {region}")
    if base_url is None and os.environ.get(BASE_URL_ENV, "").strip():
        print(f"(base URL from {BASE_URL_ENV})")
    key_file = os.environ.get(KEY_FILE_ENV, "").strip()
    if os.environ.get(API_KEY_ENV, "").strip():
        print(f"key: from {API_KEY_ENV}")
    elif key_file:
        print(f"key: the first line of {key_file} ({KEY_FILE_ENV})")
    else:
        print(f"key: {_describe_source(profile) if profile is not None else 'not configured'}")
    place = sources.store_place() if store is None else None
    print(f"token cache: {store!r}" if store is not None else f"token cache: {_place(place)}")
    if store is None and os.environ.get(TOKEN_CACHE_ENV, "").strip():
        print(f"(token cache from {TOKEN_CACHE_ENV})")
    try:
        auth = build_auth()
    except (NoApiKeyError, ApiKeyUnavailableError) as error:
        if isinstance(error, ApiKeyUnavailableError):
            print(f"key problem: {error}")
        print(f"to fix: {_fix(profile)}")
        raise
    try:
        token = auth.cached_token()
    finally:
        auth.close()
    if token is None:
        print("cached token: none")
    else:
        print(f"cached token: expires {_moment(token.expires_at)}, from the {token.source} store")
        print(f"  obtained {_moment(token.issued_at)}; refresh due by {_moment(token.refresh_at)}")
    return 0


def _moment(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")


def _place(place: str | None) -> str:
    return safe_place(place) if place is not None else "memory"


def _fix(profile: Profile | None) -> str:
    """The command that stores a key for ``profile`` where it looks for one."""
    if profile is None:
        return f"opsnow configure (or set {API_KEY_ENV})"
    option = {
        "plaintext": " --insecure-storage",
        "command": " --api-key-command COMMAND",
    }.get(profile.api_key_source or ("command" if profile.api_key_command else ""), "")
    return f"opsnow configure --profile {profile.name}{option}"


def run_logout(args: argparse.Namespace, auth: OpsNowAuth | None) -> int:
    # The profile the other commands use (--profile, OPSNOW_PROFILE, [default]); a name
    # that matches none is an error, as it is for them.
    profile = named_profile(args.profile) or named_profile(DEFAULT_PROFILE)
    assert profile is not None  # named_profile raises for a missing name
    if auth is not None:
        auth.invalidate()  # the cached tokens of that key, wherever they are kept
    removed = delete_key(profile)
    what = "its stored key and cached token" if removed else "its cached token"
    print(f"profile {profile.name!r}: forgot {what}")
    return 0

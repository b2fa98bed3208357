"""Where the token may go: which hosts get it, and over which schemes.

A request gets the token only if its host is one of OpsNow's or one the user
allowed; and only over https, or plain http to a loopback address.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import OpsNowAuthError

OPSNOW_DOMAINS = ("opsnow360.io", "opsnow.io")
"""Every host in these domains (and the domains themselves) may receive the token."""

_DECISION_CACHE_SIZE = 256


class Decision(enum.Enum):
    ATTACH = "attach"  # a trusted host over https
    ATTACH_CLEARTEXT = "attach over plain http"  # a trusted loopback host: check the next hop
    SKIP = "skip"  # not a host of ours: the request passes untouched
    REFUSE = "refuse"  # a trusted host over plain http, not loopback: never


def safe_url(url: str) -> str:
    """``url`` without userinfo, query or fragment (they may carry secrets): fit for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": a "[" in the host part
        return "(a malformed URL)"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def route(method: str, url: str) -> str:
    """What a 401 is remembered by (``docs/design.md``, "Replay after a 401"): the method and
    the message-safe URL."""
    return f"{method} {safe_url(url)}"


def safe_place(url: str) -> str:
    """A proxy or Redis URL fit for messages: its scheme and what follows the last ``@``.

    Unlike :func:`safe_url`, it does not trust URL parsing to find the userinfo: a
    password may hold ``/``, ``?`` or ``#``, and a mistyped URL (``redis:/:pw@host``)
    has no netloc at all. These URLs have no ``@`` in their paths to lose.
    """
    _, at, after = url.rpartition("@")
    if not at:
        return safe_url(url)
    scheme, colon, _ = url.partition(":")
    is_scheme = colon and scheme[:1].isalpha() and scheme.isascii() and scheme.isalnum()
    return safe_url(f"{scheme}://{after}" if is_scheme else after)


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_secure_url(url: str, what: str) -> None:
    """Raise ValueError unless ``url`` is https, or http to a loopback host."""
    if not _is_secure(url):
        raise ValueError(
            f"{what} must be an https:// URL (plain http only to loopback hosts),"
            f" got {safe_url(url)!r}"
        )


def check_root(base_url: str) -> None:
    """Raise ValueError for a base URL that already holds the API's path (the token URL,
    base_url + ``/platform/v2/...``, would double it, and the key would take the blame)."""
    path = urlsplit(base_url).path.rstrip("/")
    if path.endswith(("/platform", "/platform/v2")):
        raise ValueError(
            f"base_url must be the API's root, without {path[path.rfind('/platform') :]}"
            f" (such as https://api.opsnow360.io), got {safe_url(base_url)!r}"
        )


@functools.lru_cache(maxsize=_DECISION_CACHE_SIZE)
def _is_secure(url: str) -> bool:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return (parts.scheme == "https" and bool(host)) or (
        parts.scheme == "http" and is_loopback(host)
    )


def _origin(url: str) -> str:
    """``scheme://netloc`` of a URL: cheap string work, so the memo works for any path."""
    start = url.find("://")
    if start < 0:
        return url
    start += 3
    end = url.find("/", start)
    origin = url[:end] if end >= 0 else url
    if "?" in origin or "#" in origin:  # "https://host?query" has no "/" before its query
        for delimiter in "?#":
            found = origin.find(delimiter, start)
            if found >= 0:
                origin = origin[:found]
    return origin


_DEFAULT_PORTS = {"https": 443, "http": 80}


def _allowed_entry(entry: str) -> tuple[str, int | None]:
    """``(host, port)`` from an ``allowed_hosts`` entry: ``host``, ``*.domain``, ``host:port``.

    A port given is a port required (None: any port). The host of ``*.domain`` is
    kept as ``*.domain``.
    """
    text = entry.strip().lower()
    if "://" in text or "/" in text:
        raise ValueError(f"allowed_hosts takes host names, not URLs: {safe_url(entry)!r}")
    wildcard = text.startswith("*.")
    try:
        parts = urlsplit("//" + (text[2:] if wildcard else text))
        port = parts.port
    except ValueError:
        raise ValueError(f"allowed_hosts entry is not a host or host:port: {text!r}") from None
    host = (parts.hostname or "").rstrip(".")
    if not host or "@" in text:
        raise ValueError(f"allowed_hosts entry names no host: {safe_url('//' + text)!r}")
    return ("*." + host if wildcard else host), port


@functools.lru_cache(maxsize=_DECISION_CACHE_SIZE)
def host_policy(trusted_urls: tuple[str, ...], extra_hosts: tuple[str, ...]) -> HostPolicy:
    """The policy for these URLs and hosts, shared (with its memo) by every auth that uses it."""
    return HostPolicy(trusted_urls, extra_hosts)


class HostPolicy:
    """Decides, per URL, whether to attach the token, skip, or refuse.

    Decisions are memoised per URL and per origin (scheme and network
    location), so the check on every request is one or two dictionary lookups.
    """

    def __init__(self, trusted_urls: Iterable[str], extra_hosts: Iterable[str]) -> None:
        entries: set[tuple[str, int | None]] = {
            ((urlsplit(url).hostname or "").rstrip("."), None) for url in trusted_urls
        }
        entries.update(_allowed_entry(entry) for entry in extra_hosts)
        entries.discard(("", None))
        self._hosts = frozenset(entry for entry in entries if not entry[0].startswith("*."))
        self._suffixes = tuple(
            ("." + host[2:], port) for host, port in entries if host.startswith("*.")
        ) + tuple(("." + domain, None) for domain in OPSNOW_DOMAINS)
        self._decisions: dict[str, Decision] = {}

    def decide(self, url: str) -> Decision:
        decision = self._decisions.get(url)  # the same URL again: one lookup
        if decision is None:
            origin = _origin(url)
            decision = self._decisions.get(origin)
            if decision is None:
                decision = self._decide(origin)
            if len(self._decisions) >= _DECISION_CACHE_SIZE:
                self._decisions.clear()
            self._decisions[origin] = self._decisions[url] = decision
        return decision

    def _decide(self, origin: str) -> Decision:
        try:
            parts = urlsplit(origin)
            host = (parts.hostname or "").rstrip(".")
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError:  # not a URL requests would send: not a host of ours either
            return Decision.SKIP
        if not self._trusts(host, port):
            return Decision.SKIP
        if parts.scheme == "https":
            return Decision.ATTACH
        if parts.scheme == "http" and is_loopback(host):
            return Decision.ATTACH_CLEARTEXT
        return Decision.REFUSE

    def _trusts(self, host: str, port: int | None) -> bool:
        if (host, None) in self._hosts or (host, port) in self._hosts or host in OPSNOW_DOMAINS:
            return True
        return any(
            host.endswith(suffix) and allowed in (None, port) for suffix, allowed in self._suffixes
        )


_PROXY_VARIABLES = tuple(
    name
    for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for name in (base, base.upper())
)


def environment_proxy(url: str) -> str | None:
    """The proxy the environment (``HTTP_PROXY``, ``NO_PROXY``...) would send ``url`` to, if any.

    Asked on every plain-http request to loopback, so remembered per origin and
    per value of the proxy variables (requests takes a couple of hundred
    microseconds to work it out).
    """
    settings = tuple(map(os.environ.get, _PROXY_VARIABLES))
    if not any(settings):
        return None
    return _proxy_for(_origin(url), settings)


@functools.lru_cache(maxsize=_DECISION_CACHE_SIZE)
def _proxy_for(origin: str, settings: tuple[str | None, ...]) -> str | None:
    from requests.utils import get_environ_proxies, select_proxy

    proxy: str | None = select_proxy(origin, get_environ_proxies(origin))
    return proxy


def check_cleartext(url: str, decision: Decision, request: Any = None) -> None:
    """Refuse to put the token on plain http, except straight to loopback (and not through
    a proxy the environment names)."""
    if decision is Decision.REFUSE:
        raise OpsNowAuthError(
            "refusing to send the OpsNow token over plain http to a non-loopback host; use https",
            request=request,
        )
    proxy = environment_proxy(url)
    if proxy is not None:
        raise OpsNowAuthError(
            f"refusing to send the OpsNow token over plain http to {safe_url(url)} through the"
            f" proxy {safe_place(proxy)} (from the environment); add the host to NO_PROXY",
            request=request,
        )

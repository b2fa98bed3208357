"""Where the token may go: which hosts get it, and over which schemes.

A request gets the token only if its host is one of OpsNow's or one the user
allowed; and only over https, or plain http to a loopback address.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

OPSNOW_DOMAINS = ("opsnow360.io", "opsnow.io")
"""Every host in these domains (and the domains themselves) may receive the token."""

_DECISION_CACHE_SIZE = 256


class Decision(enum.Enum):
    ATTACH = "attach"
    SKIP = "skip"
    REFUSE = "refuse"


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_secure_url(url: str, what: str) -> None:
    """Raise ValueError unless ``url`` is https, or http to a loopback host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and is_loopback(host):
        return
    raise ValueError(
        f"{what} must be an https:// URL (plain http only to loopback hosts), got {url!r}"
    )


class HostPolicy:
    """Decides, per URL, whether to attach the token, skip, or refuse.

    Decisions are memoised per scheme and network location, so the check on
    every request is one dictionary lookup.
    """

    def __init__(self, trusted_urls: Iterable[str], extra_hosts: Iterable[str]) -> None:
        hosts = {urlsplit(url).hostname or "" for url in trusted_urls}
        hosts.update(host.strip().lower() for host in extra_hosts)
        hosts.discard("")
        self._exact = frozenset(host for host in hosts if not host.startswith("*."))
        self._suffixes = tuple("." + host[2:] for host in hosts if host.startswith("*.")) + tuple(
            "." + domain for domain in OPSNOW_DOMAINS
        )
        self._decisions: dict[tuple[str, str], Decision] = {}

    def decide(self, url: str) -> Decision:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(parts.scheme, (parts.hostname or "").rstrip("."))
            if len(self._decisions) >= _DECISION_CACHE_SIZE:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def trusts(self, host: str) -> bool:
        host = host.lower()
        return host in self._exact or host in OPSNOW_DOMAINS or host.endswith(self._suffixes)

    def _decide(self, scheme: str, host: str) -> Decision:
        if not self.trusts(host):
            return Decision.SKIP
        if scheme == "https" or (scheme == "http" and is_loopback(host)):
            return Decision.ATTACH
        return Decision.REFUSE

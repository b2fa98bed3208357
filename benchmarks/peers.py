"""The alternatives users would otherwise pick, for comparison in run.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import Any

import httpx
import requests
from requests.auth import AuthBase


class StaticBearerAuth(AuthBase):
    """The baseline: a fixed token pasted into the header (what users do today)."""

    def __init__(self, token: str) -> None:
        self.header = f"Bearer {token}"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self.header
        return r


class NaiveTokenAuth(AuthBase):
    """The typical hand-written helper: "fetch a token if it has expired".

    No lock, so concurrent callers that see an expired token all fetch.
    """

    def __init__(self, token_url: str, api_key: str, margin: float = 60.0) -> None:
        self.token_url = token_url
        self.api_key = api_key
        self.margin = margin
        self.token: str | None = None
        self.expires_at = 0.0

    def _fetch(self) -> None:
        response = requests.post(self.token_url, json={"apiKey": self.api_key}, timeout=10)
        response.raise_for_status()
        data = response.json()["data"]
        self.token = data["accessToken"]
        self.expires_at = time.time() + float(data["expiresIn"])

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.token is None or time.time() > self.expires_at - self.margin:
            self._fetch()
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


class BlockingRefreshAuth(NaiveTokenAuth):
    """The careful hand-written helper: one fetch at a time, but everyone waits for it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.token is None or time.time() > self.expires_at - self.margin:
            with self._lock:
                if self.token is None or time.time() > self.expires_at - self.margin:
                    self._fetch()
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


class StaticBearerHttpxAuth(httpx.Auth):
    """The httpx baseline: a fixed token in the header, as an ``httpx.Auth``.

    Only the sync flow is written, as users write it; httpx drives the same
    generator for ``httpx.AsyncClient``.
    """

    def __init__(self, token: str) -> None:
        self.header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self.header
        yield request

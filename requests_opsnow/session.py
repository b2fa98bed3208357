"""OpsNowSession: a requests session for the OpsNow API, and OpsNow error responses.

A requests-toolbelt ``BaseUrlSession`` with :class:`~requests_opsnow.OpsNowAuth`
set, a ``User-Agent`` naming this package, a bounded retry policy and
responses whose ``raise_for_status()`` raises :class:`OpsNowAPIError`::

    with OpsNowSession() as s:                       # $OPSNOW_API_KEY, $OPSNOW_BASE_URL
        s.get("/platform/v2/companies").raise_for_status()

**Paths** are relative to the base URL *including its path*. With
``base_url="https://gateway.example/opsnow"`` both ``/platform/v2/companies``
and ``platform/v2/companies`` reach ``https://gateway.example/opsnow/platform/v2/companies``,
the rule OpsNowAuth uses for the token URL. (BaseUrlSession's ``urljoin``
would drop ``/opsnow`` for the leading-slash form.) Absolute URLs are used as
given.

**Retries** (a urllib3 ``Retry`` on the session's http:// and https:// adapters):

- 429, on any method (POST too): the server turned the request away unprocessed;
- 502, 503 and 504 on idempotent methods only (urllib3's
  ``Retry.DEFAULT_ALLOWED_METHODS``): a POST may already have taken effect;
- connection errors by urllib3's rules: a failed connect on any method
  (nothing was sent), a connection dropped after sending on idempotent
  methods only;
- never: read timeouts (so requests' ``ReadTimeout`` still arrives after one
  timeout), TLS errors, and requests whose body cannot be rewound (generator,
  iterator, toolbelt ``MultipartEncoder``, pipe), which urllib3 would resend
  empty. These are the body rules of the 401 replay.

``Retry-After`` is honoured up to :data:`RETRY_AFTER_MAX`; a longer one is not
waited for. Without it the waits are 0, 1, 2 s (:data:`RETRY_BACKOFF_FACTOR`).
When the retries run out, the last response is returned, not an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from requests.utils import resolve_proxies, select_proxy
from requests_toolbelt.sessions import BaseUrlSession
from requests_toolbelt.utils.user_agent import user_agent
from urllib3.exceptions import InvalidHeader, MaxRetryError, ReadTimeoutError, ResponseError
from urllib3.util.retry import Retry

from . import _clock
from ._config import API_TIMEOUT, resolve_base_url
from ._hosts import safe_place, safe_url
from ._protocol import read_error_body, reason_phrase
from ._replay import AfterAReplay, unreplayable_body
from ._version import __version__
from .auth import OpsNowAuth
from .errors import OpsNowAPIError, OpsNowAuthError

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self, Unpack
    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

    from ._config import AuthOptions

__all__ = ["OpsNowSession", "raise_for_opsnow_error"]

USER_AGENT: str = user_agent(
    "requests-opsnow", __version__, extras=[("requests", requests.__version__)]
)
"""``requests-opsnow/<version> requests/<version> CPython/<version> <OS>/<release>``."""

RETRY_TOTAL = 3
"""Retries per request, all causes together (so at most four attempts). ``retries=`` overrides."""

RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""Statuses that are retried: 429 on any method, the others on idempotent methods only."""

RETRY_ANY_METHOD_STATUSES = frozenset({429})
"""Of :data:`RETRY_STATUSES`, those retried on any method: the request was not processed."""

RETRY_BACKOFF_FACTOR = 0.5
"""urllib3's exponential backoff factor: no wait before the first retry, then 1 s, 2 s, 4 s..."""

RETRY_BACKOFF_MAX = 10.0
"""The longest backoff wait, in seconds (urllib3's own cap is 120)."""

RETRY_AFTER_MAX = 60.0
"""The longest ``Retry-After`` waited for, in seconds; a longer one returns the response at once."""

MESSAGE_MAX = 300
"""Characters of the server's error message kept in an :class:`OpsNowAPIError`."""


class _OpsNowRetry(Retry):
    """urllib3's ``Retry`` with the rules of the module docstring.

    ``Retry.new()`` builds the next state with ``type(self)(...)`` (urllib3 1.26
    and 2.x), so the subclass survives every retry.
    """

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code in RETRY_ANY_METHOD_STATUSES and status_code in self.status_forcelist:
            return True  # urllib3 would check the method first
        return super().is_retry(method, status_code, has_retry_after)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        if isinstance(error, ReadTimeoutError):
            # As requests' own default (read=False): ReadTimeout after one timeout.
            raise error.with_traceback(_stacktrace)
        if response is not None and error is None and self.respect_retry_after_header:
            wait = self.get_retry_after(response)
            if wait is not None and wait > RETRY_AFTER_MAX:
                # Exhausted: urllib3 returns this response (raise_on_status=False).
                reason = f"Retry-After {wait:g} s is longer than {RETRY_AFTER_MAX:g} s"
                raise MaxRetryError(_pool, url, ResponseError(reason))  # type: ignore[arg-type]
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        try:
            return super().get_retry_after(response)
        except InvalidHeader:  # an unreadable Retry-After: back off instead
            return None

    def get_backoff_time(self) -> float:
        return min(super().get_backoff_time(), RETRY_BACKOFF_MAX)

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        # urllib3's sleep, through the package's one clock so tests need not wait.
        if self.respect_retry_after_header and response is not None:
            wait = self.get_retry_after(response)
            if wait:
                _clock.sleep(wait)
                return
        backoff = self.get_backoff_time()
        if backoff > 0:
            _clock.sleep(backoff)


def check_retry_policy(retry: object) -> None:
    """Refuse a urllib3 ``Retry`` with 401 in ``status_forcelist``: urllib3 would resend a
    rejected token itself and raise ``RetryError`` before the auth saw the 401, on every
    call, until the token expired: an outage of up to an hour, not one failed call."""
    if isinstance(retry, Retry) and 401 in (retry.status_forcelist or ()):
        raise ValueError(
            "a retry policy with 401 in status_forcelist resends the rejected token until it"
            " expires (every call fails, up to an hour); leave 401 out: OpsNowAuth replaces"
            " the token and replays the request once"
        )


def _retry_policy(retries: int | Retry | None) -> Retry:
    if isinstance(retries, Retry):
        check_retry_policy(retries)
        return retries
    if retries is None:
        retries = RETRY_TOTAL
    elif isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int or a urllib3 Retry, not {type(retries).__name__}")
    elif retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    return _OpsNowRetry(
        total=retries,
        other=0,  # TLS and other errors: a certificate failure does not heal in a second
        allowed_methods=Retry.DEFAULT_ALLOWED_METHODS,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=RETRY_BACKOFF_FACTOR,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


class _RetryingAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` with a retry policy that sends a body it cannot rewind only once.

    urllib3 rewinds a file body before a retry but resends an exhausted
    generator as an empty body; such requests go through a plain adapter.
    """

    def __init__(self, retry: Retry) -> None:
        super().__init__(max_retries=retry)
        self._once = HTTPAdapter()

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if unreplayable_body(request):
            return self._once.send(request, *args, **kwargs)
        return super().send(request, *args, **kwargs)

    def close(self) -> None:
        # cast: the type stubs of some requests releases leave close() untyped.
        cast(Any, super()).close()
        cast(Any, self._once).close()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        self._once = HTTPAdapter()


class OpsNowSession(BaseUrlSession):  # type: ignore[misc]  # requests-toolbelt is untyped
    """A ``requests.Session`` for the OpsNow API; see the module docstring.

    ``auth`` is used as given (then ``api_key`` and OpsNowAuth options other than
    ``base_url`` must not be); otherwise an :class:`OpsNowAuth` is built from
    ``api_key`` and the options (``AuthOptions``, declared once for every auth).
    ``base_url`` defaults to the auth's.
    ``retries``: ``None`` for the default policy, an int for that many
    retries under it (``0``: none), or a urllib3 ``Retry`` used as given.
    ``close()`` also closes an OpsNowAuth the session built itself.
    ``timeout`` (default :data:`API_TIMEOUT`) applies to every request that
    gives none; set it to ``None`` to wait forever, as plain requests does.
    """

    __attrs__ = (*requests.Session.__attrs__, "base_url", "_own_auth", "timeout")

    def __init__(
        self,
        api_key: str | None = None,
        *,
        auth: OpsNowAuth | None = None,
        retries: int | Retry | None = None,
        verify: bool | str | None = None,
        cert: str | tuple[str, str] | None = None,
        proxies: Mapping[str, str] | None = None,
        **options: Unpack[AuthOptions],
    ) -> None:
        base_url = options.get("base_url")
        if auth is not None and (api_key is not None or set(options) - {"base_url"}):
            raise TypeError("give auth= or api_key= and OpsNowAuth options, not both")
        retry = _retry_policy(retries)
        own_auth = None
        if auth is None:
            auth = own_auth = OpsNowAuth(api_key, **options)
        root = auth.base_url if base_url is None else resolve_base_url(base_url)
        super().__init__(base_url=root + "/")
        self.auth = auth
        self._own_auth = own_auth
        self.timeout: float | tuple[float, float] | None = API_TIMEOUT
        self.headers["User-Agent"] = USER_AGENT
        if verify is not None:
            self.verify = verify
        if cert is not None:
            self.cert = cert
        if proxies is not None:
            self.proxies.update(proxies)
        self.mount("https://", _RetryingAdapter(retry))
        self.mount("http://", _RetryingAdapter(retry))
        self._share_settings_with_own_auth()

    def mount(self, prefix: str, adapter: BaseAdapter) -> None:
        """As requests does, but refusing a retry policy that would retry a 401 itself (see
        :func:`check_retry_policy`)."""
        check_retry_policy(getattr(adapter, "max_retries", None))
        super().mount(prefix, adapter)

    def _share_settings_with_own_auth(self) -> None:
        # The auth this session built sends its token requests with this session's
        # verify, cert, proxies and trust_env, as they are at each fetch. A shallow copy
        # of the session shares that auth: it keeps following the original.
        if self._own_auth is not None:
            self._own_auth.follow_settings_of(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._share_settings_with_own_auth()

    def merge_environment_settings(
        self,
        url: str | bytes | None,
        proxies: Mapping[str, str] | None,
        stream: bool | None,
        verify: bool | str | None,
        cert: Any,
    ) -> dict[str, Any]:
        """As requests does, except that a CA bundle set on the session beats the environment.

        Plain requests lets ``REQUESTS_CA_BUNDLE`` override ``session.verify``; here
        ``session.verify = "corp-ca.pem"`` means that file, for the API requests as
        for the token requests of the session's auth.
        """
        if verify is None and self.verify is not True:
            verify = self.verify
        settings: dict[str, Any] = super().merge_environment_settings(
            url, proxies, stream, verify, cert
        )
        return settings

    def rebuild_auth(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        """As requests does on a redirect, except that ``.netrc`` never replaces our token.

        requests strips ``Authorization`` on a cross-origin redirect, then adds
        ``.netrc`` credentials for the new host. For a host that receives the
        OpsNow token, the token is the credential: netrc Basic auth would
        replace it (on a same-host redirect too).
        """
        auth = self.auth
        if isinstance(auth, OpsNowAuth) and auth.trusts(prepared_request.url or ""):
            headers = prepared_request.headers
            if "Authorization" in headers and self.should_strip_auth(
                response.request.url, prepared_request.url
            ):
                del headers["Authorization"]
            return
        super().rebuild_auth(prepared_request, response)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def create_url(self, url: str | bytes) -> str:
        """The URL for ``url``: absolute as given, otherwise under the base URL and its path.

        A leading ``/`` does not leave the base URL's path (unlike ``urljoin``).
        """
        text = url.decode("utf-8") if isinstance(url, bytes) else str(url)
        base = str(self.base_url).rstrip("/") + "/"
        if urlsplit(text).scheme:
            return text  # absolute: as given
        if text.startswith("/") and not text.startswith("//"):  # "//host/path" names a host
            return base + text.lstrip("/")
        return urljoin(base, text)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:  # requests' own default is to wait forever
            kwargs["timeout"] = self.timeout
        self._refuse_token_through_a_proxy_in_cleartext(request, kwargs.get("proxies"))
        # Here rather than in a response hook: hooks run before OpsNowAuth's 401
        # replay (and per-request hooks= replace the session's), so the final
        # response would be missed.
        response: requests.Response = super().send(request, **kwargs)
        # A class of its own, not a method bound on the response: `s.get(p).raise_for_status()`
        # keeps its response alive through the call, and no cycle keeps it alive after.
        after_a_replay = isinstance(response, AfterAReplay)
        response.__class__ = _OpsNowResponseAfterAReplay if after_a_replay else OpsNowResponse
        return response

    def _refuse_token_through_a_proxy_in_cleartext(
        self, request: requests.PreparedRequest, proxies: Mapping[str, str] | None
    ) -> None:
        """OpsNowAuth sees the environment's proxies; the session also sees its own."""
        url = request.url or ""
        auth = self.auth
        if not (
            url.startswith("http:")
            and "Authorization" in request.headers
            and isinstance(auth, OpsNowAuth)
            and auth.trusts(url)
        ):
            return
        if proxies is None:
            proxies = resolve_proxies(request, self.proxies, self.trust_env)
        proxy = select_proxy(url, dict(proxies))
        if proxy:
            unsent = request.copy()  # the error carries the request, not the token it refused
            del unsent.headers["Authorization"]
            raise OpsNowAuthError(
                f"refusing to send the OpsNow token over plain http to {safe_url(url)} through"
                f" the proxy {safe_place(proxy)}; keep loopback hosts off the proxy (NO_PROXY),"
                " or use https",
                request=unsent,
            )

    def close(self) -> None:
        super().close()
        own_auth = getattr(self, "_own_auth", None)
        if own_auth is not None:
            own_auth.close()


class OpsNowResponse(requests.Response):
    """A response of an :class:`OpsNowSession`: ``raise_for_status()`` raises
    :class:`OpsNowAPIError` (an ``HTTPError``) on a 4xx or 5xx, in any form (one line,
    bound, after pickling, from requests-futures)."""

    def raise_for_status(self) -> None:
        raise_for_opsnow_error(self)


class _OpsNowResponseAfterAReplay(OpsNowResponse, AfterAReplay):
    """An :class:`OpsNowResponse` whose history keeps a replayed 401 first through redirects."""


def raise_for_opsnow_error(response: requests.Response) -> None:
    """Raise :class:`OpsNowAPIError` if ``response`` has an error status (400-599).

    ``raise_for_status()`` for plain ``requests`` users; an OpsNowSession's
    responses already do this.
    """
    if 400 <= response.status_code < 600:
        text, code, message = _api_error(response)
        raise OpsNowAPIError(text, code=code, message=message, response=response)


def _api_error(response: requests.Response) -> tuple[str, int | str, str]:
    """The message, code and server message of an :class:`OpsNowAPIError` for ``response``."""
    status = response.status_code
    body = read_error_body(_json_or_none(response))
    code: int | str = status if body.code is None else body.code
    if isinstance(code, str):
        code = _one_line(code, response)
    message = (
        body.message
        if body.message is not None
        else reason_phrase(response.reason, response.status_code)
    )
    message = _one_line(message, response)
    request: requests.PreparedRequest | None = getattr(response, "request", None)
    method = request.method if request is not None else None
    url = response.url or (request.url if request is not None else None) or ""
    text = f"OpsNow API error {status} on {method or 'request to'} {safe_url(url)}: {message}"
    if code != status:
        text += f" (code {code})"
    return text, code, message


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except (ValueError, RuntimeError, RecursionError, requests.RequestException):
        return None  # not JSON, absurdly deep, or already consumed


def _one_line(text: str, response: requests.Response) -> str:
    """``text`` on one line, short, with any token this exchange sent masked."""
    text = " ".join(text.split())
    for sent in (response, *response.history):
        request: requests.PreparedRequest | None = getattr(sent, "request", None)
        header = request.headers.get("Authorization") if request is not None else None
        scheme, _, token = str(header or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            text = text.replace(token.strip(), "[token]")
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 3] + "..."

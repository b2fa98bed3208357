"""What happens to tokens, told once: events for subscribers, OpenTelemetry spans and metrics.

The lifecycle's flows and the drivers call :func:`fetching`, :func:`waited` and
:func:`replayed` at the one place each thing happens (``docs/design.md``,
"Observability"). Events go to the callables given to :func:`subscribe`;
spans and metrics go to OpenTelemetry when ``opentelemetry-api`` is installed
(the ``otel`` extra), imported on the first token event, never before. Nothing
here runs on the hot path (a valid token), and nothing carries the key or a
token: the key is named by a non-reversible id.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any, Callable, NamedTuple

from . import _clock
from ._runtime import RuntimeState

log = logging.getLogger("requests_opsnow")

SCOPE = "requests_opsnow"
"""The instrumentation scope of the spans and metrics."""


class TokenEvent(NamedTuple):
    """One thing that happened to a key's token; a stable interface (``docs/design.md``).

    ``kind`` is ``"fetch"`` (a flight: a token request, or a token read from a
    shared store), ``"wait"`` (a caller waited for another's flight) or
    ``"replay"`` (the answer to a 401). Fields that do not apply are None.
    """

    kind: str
    key_id: str
    """The first 16 hex digits of a SHA-256 of the token URL and the key: not reversible."""
    server_address: str
    trigger: str | None = None
    """What started the flight: ``cold``, ``expired``, ``early_refresh``, ``rejected``
    (a 401), ``invalidate`` or ``fresh``."""
    outcome: str | None = None
    """``ok``, ``rejected_key`` or ``error`` (a fetch); ``replayed``, ``skipped_body`` or
    ``refused_again`` (a replay)."""
    source: str | None = None
    """Where the token came from: ``network``, or the store (``file``, ``redis``...)."""
    attempts: int | None = None
    """HTTP attempts the flight made (0 when a store supplied the token)."""
    error_type: str | None = None
    expires_at: float | None = None
    duration: float | None = None
    """Seconds the flight took, or the caller waited."""


class _Subscribers(RuntimeState):
    """The callables :func:`subscribe` was given: a tuple, replaced whole under a lock (a
    runtime field, rebuilt after a fork), so that emitting takes no lock."""

    _runtime_fields = ("lock",)

    def __init__(self) -> None:
        self.callbacks: tuple[Callable[[TokenEvent], object], ...] = ()
        self.failed_once: set[int] = set()
        self._start_runtime()

    def _new_runtime_state(self) -> None:
        self.lock = threading.Lock()


_subscribers = _Subscribers()


def subscribe(callback: Callable[[TokenEvent], object]) -> Callable[[], None]:
    """Call ``callback(event)`` for every :class:`TokenEvent` of the process, in the thread
    where it happens; returns the function that unsubscribes it. A callback that raises
    is logged once (at WARNING) and never breaks a request."""
    with _subscribers.lock:
        _subscribers.callbacks = (*_subscribers.callbacks, callback)

    def unsubscribe() -> None:
        with _subscribers.lock:
            others = (other for other in _subscribers.callbacks if other is not callback)
            _subscribers.callbacks = tuple(others)

    return unsubscribe


def _emit(event: TokenEvent, otel: _OpenTelemetry | None) -> None:
    """To every subscriber, and to OpenTelemetry's instruments (``otel``: :func:`_otel`)."""
    for callback in _subscribers.callbacks:
        try:
            callback(event)
        except Exception:  # a subscriber's bug never breaks a request
            if id(callback) not in _subscribers.failed_once:
                _subscribers.failed_once.add(id(callback))
                log.warning("a token event subscriber %r raised; ignored", callback, exc_info=True)
    if otel is not None:
        otel.record(event)


class _OpenTelemetry:
    """The tracer and instruments, through whatever providers the application set."""

    def __init__(self, trace: Any, metrics: Any) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.trace, self.kind, self.error = trace, SpanKind.INTERNAL, Status(StatusCode.ERROR)
        self.tracer = trace.get_tracer(SCOPE)
        meter = metrics.get_meter(SCOPE)
        self.requests = meter.create_counter(
            "opsnow.token.requests", unit="{request}", description="Token requests made"
        )
        self.fetch_duration = meter.create_histogram(
            "opsnow.token.fetch.duration",
            unit="s",
            description="Token fetches, store reads included",
        )
        self.wait_duration = meter.create_histogram(
            "opsnow.token.wait.duration", unit="s", description="Callers that waited on a fetch"
        )
        self.replays = meter.create_counter(
            "opsnow.auth.replays", unit="{request}", description="Answers to a 401"
        )

    def record(self, event: TokenEvent) -> None:
        if event.kind == "fetch":
            attributes = {
                "opsnow.token.trigger": event.trigger,
                "opsnow.token.outcome": event.outcome,
            }
            if event.source == "network":  # a token read from a store is no token request
                self.requests.add(1, attributes)
            self.fetch_duration.record(event.duration or 0.0, attributes)
        elif event.kind == "wait":
            self.wait_duration.record(event.duration or 0.0)
        elif event.kind == "replay":
            self.replays.add(1, {"outcome": event.outcome})


_OTEL_UNSET: Any = object()
_otel_state: Any = _OTEL_UNSET


def _otel() -> _OpenTelemetry | None:
    """OpenTelemetry, imported on first use; None if it is not installed."""
    global _otel_state
    if _otel_state is _OTEL_UNSET:
        try:
            from opentelemetry import metrics, trace
        except ImportError:
            _otel_state = None
        else:
            _otel_state = _OpenTelemetry(trace, metrics)
    return _otel_state  # type: ignore[no-any-return]


class Flown(NamedTuple):
    """What a flight is about, for its span and its event (set by the lifecycle)."""

    key_id: str
    server_address: str
    trigger: str


class Fetched:
    """What a fetch gave, for its event: the driver sets ``token``."""

    __slots__ = ("token",)

    def __init__(self) -> None:
        self.token: Any = None


@contextlib.contextmanager
def fetching(flight: Any) -> Iterator[Fetched]:
    """Around a flight's fetch, where it runs: its ``opsnow.token.fetch`` span is the current
    one (so the HTTP client's own span, if instrumented, is its child), then its event.
    ``flight`` has ``about`` (:class:`Flown`), ``source`` and ``cancellation.attempts``."""
    otel = _otel()
    started = _clock.monotonic()
    span: Any = contextlib.nullcontext()
    if otel is not None:
        span = otel.tracer.start_as_current_span(
            "opsnow.token.fetch",
            kind=otel.kind,
            record_exception=False,
            set_status_on_exception=False,
        )
    fetched = Fetched()
    with span as current:
        outcome, error_type = "ok", None
        try:
            yield fetched
        except BaseException as error:  # an interruption too: the flight did not land a token
            outcome = "rejected_key" if type(error).__name__ == "InvalidApiKeyError" else "error"
            error_type = type(error).__name__
            raise
        finally:
            about = flight.about
            event = TokenEvent(
                "fetch", about.key_id, about.server_address, about.trigger, outcome,
                flight.source, flight.cancellation.attempts, error_type,
                getattr(fetched.token, "expires_at", None), _clock.monotonic() - started,
            )  # fmt: skip
            if current is not None and otel is not None:
                current.set_attributes({
                    "opsnow.token.trigger": event.trigger,
                    "opsnow.token.outcome": outcome,
                    "opsnow.token.source": event.source,
                    "opsnow.token.attempts": event.attempts,
                    "server.address": event.server_address,
                })  # fmt: skip
                if error_type is not None:
                    current.set_attribute("error.type", error_type)
                    current.set_status(otel.error)
            _emit(event, otel)


def waited(about: Flown, duration: float) -> None:
    """A caller waited ``duration`` seconds for another's flight."""
    otel = _otel()
    if _subscribers.callbacks or otel is not None:
        _emit(TokenEvent("wait", about.key_id, about.server_address, duration=duration), otel)


def replayed(key_id: str, server_address: str, outcome: str) -> None:
    """The answer to a 401: ``replayed``, ``skipped_body`` or ``refused_again``."""
    otel = _otel()
    if _subscribers.callbacks or otel is not None:
        _emit(TokenEvent("replay", key_id, server_address, outcome=outcome), otel)

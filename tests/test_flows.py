"""The lifecycle's flows driven by hand: no sockets, no threads, no event loop.

``docs/design.md``, "Token lifecycle": each rule is written once, as a flow that
yields effects (Fly, Wait, Fetch, Io) for a thread driver or a coroutine driver to
do. Here the test is the driver: it answers each effect itself, so every branch
of a rule is one short, deterministic test.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from requests_opsnow import InvalidApiKeyError, OpsNowAuthError, TokenRequestError, _clock
from requests_opsnow._lifecycle import (
    BACKOFF_MAX,
    LIVENESS_POLL,
    REFETCH_AFTER_401_INTERVAL,
    REJECTED_KEY_BACKOFF,
    Fetch,
    Flow,
    Fly,
    Io,
    TokenLifecycle,
    Wait,
)
from requests_opsnow._token import Token
from requests_opsnow.cache import MemoryTokenCache

from .helpers import FakeClock

BOUND = 5.0
ROUTE = "GET https://api.opsnow360.io/platform/v2/companies"
_serial = itertools.count()


@pytest.fixture
def lifecycle() -> TokenLifecycle:
    return TokenLifecycle(f"flows-{next(_serial)}", 300.0, None)


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock(1000.0)
    monkeypatch.setattr(_clock, "monotonic", clock.now)
    return clock


def token(name: str, lifetime: float = 3600.0) -> Token:
    now = _clock.now()
    return Token(name, now + lifetime, now)


def finish(flow: Flow[Any], value: Any = None) -> Any:
    """Send ``value``; the flow must end: its value."""
    with pytest.raises(StopIteration) as done:
        flow.send(value)
    return done.value.value


def lead(lifecycle: TokenLifecycle, fetched: Token) -> Any:
    """A cold ``obtain`` whose caller flies the flight in place (a thread): its value."""
    flow = lifecycle.obtain(BOUND)
    fly = next(flow)
    assert isinstance(fly, Fly)
    fetch = flow.send(True)
    assert isinstance(fetch, Fetch)
    assert fetch.locked is None  # no store: a plain fetch
    wait = flow.send(fetched)
    assert isinstance(wait, Wait)
    assert wait.flight.landed
    return finish(flow)


def test_a_thread_leads_a_cold_flight_in_place_and_the_token_is_then_held(
    lifecycle: TokenLifecycle,
) -> None:
    fetched = token("first")
    held = lead(lifecycle, fetched)
    assert held.token == fetched
    assert lifecycle.held is held
    assert finish(lifecycle.obtain(BOUND)) is held  # VALID: no effect at all


def test_a_coroutine_flight_runs_elsewhere_and_its_waiters_share_it(
    lifecycle: TokenLifecycle,
) -> None:
    leader = lifecycle.obtain(BOUND)
    fly = next(leader)
    assert isinstance(fly, Fly)
    assert isinstance(leader.send(None), Wait)  # launched elsewhere: the leader waits too
    joiner = lifecycle.obtain(BOUND)
    wait = next(joiner)
    assert isinstance(wait, Wait)
    assert wait.flight is fly.flight  # one flight, whoever asks
    fetch = next(fly.flow)  # the task runs the flight's own flow
    assert isinstance(fetch, Fetch)
    with pytest.raises(StopIteration):
        fly.flow.send(token("shared"))
    assert finish(leader).token.value == finish(joiner).token.value == "shared"


def test_a_fetch_error_is_every_waiters_answer_each_a_copy(
    lifecycle: TokenLifecycle, clock: FakeClock
) -> None:
    leader = lifecycle.obtain(BOUND)
    fly = next(leader)
    leader.send(None)
    joiner = lifecycle.obtain(BOUND)
    next(joiner)
    next(fly.flow)
    rejected = InvalidApiKeyError("the OpsNow API key was rejected")
    with pytest.raises(StopIteration):
        fly.flow.throw(rejected)
    errors = []
    for waiter in (leader, joiner):
        with pytest.raises(InvalidApiKeyError) as caught:
            waiter.send(None)
        errors.append(caught.value)
    assert errors[0] is not errors[1]
    with pytest.raises(InvalidApiKeyError, match=r"rejected \(no new token request for 60 s"):
        next(lifecycle.obtain(BOUND))  # the answer for its backoff window, at once
    clock.advance(REJECTED_KEY_BACKOFF)
    assert isinstance(next(lifecycle.obtain(BOUND)), Fly)


def test_any_other_error_is_the_leaders_own_and_a_documented_error_for_its_waiters(
    lifecycle: TokenLifecycle,
) -> None:
    leader = lifecycle.obtain(BOUND)
    flight = next(leader).flight
    assert isinstance(leader.send(True), Fetch)
    joiner = lifecycle.obtain(BOUND)
    assert next(joiner).flight is flight
    bug = RuntimeError("a bug in a client library")
    with pytest.raises(RuntimeError) as raised:
        leader.throw(bug)  # the leading thread raises its own exception
    assert raised.value is bug
    with pytest.raises(TokenRequestError, match="failed: RuntimeError") as answer:
        joiner.send(None)
    assert answer.value.__cause__ is bug  # one flight's answer, not a new flight each


def test_an_interrupted_leader_lets_its_waiters_start_a_new_flight(
    lifecycle: TokenLifecycle,
) -> None:
    leader = lifecycle.obtain(BOUND)
    flight = next(leader).flight
    leader.send(True)
    joiner = lifecycle.obtain(BOUND)
    next(joiner)
    with pytest.raises(KeyboardInterrupt):
        leader.throw(KeyboardInterrupt())  # Ctrl-C in the leading thread: its alone
    replacement = joiner.send(None)
    assert isinstance(replacement, Fly)
    assert replacement.flight is not flight


def test_a_flight_nobody_started_is_abandoned_after_a_liveness_poll(
    lifecycle: TokenLifecycle, monotonic: FakeClock
) -> None:
    leader = lifecycle.obtain(BOUND)
    fly = next(leader)
    leader.send(None)  # launched elsewhere (a task), which never gets to run
    joiner = lifecycle.obtain(BOUND)
    wait = next(joiner)
    assert wait.flight is fly.flight
    assert not wait.flight.stalled(_clock.monotonic())
    monotonic.advance(LIVENESS_POLL + 0.01)
    assert wait.flight.stalled(_clock.monotonic())
    replacement = joiner.send(None)
    assert isinstance(replacement, Fly)
    assert replacement.flight is not fly.flight


def test_a_leader_stopped_before_its_driver_got_to_the_flight_lands_it(
    lifecycle: TokenLifecycle,
) -> None:
    leader = lifecycle.obtain(BOUND)
    fly = next(leader)
    leader.close()  # an exception in the driver, between the claim and the launch
    assert fly.flight.landed
    assert isinstance(next(lifecycle.obtain(BOUND)), Fly)


def test_a_flight_whose_event_loop_is_gone_is_replaced_at_once(
    lifecycle: TokenLifecycle,
) -> None:
    leader = lifecycle.obtain(BOUND)
    fly = next(leader)
    leader.send(None)  # a task on some event loop...
    next(fly.flow)  # ...which started the fetch...
    fly.flight.runner_alive = lambda: False  # ...and then was closed
    assert fly.flight.stalled(_clock.monotonic())
    joiner = lifecycle.obtain(BOUND)
    wait = next(joiner)
    replacement = joiner.send(None)  # the driver's wait returns: the flight has stalled
    assert isinstance(wait, Wait)
    assert isinstance(replacement, Fly)
    assert replacement.flight is not fly.flight
    assert fly.flight.landed
    with pytest.raises(StopIteration):  # should the old task ever finish, nothing changes
        fly.flow.send(token("late"))
    assert lifecycle.held is None


def test_a_flight_past_its_deadline_is_stopped_and_the_next_call_starts_afresh(
    lifecycle: TokenLifecycle, monotonic: FakeClock, clock: FakeClock
) -> None:
    leader = lifecycle.obtain(BOUND)
    fly = next(leader)
    leader.send(None)
    next(fly.flow)  # fetching, and never answering
    cancelled = []
    fly.flight.cancellation.on_cancel(lambda: cancelled.append(True))
    monotonic.advance(BOUND + 2)
    with pytest.raises(TokenRequestError, match="no token within 5 s"):
        leader.send(None)
    assert cancelled == [True]
    clock.advance(BACKOFF_MAX)  # past the backoff window the failure opened
    assert isinstance(next(lifecycle.obtain(BOUND)), Fly)


def test_a_due_token_is_used_while_one_early_refresh_flies_unattended(
    lifecycle: TokenLifecycle, clock: FakeClock
) -> None:
    held = lead(lifecycle, token("first"))
    clock.advance(3600 - 200)
    flow = lifecycle.obtain(BOUND)
    fly = next(flow)
    assert isinstance(fly, Fly)
    assert fly.flight.early
    assert finish(flow) is held  # nobody waits for it
    assert finish(lifecycle.obtain(BOUND)) is held  # one refresh at a time
    assert isinstance(next(fly.flow), Fetch)
    with pytest.raises(StopIteration):
        fly.flow.send(token("second"))
    assert lifecycle.held is not None
    assert lifecycle.held.token.value == "second"


def test_a_failed_early_refresh_keeps_the_token_and_waits_before_the_next(
    lifecycle: TokenLifecycle, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    held = lead(lifecycle, token("first"))
    clock.advance(3600 - 200)
    flow = lifecycle.obtain(BOUND)
    fly = next(flow)
    finish(flow)
    next(fly.flow)
    with pytest.raises(StopIteration):
        fly.flow.throw(TokenRequestError("token request to x failed: HTTP 503"))
    assert "early OpsNow token refresh failed" in caplog.text
    assert finish(lifecycle.obtain(BOUND)) is held  # no new refresh right away


def test_after_a_401_the_dead_token_is_replaced_by_one_fetch(lifecycle: TokenLifecycle) -> None:
    first = lead(lifecycle, token("first")).token
    flow = lifecycle.after_401(BOUND, first, ROUTE)
    assert isinstance(next(flow), Fly)
    assert isinstance(flow.send(True), Fetch)
    flow.send(token("second"))
    assert finish(flow).token.value == "second"


def test_after_a_401_another_callers_replacement_is_used_without_a_fetch(
    lifecycle: TokenLifecycle,
) -> None:
    first = lead(lifecycle, token("first")).token
    flow = lifecycle.after_401(BOUND, first, ROUTE)  # one request's 401 replaces it...
    next(flow)
    flow.send(True)
    flow.send(token("second"))
    second = finish(flow)
    with pytest.raises(StopIteration) as done:  # ...and another's, carrying it too, is answered
        next(lifecycle.after_401(BOUND, first, ROUTE))
    assert done.value.value is second


def test_a_route_refused_the_replacement_too_keeps_its_401_for_the_interval(
    lifecycle: TokenLifecycle, clock: FakeClock
) -> None:
    replacement = lead(lifecycle, token("second")).token
    lifecycle.refused(ROUTE, replacement)  # its replay was refused as well
    with pytest.raises(StopIteration) as done:
        next(lifecycle.after_401(BOUND, replacement, ROUTE))
    assert done.value.value is None  # the 401 stands, without a fetch
    other = lifecycle.after_401(BOUND, replacement, "POST " + ROUTE.partition(" ")[2])
    assert isinstance(next(other), Fly)  # another route: the token is dead there
    other.close()
    clock.advance(REFETCH_AFTER_401_INTERVAL + 1)
    assert isinstance(next(lifecycle.after_401(BOUND, replacement, ROUTE)), Fly)


def test_a_store_is_read_and_written_by_one_locked_blocking_call() -> None:
    store = MemoryTokenCache()
    lifecycle = TokenLifecycle(f"flows-{next(_serial)}", 300.0, store)
    flow = lifecycle.obtain(BOUND)
    next(flow)
    fetch = flow.send(True)
    assert fetch.locked is not None
    fetched = fetch.locked(lambda cancellation: token("stored"), fetch.flight)
    flow.send(fetched)
    assert finish(flow).token == store.get(lifecycle.key) == fetched


def test_invalidate_forgets_a_stored_token_through_blocking_calls() -> None:
    store = MemoryTokenCache()
    lifecycle = TokenLifecycle(f"flows-{next(_serial)}", 300.0, store)
    store.set(lifecycle.key, token("another process's"))
    flow = lifecycle.invalidate()
    read = next(flow)
    assert isinstance(read, Io)
    delete = flow.send(read.call())
    assert isinstance(delete, Io)
    delete.call()
    finish(flow)
    assert store.get(lifecycle.key) is None


def test_a_fresh_token_replaces_a_due_one_in_place_and_keeps_it_if_that_fails(
    lifecycle: TokenLifecycle, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    held = lead(lifecycle, token("first"))
    clock.advance(3600 - 200)
    flow = lifecycle.fresh(BOUND)
    assert not next(flow).flight.early  # the caller waits for this one
    flow.send(True)
    assert isinstance(flow.throw(TokenRequestError("token request to x failed: HTTP 503")), Wait)
    assert finish(flow) is held
    assert "refresh failed" in caplog.text


def test_every_flight_lands_once(lifecycle: TokenLifecycle) -> None:
    leader = lifecycle.obtain(BOUND)
    fly = next(leader)
    leader.send(None)
    next(fly.flow)
    fly.flight.runner_alive = lambda: False
    joiner = lifecycle.obtain(BOUND)
    next(joiner)
    joiner.send(None)  # retired as abandoned
    assert fly.flight.landed
    error = fly.flight.error
    with pytest.raises(StopIteration):
        fly.flow.throw(OpsNowAuthError("late"))
    assert fly.flight.error is error  # the first landing wins

"""RedisTokenCache against a real redis-server: one token for a fleet, outages, stuck locks."""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import pickle
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
import redis
import requests

from requests_opsnow import OpsNowSession, Token
from requests_opsnow import cache as cache_module
from requests_opsnow.cache import cache_key
from requests_opsnow.rediscache import BREAKER_MAX_PAUSE, RedisTokenCache
from requests_opsnow.testing import FakeOpsNow

from ._workers import fleet_member, token_of
from .helpers import (
    COMPANIES,
    FakeClock,
    MakeAuth,
    legacy_scripts_at_once,
    memory_kept_by,
    rejected_in_four_processes,
    tokens_together,
)
from .redis_support import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """CI's server (REDIS_URL), else one started for this module."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture
def prefix() -> str:
    return f"test-{secrets.token_hex(4)}:"


@pytest.fixture
def new_client() -> Iterator[Callable[..., Any]]:
    """Redis clients that are closed after the test."""
    made: list[Any] = []

    def factory(url: str, **options: Any) -> Any:
        options.setdefault("socket_timeout", 2)
        made.append(redis.Redis.from_url(url, **options))
        return made[-1]

    yield factory
    for connection in made:
        connection.close()


@pytest.fixture
def client(redis_url: str, new_client: Callable[..., Any]) -> Any:
    return new_client(redis_url)


@pytest.fixture
def make_cache() -> Iterator[Callable[..., RedisTokenCache]]:
    """RedisTokenCaches whose own connections are closed after the test."""
    made: list[RedisTokenCache] = []

    def factory(client: Any, **options: Any) -> RedisTokenCache:
        made.append(RedisTokenCache(client, **options))
        return made[-1]

    yield factory
    for cache in made:
        cache.close()


def keyspace(client: Any, prefix: str) -> dict[str, bytes]:
    return {name.decode(): client.get(name) or b"" for name in client.scan_iter(match=prefix + "*")}


def test_token_is_stored_with_its_remaining_lifetime_and_without_the_key(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    client: Any,
    prefix: str,
    make_cache: Callable[..., RedisTokenCache],
) -> None:
    make_auth(cache=make_cache(client, prefix=prefix)).get_token()
    stored = keyspace(client, prefix)

    (name,) = stored
    assert name == f"{prefix}token:{cache_key(fake.token_url, fake.api_key)}"
    assert 3590_000 < client.pttl(name) <= 3600_000
    for key_name, value in stored.items():
        assert fake.api_key not in key_name
        assert fake.api_key.encode() not in value
        assert b"OPSNOW_API_KEY" not in value


def test_hosts_share_one_token(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    redis_url: str,
    prefix: str,
    new_client: Callable[..., Any],
    make_cache: Callable[..., RedisTokenCache],
) -> None:
    hosts = [make_auth(cache=make_cache(new_client(redis_url), prefix=prefix)) for _ in range(3)]
    assert {auth.get_token() for auth in hosts} == set(fake.issued_tokens)
    assert fake.token_requests == 1


def test_eight_processes_of_four_threads_share_one_token_and_one_refresh(
    fake: FakeOpsNow, redis_url: str, prefix: str, client: Any
) -> None:
    fake.set_token_delay(0.2)
    processes, threads = 8, 4
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        phases = manager.Barrier(processes + 1)
        with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
            futures = [
                pool.submit(
                    fleet_member, redis_url, prefix, fake.base_url, fake.api_key, phases, threads
                )
                for _ in range(processes)
            ]
            phases.wait(timeout=60)  # all up: they burst now
            phases.wait(timeout=60)  # all done
            cold_start_requests = fake.token_requests
            fake.revoke_tokens()
            phases.wait(timeout=60)  # burst again against revoked tokens
            statuses = [status for future in futures for status in future.result(timeout=60)]

    assert cold_start_requests == 1
    assert fake.token_requests == 2
    assert statuses == [200] * (processes * threads * 2)
    assert all(
        fake.api_key not in name for name in keyspace(redis.Redis.from_url(redis_url), prefix)
    )


def test_eight_legacy_processes_sharing_redis_by_url_make_one_token_request(
    fake: FakeOpsNow, redis_url: str, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    statuses = legacy_scripts_at_once(fake, redis_url, monkeypatch)
    assert statuses == [200] * 8
    assert fake.token_requests == 1
    stored = client.get(f"requests-opsnow:token:{cache_key(fake.token_url, fake.api_key)}")
    assert stored is not None
    assert fake.api_key.encode() not in stored


def test_a_401_drops_the_shared_token_only_if_it_is_still_the_one_that_failed(
    client: Any, prefix: str, make_cache: Callable[..., RedisTokenCache]
) -> None:
    cache = make_cache(client, prefix=prefix)
    now = time.time()
    old = Token("old-token", expires_at=now + 600, issued_at=now - 60)
    new = Token("new-token", expires_at=now + 900, issued_at=now)
    cache.set("k", new)
    cache.delete("k", old)
    assert make_cache(client, prefix=prefix).get("k") == new
    cache.delete("k", new)
    assert make_cache(client, prefix=prefix).get("k") is None


@pytest.mark.parametrize("value", [b"garbage", b'{"format": "other"}', b'{"access_token": "x"}'])
def test_a_bad_value_is_ignored_and_overwritten(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    client: Any,
    prefix: str,
    value: bytes,
    make_cache: Callable[..., RedisTokenCache],
) -> None:
    name = f"{prefix}token:{cache_key(fake.token_url, fake.api_key)}"
    client.set(name, value)
    token = make_auth(cache=make_cache(client, prefix=prefix)).get_token()
    assert token == fake.issued_tokens[0]
    assert token.encode() in client.get(name)


def test_redis_down_then_back(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    new_client: Callable[..., Any],
    clock: FakeClock,
    make_cache: Callable[..., RedisTokenCache],
) -> None:
    server = RedisServer(tmp_path).start()
    try:
        hosts = [
            make_auth(
                cache=make_cache(
                    new_client(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
                )
            )
            for _ in range(2)
        ]
        url = fake.base_url + COMPANIES

        def everyone_gets(expected: int) -> None:
            with requests.Session() as s:
                for _ in range(3):
                    assert [s.get(url, auth=a).status_code for a in hosts] == [200, 200]
            assert fake.token_requests == expected

        everyone_gets(1)  # shared
        with caplog.at_level(logging.WARNING, logger="requests_opsnow"):
            server.kill()
            fake.revoke_tokens()
            everyone_gets(3)  # each host fetches for itself; every request still succeeds
            unavailable = [r for r in caplog.records if "unavailable" in r.getMessage()]
            assert len(unavailable) == 2  # one per host, not one per request

            server.start()
            clock.advance(BREAKER_MAX_PAUSE)  # Redis is left alone for a while after failing
            fake.revoke_tokens()
            everyone_gets(4)  # shared again: one more token for both hosts
            assert sum("sharing tokens again" in r.getMessage() for r in caplog.records) == 2
    finally:
        server.kill()


def test_a_lock_holder_killed_with_sigkill_blocks_others_only_until_the_lock_expires(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    redis_url: str,
    prefix: str,
    new_client: Callable[..., Any],
    make_cache: Callable[..., RedisTokenCache],
) -> None:
    key = cache_key(fake.token_url, fake.api_key)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from tests._workers import hold_redis_lock;"
         f" hold_redis_lock({redis_url!r}, {prefix!r}, {key!r})"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        holder.kill()
        holder.wait(10)
        cache = make_cache(new_client(redis_url), prefix=prefix, lock_lease=1.5)
        assert make_auth(cache=cache).get_token() == fake.issued_tokens[0]
        assert fake.token_requests == 1
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_workers_get_copies_of_an_auth_and_session_holding_a_redis_cache(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    redis_url: str,
    new_client: Callable[..., Any],
    make_cache: Callable[..., RedisTokenCache],
    prefix: str,
) -> None:
    auth = make_auth(cache=make_cache(new_client(redis_url), prefix=prefix))
    auth.get_token()
    with OpsNowSession(auth=auth) as session:
        copies = [
            make_copy(original)
            for original in (auth, session)
            for make_copy in (copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o)))
        ]
    for made in copies:
        copied_auth = made.auth if isinstance(made, requests.Session) else made
        try:
            assert copied_auth.get_token() == fake.issued_tokens[0]  # shared through Redis
        finally:
            copied_auth.close()
            copied_auth._store.close()  # the copy's own cache connections
            if isinstance(made, requests.Session):
                made.close()
    assert fake.token_requests == 1


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        server.kill()


def test_a_hung_redis_costs_one_short_timeout_not_a_stall(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    own_redis: RedisServer,
    make_cache: Callable[..., RedisTokenCache],
) -> None:
    # Built with redis-py's default retries, which the cache's own connections drop.
    client = redis.Redis(host="127.0.0.1", port=own_redis.port, socket_timeout=0.2)
    try:
        client.ping()
        auth = make_auth(cache=make_cache(client, prefix="hung:"))
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)  # alive, accepting, never answering
        started = time.monotonic()
        auth.get_token()
        auth.invalidate()
        auth.get_token()
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert elapsed < 2.5, f"two token fetches with Redis hung took {elapsed:.1f} s"
    assert fake.token_requests == 2


def test_a_live_lock_holder_keeps_the_fleet_lock_while_its_fetch_outlasts_its_lease(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    redis_url: str,
    prefix: str,
    new_client: Callable[..., Any],
    make_cache: Callable[..., RedisTokenCache],
) -> None:
    fake.set_token_delay(1.5)  # longer than the lock timeout
    hosts = [
        make_auth(cache=make_cache(new_client(redis_url), prefix=prefix, lock_lease=1.0))
        for _ in range(2)
    ]
    tokens = tokens_together(hosts)
    assert len(tokens) == 2
    assert fake.token_requests == 1


def test_a_blocking_pool_gets_the_same_safeguards_and_pickles(
    fake: FakeOpsNow, make_auth: MakeAuth, own_redis: RedisServer
) -> None:
    pool = redis.BlockingConnectionPool(host="127.0.0.1", port=own_redis.port, timeout=5)
    client = redis.Redis(connection_pool=pool)  # no socket timeout, retries by default
    cache = RedisTokenCache(client, prefix="blocking:")
    try:
        auth = make_auth(cache=cache)
        assert fake.api_key.encode() not in pickle.dumps(cache)
        copied = pickle.loads(pickle.dumps(auth))
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)  # alive, accepting, never answering
        outcome: list[str] = []
        worker = threading.Thread(target=lambda: outcome.append(auth.get_token()))
        worker.start()
        worker.join(10)  # one socket timeout of the cache's own connections, then a local fetch
        assert outcome == [fake.issued_tokens[0]]
        copied._store.close()
    finally:
        own_redis.process and own_redis.process.send_signal(signal.SIGCONT)
        cache.close()
        client.close()


def test_an_auth_pickled_with_a_host_and_port_client_works_in_a_spawned_process(
    fake: FakeOpsNow, make_auth: MakeAuth, own_redis: RedisServer
) -> None:
    client = redis.Redis(host="127.0.0.1", port=own_redis.port)
    cache = RedisTokenCache(client, prefix="spawned:")
    try:
        auth = make_auth(cache=cache)
        auth.get_token()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            token = pool.submit(token_of, auth).result(timeout=60)
    finally:
        cache.close()
        client.close()
    assert token == fake.issued_tokens[0]  # read from Redis in the other process
    assert fake.token_requests == 1


def test_a_lock_key_without_expiry_is_no_live_holder(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    client: Any,
    prefix: str,
    make_cache: Callable[..., RedisTokenCache],
) -> None:
    auth = make_auth(cache=make_cache(client, prefix=prefix))
    client.set(f"{prefix}lock:{cache_key(fake.token_url, fake.api_key)}", "planted")  # no TTL
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(auth.get_token()))
    worker.start()
    worker.join(10)  # not the 120 s a live holder could take
    assert outcome == [fake.issued_tokens[0]]
    assert fake.token_requests == 1


def test_lock_timeout_is_the_deprecated_name_of_lock_lease(client: Any) -> None:
    with pytest.warns(DeprecationWarning, match="lock_lease"):
        cache = RedisTokenCache(client, lock_timeout=7.0)
    try:
        assert cache.lock_lease == 7.0
    finally:
        cache.close()


def test_a_rejected_key_costs_one_token_request_for_a_whole_fleet_within_its_window(
    fake: FakeOpsNow, redis_url: str, prefix: str
) -> None:
    errors = rejected_in_four_processes(fake, 25, redis_url=redis_url, prefix=prefix)
    assert errors == [25] * 4
    assert fake.token_requests <= 2  # the window, recorded in Redis, held for every host


def test_a_cache_over_many_keys_keeps_a_bounded_memory(
    client: Any,
    make_cache: Callable[..., RedisTokenCache],
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Per-key state lives in Redis; in the process, at most MEMORY_KEYS fallback tokens
    # (the least recently used go; 10,000 by default, 200 here) and a key's lock only
    # while it is held. It used to keep every key's token and lock: 13 MB at 20,000 keys.
    monkeypatch.setattr(cache_module, "MEMORY_KEYS", 200)
    cache = make_cache(client, prefix=prefix)
    now = time.time()

    def use(keys: range) -> None:
        for number in keys:
            key = f"{number:064x}"
            if number % 20 == 0:
                with cache.lock(key):
                    cache.set(key, Token("t" * 300, now + 600, now))
            else:
                cache.set(key, Token("t" * 300, now + 600, now))

    use(range(400))  # warm up to the bound
    grown = memory_kept_by(lambda: use(range(400, 2400)))
    assert grown < 200_000  # 2,000 more keys, each ~1 kB in memory if kept: 2 MB
    assert cache.get(f"{2399:064x}") is not None  # Redis still has every one
    assert cache.get(f"{401:064x}") is not None

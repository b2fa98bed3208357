"""FileTokenCache: permissions, atomicity, cross-process single flight, degraded disks."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pathlib
import stat
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
import requests

from requests_opsnow import Token, filecache
from requests_opsnow import cache as cache_module
from requests_opsnow._token import MAX_TOKEN_LENGTH, token_to_record
from requests_opsnow.cache import cache_key
from requests_opsnow.filecache import FileTokenCache, default_cache_dir
from requests_opsnow.testing import FakeOpsNow

from ._workers import fetch_with_file_cache
from .helpers import (
    FakeClock,
    MakeAuth,
    memory_kept_by,
    rejected_in_four_processes,
    tokens_together,
)

pytestmark = pytest.mark.timeout(60)


def token_file(fake: FakeOpsNow, directory: Path) -> Path:
    return directory / f"{cache_key(fake.token_url, fake.api_key)}.json"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_token_file_is_0600_in_a_0700_folder_and_holds_no_key(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path
) -> None:
    directory = tmp_path / "cache"
    make_auth(cache=FileTokenCache(directory)).get_token()
    path = token_file(fake, directory)

    assert mode(directory) == 0o700
    assert mode(path) == 0o600
    content = path.read_text()
    assert fake.api_key not in content
    assert "OPSNOW_API_KEY" not in content
    assert "apiKey" not in content
    assert json.loads(content)["access_token"] == fake.issued_tokens[0]
    assert [p.name for p in directory.iterdir() if p.suffix == ".tmp"] == []


def test_a_second_process_reuses_the_token_on_disk(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path
) -> None:
    first = make_auth(cache=FileTokenCache(tmp_path)).get_token()
    second = make_auth(cache=FileTokenCache(tmp_path)).get_token()
    assert first == second
    assert fake.token_requests == 1


def test_eight_processes_with_a_cold_cache_make_one_token_request(
    fake: FakeOpsNow, tmp_path: Path
) -> None:
    fake.set_token_delay(0.3)
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(8)
    with ProcessPoolExecutor(max_workers=8, mp_context=context) as pool:
        futures = [
            pool.submit(fetch_with_file_cache, barrier, fake.base_url, fake.api_key, str(tmp_path))
            for _ in range(8)
        ]
        tokens = {future.result(timeout=50) for future in futures}
    assert tokens == set(fake.issued_tokens)
    assert fake.token_requests == 1


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: p.write_bytes(b"\x00\xffnot json"),
        lambda p: p.write_text('{"format": "requests-opsnow/token/1", "access_tok'),
        lambda p: p.write_text(""),
        lambda p: p.write_text('{"format": "someone-else", "access_token": "x"}'),
        lambda p: p.write_text(
            '{"format": "requests-opsnow/token/1", "access_token": "a\\r\\nb",'
            ' "expires_at": 9e9, "issued_at": 0}'
        ),
        lambda p: p.write_text('{"format": "requests-opsnow/token/1", "access_token": "t"}'),
        lambda p: p.mkdir(),
        lambda p: p.symlink_to(p.parent / "elsewhere.json"),
    ],
    ids=["binary", "truncated", "empty", "foreign", "unsafe-token", "no-expiry", "dir", "symlink"],
)
def test_a_corrupt_or_foreign_file_is_ignored_and_replaced(
    fake: FakeOpsNow,
    make_auth: MakeAuth,
    tmp_path: Path,
    corrupt: Callable[[Path], object],
) -> None:
    tmp_path.chmod(0o700)
    (tmp_path / "elsewhere.json").write_text(
        json.dumps({"format": "requests-opsnow/token/1", "access_token": "planted",
                    "expires_at": 9e9, "issued_at": 0})
    )  # fmt: skip
    path = token_file(fake, tmp_path)
    corrupt(path)

    token = make_auth(cache=FileTokenCache(tmp_path)).get_token()

    assert token == fake.issued_tokens[0]
    assert fake.token_requests == 1
    if path.is_file() and not path.is_symlink():
        assert json.loads(path.read_text())["access_token"] == token


def test_an_expired_file_is_ignored(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path, clock: FakeClock
) -> None:
    make_auth(cache=FileTokenCache(tmp_path)).get_token()
    clock.advance(3600)
    make_auth(cache=FileTokenCache(tmp_path)).get_token()
    assert fake.token_requests == 2


def test_a_folder_that_cannot_be_written_still_lets_requests_succeed(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder's parent should be")
    auth = make_auth(cache=FileTokenCache(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="requests_opsnow"):
        assert auth.get_token() == auth.get_token() == fake.issued_tokens[0]
        auth.invalidate()
        auth.get_token()
    assert fake.token_requests == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "memory" in warnings[0].getMessage()


def test_a_401_drops_the_shared_token_only_if_it_is_still_the_one_that_failed(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path
) -> None:
    first = make_auth(cache=FileTokenCache(tmp_path))
    second = make_auth(cache=FileTokenCache(tmp_path))
    url = fake.base_url + "/platform/v2/companies"
    with requests.Session() as s:
        s.get(url, auth=first)
        s.get(url, auth=second)
        fake.revoke_tokens()
        assert s.get(url, auth=first).status_code == 200  # drops, fetches, stores
        assert s.get(url, auth=second).status_code == 200  # finds the new one on disk
    assert fake.token_requests == 2


def test_nothing_is_written_until_a_token_is_stored(tmp_path: Path) -> None:
    FileTokenCache(tmp_path / "lazy")
    assert not (tmp_path / "lazy").exists()


def test_default_folder_follows_xdg_cache_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "requests-opsnow"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "requests-opsnow"


def test_an_existing_folder_open_to_others_is_tightened(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path
) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)  # noqa: S103 - the situation under test
    make_auth(cache=FileTokenCache(directory)).get_token()
    assert mode(directory) == 0o700


def test_a_fifo_in_the_cache_folder_is_ignored_not_waited_on(
    fake: FakeOpsNow, tmp_path: Path
) -> None:
    tmp_path.chmod(0o700)
    key = cache_key(fake.token_url, fake.api_key)
    fifo = tmp_path / f"{key}.json"
    os.mkfifo(fifo, 0o600)
    cache = FileTokenCache(tmp_path)
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(cache.get(key)), daemon=True)
    reader.start()
    reader.join(3)
    hung = reader.is_alive()
    if hung:  # let the reader end: open the write end and close it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(3)
    assert not hung, "get() blocked opening a FIFO"
    assert result == [None]


def test_a_401_with_an_unusable_cache_folder_still_replays(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path
) -> None:
    auth = make_auth(cache=FileTokenCache(tmp_path / ("x" * 300)))  # ENAMETOOLONG everywhere
    assert auth.get_token() == fake.issued_tokens[0]
    fake.revoke_tokens()
    with requests.Session() as s:
        response = s.get(fake.base_url + "/platform/v2/companies", auth=auth)
    assert response.status_code == 200
    assert fake.token_requests == 2


def test_invalidate_on_a_new_process_forgets_the_shared_token(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path
) -> None:
    first = make_auth(cache=FileTokenCache(tmp_path)).get_token()
    fresh = make_auth(cache=FileTokenCache(tmp_path))  # has not used the token itself
    fresh.invalidate()
    assert fresh.get_token() != first
    assert fake.token_requests == 2


def test_threads_of_one_process_sharing_a_file_cache_make_one_token_request(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path
) -> None:
    fake.set_token_delay(0.3)
    cache = FileTokenCache(tmp_path)
    auths = [make_auth(cache=cache) for _ in range(6)]
    tokens = tokens_together(auths)
    assert len(tokens) == 6
    assert len(set(tokens)) == 1
    assert fake.token_requests == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_cache_folder_owned_by_another_user_is_not_used(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    os.chown(directory, 65534, -1)
    os.chmod(directory, 0o777)  # noqa: S103 - the situation under test
    with caplog.at_level(logging.WARNING, logger="requests_opsnow"):
        auth = make_auth(cache=FileTokenCache(directory))
        assert auth.get_token() == fake.issued_tokens[0]
    assert list(directory.iterdir()) == []
    assert "another user" in caplog.text


def test_no_home_directory_degrades_to_memory(
    fake: FakeOpsNow, make_auth: MakeAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pwd

    def no_entry(uid: int) -> object:
        raise KeyError(uid)

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    auth = make_auth(cache=FileTokenCache())
    assert auth.get_token() == auth.get_token() == fake.issued_tokens[0]
    assert fake.token_requests == 1


def test_token_files_in_a_folder_owned_by_another_user_are_not_read(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path
) -> None:
    directory = tmp_path / "planted"
    directory.mkdir(mode=0o700)
    now = time.time()
    planted = Token("planted-token", expires_at=now + 1800, issued_at=now - 60)
    token_file(fake, directory).write_text(token_to_record(planted))
    os.chown(directory, 65534, -1)  # someone else's folder, holding a file that looks ours
    assert make_auth(cache=FileTokenCache(directory)).get_token() == fake.issued_tokens[0]
    assert fake.token_requests == 1


def test_the_longest_token_makes_a_record_that_reads_back(tmp_path: Path) -> None:
    now = time.time()
    longest = Token("t" * MAX_TOKEN_LENGTH, expires_at=now + 600, issued_at=now)
    FileTokenCache(tmp_path).set("k", longest)
    assert FileTokenCache(tmp_path).get("k") == longest


def test_lock_timeout_is_the_deprecated_name_of_lock_wait(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="lock_wait"):
        cache = FileTokenCache(tmp_path, lock_timeout=5.0)
    assert cache.lock_wait == 5.0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_cache_folder_planted_as_a_link_in_a_shared_folder_is_not_followed(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    team = tmp_path / "team"
    team.mkdir()
    os.chmod(team, 0o777)  # noqa: S103 - the situation under test: a folder anyone can write
    public_html = tmp_path / "victim" / "public_html"
    public_html.mkdir(parents=True)
    os.chmod(public_html, 0o755)  # noqa: S103 - a web folder, readable by all
    planted = team / "tokens"
    planted.symlink_to(public_html)  # by another user, before the victim's first token
    os.lchown(planted, 65534, 65534)
    with caplog.at_level(logging.WARNING, logger="requests_opsnow"):
        auth = make_auth(cache=FileTokenCache(planted))
        assert auth.get_token() == auth.get_token() == fake.issued_tokens[0]
    assert fake.token_requests == 1  # kept in memory
    assert list(public_html.iterdir()) == []  # no token or lock file went through the link
    assert mode(public_html) == 0o755  # nor was the link's target made private
    assert "symbolic link" in caplog.text


def test_a_token_file_that_is_a_link_is_neither_read_nor_written_through(
    fake: FakeOpsNow, make_auth: MakeAuth, tmp_path: Path
) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    now = time.time()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(token_to_record(Token("planted", now + 1800, now - 60)))
    token_file(fake, directory).symlink_to(elsewhere)
    assert make_auth(cache=FileTokenCache(directory)).get_token() == fake.issued_tokens[0]
    assert "planted" in elsewhere.read_text()  # the link was replaced, not written through
    assert not token_file(fake, directory).is_symlink()


# -- a folder that forgets (issue 19): swept by a writer passing by, never scanned per call --


def stored(cache: FileTokenCache, key: str, lifetime: float) -> None:
    """What the token flow does: under the key's lock, store a token living ``lifetime``."""
    now = filecache._clock.now()
    with cache.lock(key):
        cache.set(key, Token(f"token-{key}", now + lifetime, now))


def names(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


def key_files(key: str) -> set[str]:
    return {f"{key}.json", f"{key}.lock"}


def test_expired_tokens_and_their_locks_are_removed_by_the_next_writer_after_a_while(
    tmp_path: Path, clock: FakeClock
) -> None:
    cache = FileTokenCache(tmp_path)
    stored(cache, "short", 30)
    stored(cache, "long", 3600)
    assert names(tmp_path) == key_files("short") | key_files("long") | {".swept"}

    clock.advance(31)  # "short" expired, but the folder was swept less than a minute ago
    stored(FileTokenCache(tmp_path), "third", 3600)  # another process: the marker says when
    assert key_files("short") <= names(tmp_path)

    clock.advance(filecache.SWEEP_INTERVAL)
    stored(FileTokenCache(tmp_path), "fourth", 3600)
    assert names(tmp_path) == (
        key_files("long") | key_files("third") | key_files("fourth") | {".swept"}
    )
    assert cache.get("long") is not None


def test_a_key_whose_lock_is_held_is_not_swept(tmp_path: Path, clock: FakeClock) -> None:
    cache = FileTokenCache(tmp_path)
    stored(cache, "busy", 30)
    clock.advance(filecache.SWEEP_INTERVAL + 1)
    with cache.lock("busy"):  # its process is fetching a new token
        stored(FileTokenCache(tmp_path), "other", 3600)
        assert key_files("busy") <= names(tmp_path)


def test_an_ended_backoff_window_and_stale_temporaries_are_swept(
    tmp_path: Path, clock: FakeClock
) -> None:
    cache = FileTokenCache(tmp_path)
    now = clock.now()
    cache.set_backoff("failed", now + 10, "TokenRequestError", "HTTP 503")
    leftover = tmp_path / ".deadbeef.json.x1y2.tmp"  # a writer killed mid-write
    leftover.write_text("half a tok")
    os.utime(leftover, (now, now))
    recent = tmp_path / ".cafe.json.x3y4.tmp"  # a writer writing now
    assert cache.backoff("failed") == (now + 10, "TokenRequestError", "HTTP 503")

    clock.advance(filecache.STALE_TEMPORARY_AGE + 1)
    recent.write_text("being written")
    os.utime(recent, (clock.now(), clock.now()))
    stored(cache, "other", 3600)

    assert cache.backoff("failed") is None
    assert names(tmp_path) == key_files("other") | {".swept", recent.name}


def test_reads_and_writes_do_not_scan_the_folder(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cost of a call must not grow with the folder: it used to list every file on every
    # write (35.6 ms a write at 40,169 files, 0.8 ms at 63). benchmarks/file_store.py times it.
    scans: list[str] = []
    scandir, listdir = os.scandir, os.listdir
    monkeypatch.setattr(os, "scandir", lambda path=".": scans.append("scandir") or scandir(path))
    monkeypatch.setattr(os, "listdir", lambda path=".": scans.append("listdir") or listdir(path))
    caches = [FileTokenCache(tmp_path) for _ in range(3)]  # three processes' caches
    stored(caches[0], "first", 3600)
    assert scans == ["scandir"]  # the folder's first sweep

    for number in range(200):
        cache = caches[number % 3]
        stored(cache, f"k{number}", 3600)
        assert cache.get(f"k{number // 2}") is not None
        clock.advance(0.25)  # 50 s in all: less than SWEEP_INTERVAL
    assert scans == ["scandir"]

    clock.advance(filecache.SWEEP_INTERVAL)
    for cache in caches:
        stored(cache, "later", 3600)
    assert scans == ["scandir", "scandir"]  # one sweep a minute, whichever process writes


def test_a_cache_over_many_keys_keeps_a_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It used to keep every key's token, lock object and FileLock: +22 MB at 5,000 keys.
    monkeypatch.setattr(cache_module, "MEMORY_KEYS", 200)
    cache = FileTokenCache(tmp_path)

    def use(keys: range) -> None:
        for number in keys:
            stored(cache, f"{number:064x}", 600)

    use(range(400))  # warm up to the bound
    # Not pathlib's: it interns each file name, and CPython's table of interned strings
    # grows in one block of megabytes now and then (a table, not names it keeps).
    grown = memory_kept_by(lambda: use(range(400, 1400)), ignoring=[pathlib.__file__])
    assert grown < 200_000  # 1,000 more keys: 4 MB when each key's token and lock were kept
    assert cache.get(f"{1399:064x}") is not None  # the folder still has every one
    assert cache.get(f"{401:064x}") is not None


def test_a_backoff_window_is_a_private_file_that_a_token_ends(
    tmp_path: Path, clock: FakeClock
) -> None:
    cache = FileTokenCache(tmp_path)
    until = clock.now() + 60
    cache.set_backoff("key", until, "InvalidApiKeyError", "the API key was rejected (HTTP 401)")
    window = tmp_path / "key.backoff"
    assert mode(window) == 0o600
    assert window.stat().st_mtime == pytest.approx(until)  # when it stops meaning anything
    assert FileTokenCache(tmp_path).backoff("key") == (
        until, "InvalidApiKeyError", "the API key was rejected (HTTP 401)"
    )  # fmt: skip

    stored(cache, "key", 3600)  # another process got a token: the way is clear
    assert not window.exists()
    assert cache.backoff("key") is None


def test_four_processes_sharing_a_folder_make_at_most_two_token_requests_for_a_rejected_key(
    fake: FakeOpsNow, tmp_path: Path
) -> None:
    errors = rejected_in_four_processes(fake, 25, directory=str(tmp_path))
    assert errors == [25] * 4
    assert fake.token_requests <= 2  # the window, recorded in the folder, held for all four

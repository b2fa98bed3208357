"""FileTokenCache in a crowded folder: ``python benchmarks/file_store.py`` (about a minute).

What a token fetch asks of the store (lock, read, write), timed in a folder of
60 files and in one of 40,000, interleaved, as medians and their ratio; then
what the folder's sweep costs the writer who runs it, at most once a minute for
all processes together. The store used to scan the folder on every write: 0.8 ms
a write at 63 files, 35.6 ms at 40,169.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from requests_opsnow import Token, filecache
from requests_opsnow._token import token_to_record
from requests_opsnow.filecache import FileTokenCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import interleaved  # benchmarks/ is a folder of scripts, not a package

ROUNDS = 30
PER_ROUND = 20
BUSY_KEYS = 10
"""Keys the timed writes rotate over: the folder keeps its size while it is timed."""


def crowded_folder(files: int, expired_keys: int = 0) -> Path:
    """A cache folder of ``files`` files: tokens and their locks, a minute to an hour old,
    ``expired_keys`` of them expired."""
    folder = Path(tempfile.mkdtemp(prefix="opsnow-bench-")) / "cache"
    folder.mkdir(mode=0o700)
    now = time.time()
    (folder / ".swept").touch(mode=0o600)
    os.utime(folder / ".swept", (now + 3600, now + 3600))  # swept: due in an hour
    for number in range(files // 2):
        key = f"{number:064x}"
        expires_at = now - 60 if number < expired_keys else now + 3000
        path = folder / f"{key}.json"
        path.write_text(token_to_record(Token("t" * 800, expires_at, expires_at - 3600)))
        os.utime(path, (expires_at, expires_at))
        (folder / f"{key}.lock").touch(mode=0o600)
    return folder


def a_fetch_stored(cache: FileTokenCache, number: int) -> None:
    key = f"{number % BUSY_KEYS:064x}"
    now = time.time()
    with cache.lock(key):
        cache.get(key)
        cache.set(key, Token("t" * 800, now + 3600, now))


def per_operation(folders: dict[str, Path]) -> dict[str, float]:
    """Median µs of lock + read + write in each folder (no sweep due)."""
    variants = {name: fetches_stored_in(FileTokenCache(folder)) for name, folder in folders.items()}
    samples = interleaved(variants, ROUNDS, PER_ROUND)
    return {name: statistics.median(values) * 1e6 for name, values in samples.items()}


def fetches_stored_in(cache: FileTokenCache) -> Callable[[], None]:
    """What a fetch asks of ``cache``, once per call, over :data:`BUSY_KEYS` keys in turn."""
    numbers = itertools.count()
    return lambda: a_fetch_stored(cache, next(numbers))


def sweep_ms(folder: Path) -> float:
    """The write that runs a due sweep, in ms."""
    os.utime(folder / ".swept", (0, 0))  # due
    start = time.perf_counter()
    a_fetch_stored(FileTokenCache(folder), 0)
    return (time.perf_counter() - start) * 1e3


def main() -> int:
    small, large = crowded_folder(60), crowded_folder(40_000)
    costs = per_operation({"60 files": small, "40,000 files": large})
    plain_sweep = sweep_ms(large)
    expired = crowded_folder(40_000, expired_keys=filecache.SWEEP_KEYS)
    removing_sweep = sweep_ms(expired)
    removed = 40_001 - sum(1 for _ in expired.iterdir())  # 40,000 and the marker
    print(f"Python {sys.version.split()[0]}")
    print(
        f"lock + read + write: {costs['60 files']:.0f} us at 60 files,"
        f" {costs['40,000 files']:.0f} us at 40,000"
        f" ({costs['40,000 files'] / costs['60 files']:.2f}x)"
    )
    print(f"the write that sweeps 40,000 files, nothing to remove: {plain_sweep:.0f} ms")
    print(
        f"the write that sweeps 40,000 files, {filecache.SWEEP_KEYS} expired keys:"
        f" {removing_sweep:.0f} ms ({removed} files fewer)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one copy rule (``docs/design.md``, "Copies, pickles and forks"), checked for every class.

Each class derived from RuntimeState declares its runtime fields once; pickle,
deepcopy and fork derive from that declaration. A field added without being
declared fails here: it would travel in pickles (a lock cannot) or survive a fork.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import pytest
import redis

import requests_opsnow
from requests_opsnow import FileTokenCache, MemoryTokenCache, OpsNowAuth, RedisTokenCache
from requests_opsnow._config import _StoresByPlace
from requests_opsnow._core import AuthCore, _Switching
from requests_opsnow._driver_sync import _Refreshers, _Watchdog
from requests_opsnow._keysources import _KeyFiles
from requests_opsnow._lifecycle import TokenLifecycle, _Registry
from requests_opsnow._profiles import _Files, _Keys
from requests_opsnow._runtime import RuntimeState
from requests_opsnow._telemetry import _Subscribers
from requests_opsnow.httpx import OpsNowAuth as HttpxOpsNowAuth


def _every_subclass(cls: type) -> set[type]:
    """Subclasses defined in the package (tests define stores of their own)."""
    found = {sub for sub in cls.__subclasses__() if sub.__module__.startswith("requests_opsnow")}
    for sub in list(found):
        found |= _every_subclass(sub)
    return found


def factories(tmp_path: Path) -> dict[type, Callable[[], Any]]:
    return {
        OpsNowAuth: lambda: OpsNowAuth("key"),
        HttpxOpsNowAuth: lambda: HttpxOpsNowAuth("key"),
        AuthCore: lambda: AuthCore("key"),
        TokenLifecycle: lambda: TokenLifecycle("digest", 300.0, None),
        MemoryTokenCache: MemoryTokenCache,
        FileTokenCache: lambda: FileTokenCache(tmp_path),
        RedisTokenCache: lambda: RedisTokenCache(redis.Redis(port=1)),  # never connects here
        _Registry: _Registry,
        _StoresByPlace: _StoresByPlace,
        _Watchdog: _Watchdog,
        _Refreshers: _Refreshers,
        _Subscribers: _Subscribers,
        _Files: _Files,
        _Keys: _Keys,
        _KeyFiles: _KeyFiles,
        _Switching: _Switching,
    }


def test_every_runtime_state_class_is_checked_here(tmp_path: Path) -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(requests_opsnow.__path__, "requests_opsnow."):
        if info.name != "requests_opsnow.__main__":  # that one runs the command line
            importlib.import_module(info.name)  # every subclass gets defined
    assert _every_subclass(RuntimeState) == set(factories(tmp_path))


@pytest.mark.parametrize("cls", sorted(factories(Path()), key=lambda cls: cls.__name__))
def test_new_runtime_state_sets_exactly_the_declared_fields(cls: type, tmp_path: Path) -> None:
    made = factories(tmp_path)[cls]()
    configuration = made.__getstate__()
    assert not set(configuration) & set(cls._runtime_fields)  # type: ignore[attr-defined]
    pickle.dumps(configuration)  # configuration alone always pickles

    bare = cls.__new__(cls)
    bare.__dict__.update(configuration)
    bare._new_runtime_state()
    assert set(vars(bare)) - set(configuration) == set(cls._runtime_fields)  # type: ignore[attr-defined]
    assert set(cls._kept_across_fork) <= set(cls._runtime_fields)  # type: ignore[attr-defined]
    assert set(vars(made)) == set(vars(bare))  # __init__ adds nothing undeclared

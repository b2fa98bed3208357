"""What the documentation's examples run against: ``sphinx-build -b doctest`` runs every
example of a page after ``open_page()`` (conf.py's ``doctest_global_setup``) and closes it
after the page.

A page starts as a new user's machine would, offline: no ``OPSNOW_*`` variable but the
key and base URL of a running :class:`~requests_opsnow.testing.FakeOpsNow`, and empty
config and cache folders of its own (``XDG_CONFIG_HOME``, ``XDG_CACHE_HOME``), so that
``OpsNowAuth()``, profiles and ``FileTokenCache()`` work as documented without touching
the real home folder or the real API.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from requests_opsnow.testing import FakeOpsNow

ISOLATED = (
    "OPSNOW_API_KEY", "OPSNOW_BASE_URL", "OPSNOW_PROFILE", "OPSNOW_TOKEN_CACHE",
    "XDG_CONFIG_HOME", "XDG_CACHE_HOME",
)  # fmt: skip


class Page:
    """One page's fake server and folders; ``close()`` puts the environment back."""

    def __init__(self) -> None:
        self.saved = {name: os.environ.pop(name, None) for name in ISOLATED}
        self.folder = tempfile.mkdtemp(prefix="opsnow-docs-")
        os.environ["XDG_CONFIG_HOME"] = os.path.join(self.folder, "config")
        os.environ["XDG_CACHE_HOME"] = os.path.join(self.folder, "cache")
        self.fake = FakeOpsNow().start()
        os.environ["OPSNOW_API_KEY"] = self.fake.api_key
        os.environ["OPSNOW_BASE_URL"] = self.fake.base_url

    def close(self) -> None:
        self.fake.close()
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(self.folder, ignore_errors=True)


def open_page() -> Page:
    return Page()

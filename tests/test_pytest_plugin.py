"""The ``opsnow_fake`` fixture users get from the installed pytest plugin."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import requests

from requests_opsnow import OpsNowAuth
from requests_opsnow.testing import FakeOpsNow

pytestmark = pytest.mark.timeout(20)


def test_plugin_is_registered_through_the_pytest11_entry_point() -> None:
    every = entry_points()
    group = every.select(group="pytest11") if hasattr(every, "select") else every["pytest11"]
    # A set: Python 3.9 also lists the metadata a source checkout's egg-info repeats.
    assert {ep.value for ep in group if ep.name == "opsnow"} == {"requests_opsnow.pytest_plugin"}


def test_a_users_script_runs_offline_against_opsnow_fake(
    opsnow_fake: FakeOpsNow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSNOW_API_KEY", opsnow_fake.api_key)
    monkeypatch.setenv("OPSNOW_BASE_URL", opsnow_fake.base_url)

    auth = OpsNowAuth()  # what the user's script does, configured by the environment
    try:
        with requests.Session() as session:
            session.auth = auth
            for _ in range(3):
                response = session.get(opsnow_fake.base_url + "/platform/v2/companies")
                assert response.json()["data"]["companies"]
    finally:
        auth.close()
    assert opsnow_fake.token_requests == 1

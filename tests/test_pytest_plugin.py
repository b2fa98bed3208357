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


# -- a user's own tests that mock the token endpoint -----------------------------------------

USERS_MODULE = """
import requests
import requests_mock
import responses

from requests_opsnow import OpsNowAuth

KEY = "the-same-key-in-every-test"
API = "https://api.opsnow360.io/platform/v2/companies"
TOKEN = "https://api.opsnow360.io/platform/v2/identity/api-keys/token"


def token(value):
    return {"status": "success", "data": {"accessToken": value, "expiresIn": 3600}}
"""

WITH_RESPONSES = """
@responses.activate
def test_with_responses():
    responses.post(TOKEN, json=token("from-responses"))
    responses.get(API, json={"status": "success"})
    requests.get(API, auth=OpsNowAuth(KEY), timeout=5).raise_for_status()
    assert responses.calls[-1].request.headers["Authorization"] == "Bearer from-responses"
"""

WITH_REQUESTS_MOCK = """
def test_with_requests_mock():
    with requests_mock.Mocker() as mock:
        mock.post(TOKEN, json=token("from-requests-mock"))
        mock.get(API, json={"status": "success"})
        requests.get(API, auth=OpsNowAuth(KEY), timeout=5).raise_for_status()
        assert mock.request_history[-1].headers["Authorization"] == "Bearer from-requests-mock"
"""


@pytest.mark.parametrize(
    "tests", [[WITH_RESPONSES, WITH_REQUESTS_MOCK], [WITH_REQUESTS_MOCK, WITH_RESPONSES]]
)
def test_a_users_mocked_tests_pass_in_either_order_with_no_code_of_their_own(
    pytester: pytest.Pytester, tests: list[str]
) -> None:
    pytester.makepyfile(test_users="\n".join([USERS_MODULE, *tests]))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=2)

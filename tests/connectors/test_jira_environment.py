"""``read_environment_once``: a session's requests get the settings requests would merge from the
environment, read once per server instead of on every request."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from connectors.jira.connector import read_environment_once

URLS = [
    "https://jira.example/rest/api/3/issue/A-1/comment",
    "https://jira.example/rest/api/3/issue/B-2/properties/p",
    "https://jira.example:8443/rest/api/3/myself",
    "http://jira.example/rest/api/3/serverInfo",
    "https://internal.corp.example/rest/api/3/myself",
    "https://127.0.0.1:9000/rest/api/2/issue/C-3",
]


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain-proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "corp.example,127.0.0.1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")


@pytest.mark.usefixtures("environment")
@pytest.mark.parametrize("verify", [None, True, False, "/etc/ssl/own.pem"])
@pytest.mark.parametrize("stream", [None, True])
def test_the_settings_are_those_requests_merges(verify: Any, stream: Any) -> None:
    plain, once = requests.Session(), requests.Session()
    plain.verify = once.verify = "/etc/ssl/session.pem" if verify is None else True
    read_environment_once(once)
    for _ in range(2):  # the second time from what was kept
        for url in URLS:
            expected = plain.merge_environment_settings(url, {}, stream, verify, None)
            assert once.merge_environment_settings(url, {}, stream, verify, None) == expected
    own = {"https": "http://own-proxy.example:1"}
    assert once.merge_environment_settings(URLS[0], dict(own), stream, verify, None) == (
        plain.merge_environment_settings(URLS[0], dict(own), stream, verify, None)
    )


@pytest.mark.usefixtures("environment")
def test_the_environment_is_read_once_per_server_and_settings() -> None:
    session = requests.Session()
    calls: list[str] = []
    merge = session.merge_environment_settings

    def counted(url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        calls.append(url)
        return merge(url, proxies, stream, verify, cert)

    session.merge_environment_settings = counted  # type: ignore[method-assign]  # spied on, this session only
    read_environment_once(session)
    for url in URLS[:2] * 5:  # one server
        session.merge_environment_settings(url, {}, None, None, None)
    assert len(calls) == 1
    session.merge_environment_settings(URLS[2], {}, None, None, None)  # another port
    session.merge_environment_settings(URLS[0], {}, None, False, None)  # other settings
    session.merge_environment_settings(URLS[0], {"https": "http://own:1"}, None, None, None)  # its own proxies
    assert len(calls) == 4
    kept = session.merge_environment_settings(URLS[0], {}, None, None, None)
    kept["proxies"]["https"] = "changed by the caller"
    assert session.merge_environment_settings(URLS[0], {}, None, None, None)["proxies"]["https"] == (
        "http://proxy.example:3128"
    )
    assert len(calls) == 4

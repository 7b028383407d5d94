"""The requests session simple-salesforce talks through: timeouts, TLS trust, local endpoints.

simple-salesforce sets no timeout and hard-codes ``https://`` for both the instance and the login
host (API-NOTES 1.1). ``LocalEndpointAdapter`` gives every request a timeout and sends requests
for a given https origin to another origin instead (a plain-HTTP emulator or a proxy on loopback),
so the library itself runs unmodified.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter


class LocalEndpointAdapter(HTTPAdapter):
    def __init__(self, rewrites: dict[str, str], timeout: float, pool_size: int = 10) -> None:
        super().__init__(pool_connections=pool_size, pool_maxsize=pool_size)
        self.rewrites = {k.rstrip("/"): v.rstrip("/") for k, v in rewrites.items()}
        self.timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]  # requests' signature is untyped kwargs
        url = request.url or ""
        for origin, target in self.rewrites.items():
            if url.startswith(origin + "/") or url == origin:
                request.url = target + url[len(origin) :]
                break
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def build_session(
    *,
    instance_url: str | None,
    login_url: str | None,
    login_host: str,
    ca_cert: str | None,
    timeout: float,
    pool_size: int = 10,
) -> requests.Session:
    """A session for simple-salesforce.

    ``login_host`` is the https origin the library logs in at (``https://login.salesforce.com``);
    when ``login_url`` is given, logins go there instead. A plain-HTTP ``instance_url`` has the
    library's https URLs for that host rewritten to http.
    """
    rewrites: dict[str, str] = {}
    if login_url:
        rewrites[login_host] = _origin(login_url)
    for url in (instance_url, login_url):
        if url and urlsplit(url).scheme == "http":
            origin = _origin(url)
            rewrites[origin.replace("http://", "https://", 1)] = origin
    session = requests.Session()
    adapter = LocalEndpointAdapter(rewrites, timeout, pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    if ca_cert:
        session.verify = ca_cert
        session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override verify (API-NOTES 1.1)
    return session

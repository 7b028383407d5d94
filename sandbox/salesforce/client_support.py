"""Pointing simple-salesforce (which hard-codes ``https://`` and ``*.salesforce.com`` login hosts) at a
sandbox, with plain ``requests`` sessions and no monkey-patching.

- ``PlainHttpAdapter`` sends ``https://127.0.0.1:PORT/...`` as ``http://127.0.0.1:PORT/...``.
- ``OriginRewriteAdapter`` sends requests for one origin (``https://login.salesforce.com``) to
  another (the sandbox), so the SOAP and OAuth logins reach it too.
- ``sandbox_session(instance_url, ca_cert=...)`` mounts what is needed for either an ``http://``
  sandbox or a TLS one (verifying against the sandbox's certificate, ignoring ``REQUESTS_CA_BUNDLE``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

LOGIN_DOMAINS = ("login", "test")


class OriginRewriteAdapter(HTTPAdapter):
    """Sends every request whose URL starts with ``source`` to the same path under ``target``."""

    def __init__(self, source: str, target: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source.rstrip("/")
        self.target = target.rstrip("/")

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        url = request.url or ""
        if url.startswith(self.source):
            request.url = self.target + url[len(self.source) :]
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)


class PlainHttpAdapter(OriginRewriteAdapter):
    """``https://host:port`` -> ``http://host:port`` for one plain-HTTP sandbox origin."""

    def __init__(self, origin: str, **kwargs: Any) -> None:
        parts = urlsplit(origin)
        super().__init__(f"https://{parts.netloc}", f"http://{parts.netloc}", **kwargs)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return parts.scheme, parts.netloc


def sandbox_session(
    instance_url: str,
    *,
    ca_cert: str | Path | None = None,
    login_domains: Iterable[str] = LOGIN_DOMAINS,
) -> requests.Session:
    """A session that lets simple-salesforce talk to the sandbox at ``instance_url``.

    Data calls go to ``https://{host:port}`` as simple-salesforce builds them: for an ``http://``
    sandbox they are rewritten to ``http://``; for an ``https://`` one the sandbox certificate
    ``ca_cert`` is trusted (and only it: ``trust_env`` is off so ``REQUESTS_CA_BUNDLE`` cannot
    override it). Logins to ``https://{domain}.salesforce.com`` for each of ``login_domains`` are
    sent to the sandbox as well.
    """
    scheme, netloc = _origin(instance_url)
    session = requests.Session()
    session.trust_env = False  # loopback: no proxies, and no CA bundle from the environment
    target = f"{scheme}://{netloc}"
    if scheme == "http":
        session.mount(f"https://{netloc}", PlainHttpAdapter(target))
    elif ca_cert is not None:
        session.verify = str(ca_cert)
    for domain in login_domains:
        session.mount(
            f"https://{domain}.salesforce.com",
            OriginRewriteAdapter(f"https://{domain}.salesforce.com", target),
        )
    return session


def plain_http_session(instance_url: str, login_domains: Iterable[str] = LOGIN_DOMAINS) -> requests.Session:
    """``sandbox_session`` for a plain-HTTP sandbox (``instance_url`` may be given as http or https)."""
    _, netloc = _origin(instance_url)
    return sandbox_session(f"http://{netloc}", login_domains=login_domains)

"""A client of the sandbox control API, for the CLI, benchmarks and out-of-process tests."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlencode

import requests


class SandboxControlError(RuntimeError):
    pass


class SandboxControl:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False  # loopback: never through a proxy

    def _call(self, method: str, path: str, json: dict[str, Any] | None = None) -> Any:
        try:
            response = self._session.request(method, self.base_url + path, json=json, timeout=self.timeout)
        except requests.ConnectionError as exc:
            raise SandboxControlError(
                f"cannot reach the sandbox control API at {self.base_url}: is `accord sandbox up` running?"
            ) from exc
        if response.status_code >= 400:
            raise SandboxControlError(f"{method} {path} failed with {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else None

    def info(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("GET", "/info"))

    def requests(self, api: str | None = None, since: int = 0) -> dict[str, Any]:
        query = f"?since={since}" + (f"&api={api}" if api else "")
        return cast(dict[str, Any], self._call("GET", "/requests" + query))

    def summary(self, since: int = 0) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("GET", f"/requests/summary?since={since}"))

    def clear_requests(self) -> None:
        self._call("DELETE", "/requests")

    def faults(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("GET", "/faults"))

    def set_faults(self, api: str, **settings: Any) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("PATCH", f"/faults/{api}", json=settings))

    def reset_faults(self) -> None:
        self._call("DELETE", "/faults")

    def expire(self, api: str) -> None:
        self._call("POST", f"/credentials/{api}/expire")

    def mutate(self, count: int, seed: int, late_share: float = 0.1) -> list[dict[str, Any]]:
        body = {"count": count, "seed": seed, "late_share": late_share}
        return cast(list[dict[str, Any]], self._call("POST", "/mutate", json=body)["changes"])

    def counts(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("GET", "/counts"))

    def written(self, task_external_id: str) -> dict[str, dict[str, int]]:
        """Accord's writes the targets hold, per target and idempotency key (see ``Sandbox.written``)."""
        query = urlencode({"task_external_id": task_external_id})
        return cast(dict[str, dict[str, int]], self._call("GET", f"/written?{query}"))

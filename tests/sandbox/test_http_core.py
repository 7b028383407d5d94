"""The shared server framework: routing, auth hook, request log, faults, TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sandbox.faults import FaultInjector, FaultSettings
from sandbox.http import ApiApp, ApiServer, Request, Response
from sandbox.recorder import RequestLog
from sandbox.tls import make_self_signed, server_context


class EchoApp(ApiApp):
    api_name = "echo"

    def __init__(self) -> None:
        super().__init__()
        self.add_route("GET", r"/items/(?P<item>\w+)", "items.get", self.get_item)
        self.add_route("POST", r"/items", "items.create", self.create_item)
        self.add_route("GET", r"/open", "open", lambda r: Response.json({"open": True}), authenticated=False)
        self.created: list[object] = []

    def authenticate(self, request: Request) -> Response | None:
        if request.header("Authorization") != "Bearer good":
            return Response.json({"error": "unauthorized"}, 401)
        return None

    def get_item(self, request: Request) -> Response:
        return Response.json({"item": request.params["item"], "q": request.args("q")})

    def create_item(self, request: Request) -> Response:
        try:
            item = request.json()
        except ValueError as exc:
            return Response.json({"error": str(exc)}, 400)
        self.created.append(item)
        return Response.json(item, 201)


@pytest.fixture
def served() -> Iterator[tuple[EchoApp, ApiServer, RequestLog]]:
    app, log = EchoApp(), RequestLog()
    server = ApiServer(app, log)
    server.start()
    yield app, server, log
    server.stop()


AUTH = {"Authorization": "Bearer good"}


def test_routes_params_and_log(served: tuple[EchoApp, ApiServer, RequestLog]) -> None:
    _, server, log = served
    with requests.Session() as s:
        r = s.get(server.base_url + "/items/a1?q=x&q=y", headers=AUTH, timeout=10)
        assert r.json() == {"item": "a1", "q": ["x", "y"]}
        assert s.post(server.base_url + "/items", json={"name": "n"}, headers=AUTH, timeout=10).status_code == 201
        assert s.get(server.base_url + "/nope", headers=AUTH, timeout=10).status_code == 404
        assert s.delete(server.base_url + "/items", headers=AUTH, timeout=10).status_code == 405
    assert [r.endpoint for r in log.records()] == [
        "items.get",
        "items.create",
        "unknown",
        "method_not_allowed",
    ]
    assert log.records()[0].query == {"q": ["x", "y"]}
    assert log.records()[1].body_keys == ("name",)
    assert log.summary() == {
        "echo": {"DELETE method_not_allowed": 1, "GET items.get": 1, "GET unknown": 1, "POST items.create": 1}
    }


def test_authentication_is_enforced_except_on_open_routes(
    served: tuple[EchoApp, ApiServer, RequestLog],
) -> None:
    _, server, _ = served
    assert requests.get(server.base_url + "/items/a", timeout=10).status_code == 401
    assert requests.get(server.base_url + "/open", timeout=10).json() == {"open": True}


def test_injected_faults_are_recorded(served: tuple[EchoApp, ApiServer, RequestLog]) -> None:
    app, server, log = served
    app.faults.configure(rate_429=1.0, retry_after_s=3)
    r = requests.get(server.base_url + "/items/a", headers=AUTH, timeout=10)
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"
    app.faults.configure(rate_429=0.0, rate_drop=1.0)
    with pytest.raises(requests.ConnectionError):
        requests.get(server.base_url + "/items/a", headers=AUTH, timeout=10)
    app.faults.configure(rate_drop=0.0, rate_5xx=1.0)
    assert requests.get(server.base_url + "/items/a", headers=AUTH, timeout=10).status_code in (500, 502, 503)
    assert [(r.fault, r.status) for r in log.records()][:2] == [("429", 429), ("drop", 0)]
    assert app.faults.snapshot()["injected"] == {"429": 1, "5xx": 1, "drop": 1, "drop_after": 0}


def test_drop_after_applies_a_write_and_loses_its_answer(served: tuple[EchoApp, ApiServer, RequestLog]) -> None:
    app, server, log = served
    app.faults.configure(rate_drop_after=1.0)
    with requests.Session() as s:
        with pytest.raises(requests.ConnectionError):
            s.post(server.base_url + "/items", json={"name": "landed"}, headers=AUTH, timeout=10)
        # reads are never dropped after the fact; the session reconnects after the dropped one
        assert s.get(server.base_url + "/items/a", headers=AUTH, timeout=10).json()["item"] == "a"
    assert app.created == [{"name": "landed"}]  # the write was applied in full
    assert [(r.method, r.endpoint, r.status, r.fault) for r in log.records()] == [
        ("POST", "items.create", 0, "drop_after"),
        ("GET", "items.get", 200, None),
    ]
    assert app.faults.snapshot()["injected"] == {"429": 0, "5xx": 0, "drop": 0, "drop_after": 1}
    # a rejected write is "applied" too (nothing changes) and its answer lost all the same
    with pytest.raises(requests.ConnectionError):
        requests.post(server.base_url + "/items", data=b"not json", headers=AUTH, timeout=10)
    assert app.created == [{"name": "landed"}] and log.records()[-1].fault == "drop_after"


def test_drop_after_only_hits_writes_and_is_seeded() -> None:
    def run(seed: int, method: str) -> list[str | None]:
        injector = FaultInjector(FaultSettings(rate_429=0.1, rate_drop_after=0.3, seed=seed))
        return [injector.decide(method) for _ in range(300)]

    assert run(3, "POST") == run(3, "POST")
    writes = run(3, "PATCH")
    assert 60 < writes.count("drop_after") < 120 and "drop" not in writes
    reads = run(3, "GET")
    assert "drop_after" not in reads
    # the same rolls: a read gets the write's 429s, and nothing where the write got drop_after
    assert [d if d == "429" else None for d in writes] == reads
    # without drop_after the decisions are those of before (one roll per request, same bands)
    plain = FaultInjector(FaultSettings(rate_429=0.2, rate_5xx=0.2, rate_drop=0.1, seed=5))
    with_zero = FaultInjector(FaultSettings(rate_429=0.2, rate_5xx=0.2, rate_drop=0.1, rate_drop_after=0.0, seed=5))
    assert [plain.decide("POST") for _ in range(100)] == [with_zero.decide("POST") for _ in range(100)]


def test_fault_decisions_are_seeded() -> None:
    def run(seed: int) -> list[str | None]:
        injector = FaultInjector(FaultSettings(rate_429=0.2, rate_5xx=0.2, rate_drop=0.1, seed=seed))
        return [injector.decide() for _ in range(200)]

    assert run(5) == run(5)
    assert run(5) != run(6)
    decisions = run(5)
    assert 20 < decisions.count("429") < 60 and decisions.count("drop") > 5


def test_bad_fault_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="rate_429"):
        FaultInjector().configure(rate_429=1.5)
    with pytest.raises(ValueError, match="unknown fault setting"):
        FaultInjector().configure(rate_teapot=0.5)
    with pytest.raises(ValueError, match="rate_drop_after"):
        FaultInjector().configure(rate_drop_after=-0.1)
    with pytest.raises(ValueError, match="must not exceed 1"):
        FaultInjector().configure(rate_drop=0.5, rate_drop_after=0.6)


def test_tls(tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    log = RequestLog()
    server = ApiServer(EchoApp(), log, ssl_context=server_context(cert, key))
    server.start()
    try:
        with requests.Session() as s:
            s.trust_env = False
            assert s.get(server.base_url + "/open", verify=str(cert)).json() == {"open": True}
            with pytest.raises(requests.exceptions.SSLError):
                requests.Session().get(server.base_url + "/open", verify=True, timeout=10)
    finally:
        server.stop()
    assert server.base_url.startswith("https://127.0.0.1:")

"""The sandbox's own control API: request counts, faults, credential expiry, mutations, the clock.

Served on its own loopback port (``info()["control"]``), never faulted and not recorded with the
emulators' traffic. The CLI (``accord sandbox requests|faults|expire|mutate``) and out-of-process
tests and benchmarks use it; in-process tests call the ``Sandbox`` object directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sandbox.http import ApiApp, ApiError, Request, Response

if TYPE_CHECKING:
    from sandbox.app import Sandbox


class ControlApp(ApiApp):
    api_name = "control"

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__()
        self.sandbox = sandbox
        api = r"(?P<api>salesforce|jira|google_calendar)"
        self.add_route("GET", r"/info", "info", self.info)
        self.add_route("GET", r"/requests", "requests", self.requests)
        self.add_route("GET", r"/requests/summary", "requests.summary", self.summary)
        self.add_route("DELETE", r"/requests", "requests.clear", self.clear_requests)
        self.add_route("GET", r"/faults", "faults", self.get_faults)
        self.add_route("PATCH", rf"/faults/{api}", "faults.set", self.set_faults)
        self.add_route("DELETE", r"/faults", "faults.reset", self.reset_faults)
        self.add_route("POST", rf"/credentials/{api}/expire", "credentials.expire", self.expire)
        self.add_route("POST", rf"/credentials/{api}/restore", "credentials.restore", self.restore)
        self.add_route("POST", r"/google_calendar/sync-tokens/invalidate", "sync_tokens.invalidate", self.invalidate)
        self.add_route("POST", r"/mutate", "mutate", self.mutate)
        self.add_route("POST", r"/release", "release", self.release)
        self.add_route("POST", r"/clock/advance", "clock.advance", self.advance_clock)
        self.add_route("GET", r"/counts", "counts", self.counts)
        self.add_route("GET", r"/written", "written", self.written)
        self.add_route("GET", r"/errors", "errors", self.errors)

    def bad_request(self, request: Request, message: str) -> Response:
        return Response.json({"error": message}, 400)

    def _body(self, request: Request) -> dict[str, Any]:
        if not request.body:
            return {}
        try:
            data = request.json()
        except ValueError as exc:
            raise ApiError(self.bad_request(request, str(exc))) from exc
        if not isinstance(data, dict):
            raise ApiError(self.bad_request(request, "expected a JSON object"))
        return data

    def info(self, request: Request) -> Response:
        return Response.json(self.sandbox.info())

    def requests(self, request: Request) -> Response:
        since = int(request.arg("since", "0") or 0)
        records = self.sandbox.log.records(api=request.arg("api"), endpoint=request.arg("endpoint"), since_seq=since)
        return Response.json({"last_seq": self.sandbox.log.last_seq, "requests": [r.to_json() for r in records]})

    def summary(self, request: Request) -> Response:
        since = int(request.arg("since", "0") or 0)
        return Response.json({"last_seq": self.sandbox.log.last_seq, "summary": self.sandbox.log.summary(since)})

    def clear_requests(self, request: Request) -> Response:
        self.sandbox.log.clear()
        return Response.empty()

    def get_faults(self, request: Request) -> Response:
        return Response.json({name: app.faults.snapshot() for name, app in self.sandbox.apps.items()})

    def set_faults(self, request: Request) -> Response:
        app = self.sandbox.apps[request.params["api"]]
        try:
            settings = app.faults.configure(**self._body(request))
        except (TypeError, ValueError) as exc:
            return self.bad_request(request, str(exc))
        return Response.json(app.faults.snapshot() | {"settings": settings.__dict__})

    def reset_faults(self, request: Request) -> Response:
        for app in self.sandbox.apps.values():
            app.faults.reset()
        return Response.empty()

    def expire(self, request: Request) -> Response:
        self.sandbox.apps[request.params["api"]].expire_credentials()
        return Response.empty()

    def restore(self, request: Request) -> Response:
        restore = getattr(self.sandbox.apps[request.params["api"]], "restore_credentials", None)
        if restore is None:
            return self.bad_request(request, "this API renews credentials by logging in again; nothing to restore")
        restore()
        return Response.empty()

    def invalidate(self, request: Request) -> Response:
        calendar = self._body(request).get("calendar_id")
        self.sandbox.calendar_store.invalidate_sync_tokens(str(calendar) if calendar else None)
        return Response.empty()

    def mutate(self, request: Request) -> Response:
        body = self._body(request)
        try:
            count = int(body.get("count", 10))
            seed = int(body.get("seed", 0))
            late_share = float(body.get("late_share", 0.1))
        except (TypeError, ValueError) as exc:
            return self.bad_request(request, f"count, seed and late_share must be numbers: {exc}")
        changes = self.sandbox.mutate(count, seed, late_share=late_share)
        return Response.json({"changes": [c.to_json() for c in changes]})

    def release(self, request: Request) -> Response:
        return Response.json({"changes": [c.to_json() for c in self.sandbox.release_pending()]})

    def advance_clock(self, request: Request) -> Response:
        try:
            seconds = float(self._body(request).get("seconds", 0))
        except (TypeError, ValueError) as exc:
            return self.bad_request(request, f"seconds must be a number: {exc}")
        self.sandbox.clock.advance(seconds)
        return Response.json({"now": self.sandbox.clock.now().isoformat()})

    def counts(self, request: Request) -> Response:
        return Response.json(self.sandbox.counts())

    def written(self, request: Request) -> Response:
        try:
            return Response.json(self.sandbox.written(request.arg("task_external_id") or ""))
        except ValueError as exc:
            return self.bad_request(request, str(exc))

    def errors(self, request: Request) -> Response:
        return Response.json({"errors": self.sandbox.emulator_errors()})

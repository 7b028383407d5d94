"""A small HTTP/1.1 server framework shared by the three emulators.

Stdlib only (``ThreadingHTTPServer``): keep-alive, optional TLS, a router of named routes, the
request log and fault injection. Each emulator subclasses ``ApiApp`` and supplies routes,
authentication and the API's own error shapes; this module knows nothing about any SaaS API.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

try:
    import orjson
except ImportError:  # pragma: no cover - a project dependency; without it every body takes json's path
    orjson = None  # type: ignore[assignment]  # (absent: every body takes the json path)

from sandbox.faults import FaultInjector
from sandbox.recorder import RequestLog

JSON = Any


# Response bodies are json.dumps(data, ensure_ascii=False, separators=(",", ":")) in UTF-8. orjson
# writes the same bytes many times faster for dicts and lists of strings, ints, bools and null; it
# differs on some floats (1e-07 vs 1e-7, NaN as null), ints beyond 64 bits, non-str keys and on
# objects json refuses (datetimes, dataclasses, subclasses), so encode_json takes orjson's answer
# only when orjson refused nothing and the answer holds no float token and no null (NaN's stand-in).
# Float tokens are found on a copy with every digit made "0", "E" made "e" and "-" made "+": a
# fraction or an exponent directly followed by the , } or ] that ends a number (false alarms, e.g.
# in strings, only cost the slower path).
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
    if orjson is not None
    else 0
)
_NUMBER_SHAPES = bytes.maketrans(b"0123456789E-", b"0000000000e+")
_FRACTION = re.compile(rb"\.0+(?:e\+?0+)?[,}\]]")
_EXPONENT = re.compile(rb"0e\+?0+[,}\]]")


def _refuse(value: Any) -> Any:
    raise TypeError(f"not JSON: {type(value).__name__}")


def encode_json(data: JSON) -> bytes:
    """``json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")``, through
    orjson when that is certainly the same bytes (see above); errors are json's."""
    if orjson is not None and isinstance(data, dict | list):
        try:
            fast = orjson.dumps(data, default=_refuse, option=_ORJSON_OPTIONS)
        except TypeError:  # orjson.JSONEncodeError is one
            pass
        else:
            if b"null" not in fast:
                shapes = fast.translate(_NUMBER_SHAPES)
                if _FRACTION.search(shapes) is None and _EXPONENT.search(shapes) is None:
                    return fast
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass
class Request:
    method: str
    raw_path: str  # path as sent, percent-encoded
    path: str  # percent-decoded path
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # named groups of the matched route

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> list[str]:
        return list(self.query.get(name, []))

    def header(self, name: str, default: str | None = None) -> str | None:
        value = self.headers.get(name)
        return value if value is not None else default

    def json(self) -> JSON:
        """The body parsed as JSON; raises ``ValueError`` with a short reason when it is not."""
        if not self.body:
            raise ValueError("request body is empty")
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"request body is not valid JSON: {exc}") from exc


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: JSON, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        payload = encode_json(data)
        merged = {"Content-Type": "application/json;charset=UTF-8", **(headers or {})}
        return cls(status, payload, merged)

    @classmethod
    def json_bytes(cls, payload: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        """JSON already encoded exactly as ``json()`` encodes it (e.g. assembled from cached parts)."""
        merged = {"Content-Type": "application/json;charset=UTF-8", **(headers or {})}
        return cls(status, payload, merged)

    @classmethod
    def text(
        cls, text: str, status: int = 200, content_type: str = "text/plain;charset=UTF-8", **headers: str
    ) -> Response:
        return cls(status, text.encode("utf-8"), {"Content-Type": content_type, **headers})

    @classmethod
    def empty(cls, status: int = 204, headers: dict[str, str] | None = None) -> Response:
        return cls(status, b"", dict(headers or {}))


class ApiError(Exception):
    """Raised by handlers to answer with a ready-made (error) response."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    name: str
    handler: Handler
    authenticated: bool = True


class ApiApp:
    """Base class of an emulator: routing, auth hook, fault responses in the API's own words."""

    api_name: str = "api"

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self.faults = FaultInjector()
        self.base_url = ""  # set by the sandbox once the server is bound; login/token answers use it

    # -- routing -------------------------------------------------------------------------------
    def add_route(self, method: str, pattern: str, name: str, handler: Handler, *, authenticated: bool = True) -> None:
        self.routes.append(Route(method, re.compile(pattern + r"\Z"), name, handler, authenticated))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """The route for (method, path), its params, and whether the path exists for another method."""
        path_known = False
        for route in self.routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method:
                return route, {k: v for k, v in m.groupdict().items() if v is not None}, True
            path_known = True
        return None, {}, path_known

    # -- hooks for subclasses --------------------------------------------------------------------
    def authenticate(self, request: Request) -> Response | None:
        """None when the request's credential is valid, else the API's 401 response."""
        return None

    def not_found(self, request: Request) -> Response:
        return Response.json({"error": "not found"}, 404)

    def method_not_allowed(self, request: Request) -> Response:
        return Response.json({"error": "method not allowed"}, 405)

    def bad_request(self, request: Request, message: str) -> Response:
        return Response.json({"error": message}, 400)

    def rate_limited(self, request: Request, retry_after_s: int) -> Response:
        return Response.json({"error": "rate limited"}, 429, {"Retry-After": str(retry_after_s)})

    def server_error(self, request: Request, status: int) -> Response:
        return Response.json({"error": "server error"}, status)

    def decorate(self, request: Request, response: Response) -> None:
        """Add headers every response of this API carries (e.g. Sforce-Limit-Info)."""

    def expire_credentials(self) -> None:
        """Invalidate every session or token issued so far (the fault "expiring sessions")."""

    # -- dispatch --------------------------------------------------------------------------------
    def dispatch(self, request: Request, route: Route | None, path_known: bool) -> Response:
        if route is None:
            return self.method_not_allowed(request) if path_known else self.not_found(request)
        if route.authenticated:
            denied = self.authenticate(request)
            if denied is not None:
                return denied
        try:
            return route.handler(request)
        except ApiError as exc:
            return exc.response


POLL_INTERVAL_S = 0.5  # how often an idle server wakes up to look for shutdown() (see ApiServer.stop)


class _DropConnection(Exception):
    pass


def _make_handler(server: ApiServer) -> type[BaseHTTPRequestHandler]:
    app = server.app
    log = server.log

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as two writes; with Nagle on, the second waits for the client's
        # delayed ACK (~40 ms a request). Loopback APIs answer in about a millisecond without it.
        disable_nagle_algorithm = True
        server_version = f"accord-sandbox-{app.api_name}"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            """Silence the stdlib's per-request stderr line; the request log is the record."""

        def _serve(self) -> None:
            started = time.perf_counter()
            split = urlsplit(self.path)
            raw_path = split.path
            path = unquote(raw_path)
            query = parse_qs(split.query, keep_blank_values=True)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(self.command, raw_path, path, query, self.headers, body)
            route, params, path_known = app.match(self.command, path)
            request.params = params
            endpoint = route.name if route else ("unknown" if not path_known else "method_not_allowed")

            delay = app.faults.delay_seconds()
            if delay:
                time.sleep(delay)  # latency injected on purpose: this is the emulator, not a test
            fault = app.faults.decide(self.command) if route is not None else None
            if fault == "drop":
                self._record(request, endpoint, 0, "drop", started)
                raise _DropConnection
            if fault == "429":
                response = app.rate_limited(request, app.faults.settings.retry_after_s)
            elif fault == "5xx":
                response = app.server_error(request, app.faults.pick_5xx())
            else:
                try:
                    response = app.dispatch(request, route, path_known)
                except Exception as exc:  # an emulator bug must still answer, and loudly
                    server.errors.append(f"{type(exc).__name__}: {exc}")
                    response = app.server_error(request, 500)
            app.decorate(request, response)
            if fault == "drop_after":  # the write is done; its answer never leaves
                self._record(request, endpoint, 0, "drop_after", started)
                raise _DropConnection
            self._record(request, endpoint, response.status, fault, started)
            self._write(response)

        def _record(self, request: Request, endpoint: str, status: int, fault: str | None, t0: float) -> None:
            body_keys: tuple[str, ...] = ()
            if request.body[:1] == b"{":
                try:
                    body_keys = tuple(sorted(json.loads(request.body)))
                except (ValueError, TypeError):
                    body_keys = ()
            log.append(
                api=app.api_name,
                method=request.method,
                path=request.path,
                query=request.query,
                status=status,
                endpoint=endpoint,
                fault=fault,
                duration_ms=round((time.perf_counter() - t0) * 1000, 3),
                body_keys=body_keys,
            )

        def _write(self, response: Response) -> None:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD" and response.body:
                self.wfile.write(response.body)

        def _handle_any(self) -> None:
            try:
                self._serve()
            except _DropConnection:
                self.close_connection = True
                with contextlib.suppress(OSError):  # the client may already be gone
                    self.connection.shutdown(socket.SHUT_RDWR)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle_any

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients closing keep-alive connections is normal; stay quiet."""


class ApiServer:
    """Serves one ``ApiApp`` on 127.0.0.1 in a background thread."""

    def __init__(
        self,
        app: ApiApp,
        log: RequestLog,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.log = log
        self.errors: list[str] = []
        self._httpd = _Server((host, port), _make_handler(self))
        if ssl_context is not None:
            # Handshake lazily in the connection's own thread, so one slow client cannot stall accept().
            self._httpd.socket = ssl_context.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.scheme = "https" if ssl_context is not None else "http"
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": POLL_INTERVAL_S}, daemon=True
        )
        self._thread.name = f"sandbox-{self.app.api_name}"
        self._thread.start()

    def stop(self) -> None:
        # serve_forever notices shutdown() between polls; a connection wakes its select() at once, so
        # the poll can be long (an idle sandbox then costs next to no CPU) and stopping stays fast.
        stopper = threading.Thread(target=self._httpd.shutdown, daemon=True)
        stopper.start()
        while stopper.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            stopper.join(0.05)
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

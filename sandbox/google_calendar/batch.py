"""Google's batch wire format: one multipart/mixed POST carrying up to 1000 HTTP requests.

Each request part is ``Content-Type: application/http`` with a ``Content-ID``; the answer holds one
part per request, in order, with ``Content-ID: <response-{id}>`` and a full HTTP response inside
(status line, headers, blank line, body, with CRLF line ends: googleapiclient splits each part at
the first ``\\r\\n\\r\\n``). See https://developers.google.com/calendar/api/guides/batch.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from email.message import Message
from email.parser import Parser
from http import HTTPStatus

from sandbox.http import Response

MAX_PARTS = 1000


@dataclass
class BatchPart:
    content_id: str | None
    method: str
    target: str  # path and query as in the request line, e.g. /calendar/v3/calendars/x/events?alt=json
    headers: Message
    body: bytes


class BatchFormatError(ValueError):
    """The body is not a readable multipart/mixed batch."""


def parse_batch(content_type: str, body: bytes) -> list[BatchPart]:
    """The inner requests of a batch body, in order."""
    if not content_type.lower().startswith("multipart/mixed") or "boundary=" not in content_type.lower():
        raise BatchFormatError("a batch must be multipart/mixed with a boundary")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchFormatError("a batch body must be UTF-8") from exc
    outer = Parser().parsestr(f"Content-Type: {content_type}\r\n\r\n{text}")
    if not outer.is_multipart():
        raise BatchFormatError("no parts found")
    parts: list[BatchPart] = []
    payload = outer.get_payload()
    assert isinstance(payload, list)
    for part in payload:
        if not isinstance(part, Message):
            raise BatchFormatError("unreadable batch part")
        inner = part.get_payload()
        if not isinstance(inner, str):
            raise BatchFormatError("a batch part must be application/http")
        request_line, _, rest = inner.lstrip("\r\n").partition("\n")
        pieces = request_line.strip().split(" ")
        if len(pieces) < 2:
            raise BatchFormatError("a batch part must start with a request line")
        message = Parser().parsestr(rest)
        raw_body = message.get_payload()
        content = raw_body if isinstance(raw_body, str) else ""
        parts.append(
            BatchPart(
                content_id=part.get("Content-ID"),
                method=pieces[0].upper(),
                target=pieces[1],
                headers=message,
                body=content.encode("utf-8") if content.strip() else b"",
            )
        )
    return parts


def response_id(content_id: str) -> str:
    """``<abc + 1>`` -> ``<response-abc + 1>``, as Google answers it."""
    inner = content_id[1:-1] if content_id.startswith("<") and content_id.endswith(">") else content_id
    return f"<response-{inner}>"


def render_batch(answers: list[tuple[str | None, Response]]) -> Response:
    """One multipart/mixed response holding every inner response, in request order."""
    boundary = "batch_" + secrets.token_hex(12)
    chunks: list[str] = []
    for content_id, answer in answers:
        chunks.append(f"--{boundary}\r\nContent-Type: application/http\r\n")
        if content_id:
            chunks.append(f"Content-ID: {response_id(content_id)}\r\n")
        chunks.append("\r\n")
        chunks.append(f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}\r\n")
        for name, value in answer.headers.items():
            chunks.append(f"{name}: {value}\r\n")
        chunks.append(f"Content-Length: {len(answer.body)}\r\n\r\n")
        chunks.append(answer.body.decode("utf-8"))
        chunks.append("\r\n")
    chunks.append(f"--{boundary}--\r\n")
    return Response(200, "".join(chunks).encode("utf-8"), {"Content-Type": f"multipart/mixed; boundary={boundary}"})

"""``fast_loads`` answers exactly what ``json.loads`` answers, or steps aside; the Jira reader's page
decoding is ``JIRA._get_json`` to the value, to the error and to the log line."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from jira.exceptions import JIRAError

from connectors.jira.connector import _decode
from connectors.jsonbody import NOT_DECODED, fast_loads


def typed(value: Any) -> Any:
    """The value with the type of every part spelled out (1 and 1.0 and True compare equal)."""
    if isinstance(value, dict):
        return ("dict", [(typed(k), typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, float):
        return ("float", value.hex())
    return (type(value).__name__, value)


def reference(body: bytes) -> tuple[str, Any]:
    try:
        return ("ok", typed(json.loads(body.decode("utf-8"))))
    except (ValueError, RecursionError) as exc:
        return ("error", type(exc).__name__)


def check(body: bytes) -> bool:
    """Whether orjson decoded it; when it did, the value is json's, type for type, key order too."""
    decoded = fast_loads(body)
    if decoded is NOT_DECODED:
        return False
    assert ("ok", typed(decoded)) == reference(body), body[:200]
    return True


@pytest.mark.parametrize(
    ("body", "fast"),
    [
        (b'{"a":1,"b":2,"a":3}', True),  # the last duplicate wins, at the first one's place
        (b'{"a": [1, 1.0, -0, -0.0, 1E2, 0.1, 5e-324, 1e-400, true, false, null, "x"]}', True),
        (b"[9223372036854775807, -9223372036854775808, 18446744073709551615]", False),  # 19+ digits
        (b"[18446744073709551616]", False),  # orjson would make it a float
        (b"[-9223372036854775809]", False),
        (b"[123456789012345678]", True),
        (b'["1234567890123456789"]', False),  # a long digit run in a string: json's way, same value
        (b"[1e400]", False),
        (b"[NaN]", False),
        (b"[Infinity, -Infinity]", False),
        (b'["\\ud800"]', False),  # a lone surrogate: json keeps it, orjson refuses
        (b'["\\ud83d\\ude80 \\u00e9 \\u0000"]', True),
        ("[\"\U0001f680 北京 'quoted' <b>x</b> {{ 7*7 }}\"]".encode(), True),
        (b'["\xff"]', False),  # not UTF-8
        (b"\xef\xbb\xbf{}", False),  # a BOM
        (b"", False),
        (b"[1,]", False),
        (b'   {"a" : [ ] }  \n', True),
        (b"[" * 2000 + b"]" * 2000, False),  # deeper than orjson goes
    ],
)
def test_fixed_bodies(body: bytes, fast: bool) -> None:
    assert check(body) is fast
    if not fast:
        assert fast_loads(body) is NOT_DECODED


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


@given(json_values, st.booleans())
def test_any_document(value: Any, ascii_only: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only, allow_nan=False).encode("utf-8", "surrogatepass")
    check(body)


@given(st.binary(max_size=60))
def test_any_bytes(body: bytes) -> None:
    check(body)


# -- the Jira reader's decoding ---------------------------------------------------------------------------
class FakeClient:
    log = logging.getLogger("jira")


def response(body: bytes, content_type: str | None = "application/json;charset=UTF-8", status: int = 200) -> Any:
    r = requests.Response()
    r.status_code = status
    r._content = body
    r.url = "https://example.atlassian.net/rest/api/3/search/jql"
    if content_type is not None:
        r.headers["Content-Type"] = content_type
    r.encoding = requests.utils.get_encoding_from_headers(r.headers)
    return r


def library(r: requests.Response) -> tuple[str, Any]:
    """What ``JIRA._get_json`` does with the response it received (jira.utils.json_loads)."""
    from jira.utils import json_loads

    try:
        return ("ok", typed(json_loads(r)))
    except Exception as exc:
        return ("error", type(exc).__name__)


def ours(r: requests.Response) -> tuple[str, Any]:
    try:
        return ("ok", typed(_decode(FakeClient(), r)))  # type: ignore[arg-type]  # (stand-in client)
    except Exception as exc:
        return ("error", type(exc).__name__)


BODIES = [
    b'{"issues": [{"id": "1", "fields": {"summary": "\xc3\xa9 \\"x\\""}}], "nextPageToken": "t", "isLast": false}',
    b"{}",
    b"[]",
    b"",
    b"  ",
    b"null",
    b"[18446744073709551616]",
    b"[NaN]",
    b'["\xff\xfe"]',
    b"\xef\xbb\xbf{}",
    b'{"a": "\xe9"}',  # Latin-1 bytes: what the declared charset says decides
    b"not json",
    '{"a": "\u00e9"}'.encode("utf-16"),
    '{"a": "\u00e9"}'.encode("utf-16-le"),
]
CONTENT_TYPES = [
    "application/json;charset=UTF-8",
    "application/json",
    "application/json; charset=utf8",
    "application/json; charset=ISO-8859-1",
    "text/html",
    None,
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_decode_is_the_librarys(body: bytes, content_type: str | None) -> None:
    assert ours(response(body, content_type)) == library(response(body, content_type))


def test_decode_logs_an_unreadable_body_like_the_library(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="jira"), pytest.raises(ValueError):
        _decode(FakeClient(), response(b"not json"))  # type: ignore[arg-type]  # (stand-in client)
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().endswith("\nnot json")


def test_decode_raises_jira_error_for_a_failed_response() -> None:
    with pytest.raises(JIRAError):
        _decode(FakeClient(), response(b'{"errorMessages": ["no"]}', status=400))  # type: ignore[arg-type]  # (stand-in client)


@pytest.mark.parametrize("content_type", ["application/json;charset=UTF-8", "application/json", None])
def test_a_plain_page_never_reaches_the_librarys_decoder(
    monkeypatch: pytest.MonkeyPatch, content_type: str | None
) -> None:
    def refuse(r: requests.Response) -> Any:
        raise AssertionError("decoded by requests")

    monkeypatch.setattr("connectors.jira.connector.json_loads", refuse)
    assert _decode(FakeClient(), response(BODIES[0], content_type))["nextPageToken"] == "t"  # type: ignore[arg-type]  # (stand-in client)

"""Atlassian Document Format (ADF): the rich-text shape of REST v3, and plain text for v2.

Jira Cloud's v3 endpoints take and return rich text (comment bodies, descriptions) as an ADF
document, ``{"type": "doc", "version": 1, "content": [...]}``; v2 takes and returns a plain
(wiki-markup) string. The emulator stores a body as it was given and converts on read when the
other version asks, so both directions are needed. The conversion is best effort and documented in
``sandbox/jira/README.md``: paragraphs and hard breaks survive a round trip, marks do not.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

# Node types the validator accepts, by where they may appear. The real schema is larger and
# stricter (https://developer.atlassian.com/cloud/jira/platform/apis/document/structure/); this is
# the subset clients actually send, checked structurally.
BLOCK_NODES = frozenset(
    {
        "paragraph",
        "heading",
        "bulletList",
        "orderedList",
        "listItem",
        "codeBlock",
        "blockquote",
        "rule",
        "panel",
        "table",
        "tableRow",
        "tableHeader",
        "tableCell",
        "mediaSingle",
        "mediaGroup",
        "media",
        "expand",
        "nestedExpand",
    }
)
INLINE_NODES = frozenset({"text", "hardBreak", "mention", "emoji", "inlineCard", "status", "date"})
MARKS = frozenset({"strong", "em", "code", "strike", "underline", "link", "subsup", "textColor", "backgroundColor"})
_BLOCK_SEPARATED = frozenset({"paragraph", "heading", "codeBlock", "blockquote", "panel", "rule"})


def is_valid_document(value: Any) -> bool:
    """True when ``value`` is structurally an ADF document: a doc of version 1 with known nodes."""
    if not isinstance(value, dict) or value.get("type") != "doc" or value.get("version") != 1:
        return False
    content = value.get("content")
    if not isinstance(content, list):
        return False
    return all(_valid_node(node, depth=1) for node in content)


def _valid_node(node: Any, depth: int) -> bool:
    if depth > 32 or not isinstance(node, dict):
        return False
    kind = node.get("type")
    if kind not in BLOCK_NODES and kind not in INLINE_NODES:
        return False
    if kind == "text":
        text = node.get("text")
        if not isinstance(text, str) or not text:
            return False
        marks = node.get("marks", [])
        if not isinstance(marks, list):
            return False
        return all(isinstance(m, dict) and m.get("type") in MARKS for m in marks)
    attrs = node.get("attrs", {})
    if not isinstance(attrs, dict):
        return False
    if kind == "heading" and attrs.get("level") not in (1, 2, 3, 4, 5, 6):
        return False
    if kind == "mention" and not isinstance(attrs.get("id"), str):
        return False
    content = node.get("content", [])
    if not isinstance(content, list):
        return False
    return all(_valid_node(child, depth + 1) for child in content)


def text_to_document(text: str) -> dict[str, Any]:
    """A plain string as ADF: blank lines separate paragraphs, single newlines become hard breaks."""
    content: list[dict[str, Any]] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        if not block.strip():
            continue
        inline: list[dict[str, Any]] = []
        for i, line in enumerate(block.split("\n")):
            if i:
                inline.append({"type": "hardBreak"})
            if line:
                inline.append({"type": "text", "text": line})
        content.append({"type": "paragraph", "content": inline})
    return {"type": "doc", "version": 1, "content": content}


def document_to_text(doc: dict[str, Any]) -> str:
    """The text of an ADF document: blocks separated by blank lines, hard breaks as newlines."""
    blocks = [_node_text(node) for node in doc.get("content", [])]
    return "\n\n".join(b for b in blocks if b)


def _node_text(node: dict[str, Any]) -> str:
    kind = node.get("type")
    if kind == "text":
        return str(node.get("text", ""))
    if kind == "hardBreak":
        return "\n"
    if kind == "mention":
        attrs = node.get("attrs", {})
        return str(attrs.get("text") or "@" + str(attrs.get("id", "")))
    if kind in ("emoji", "status"):
        attrs = node.get("attrs", {})
        return str(attrs.get("text") or attrs.get("shortName") or "")
    if kind == "inlineCard":
        return str(node.get("attrs", {}).get("url", ""))
    children = node.get("content", [])
    if kind in ("bulletList", "orderedList"):
        marker = "*" if kind == "bulletList" else "#"
        return "\n".join(f"{marker} {_node_text(item)}" for item in children)
    if kind == "rule":
        return "----"
    parts = [_node_text(child) for child in children]
    if kind in _BLOCK_SEPARATED or kind in ("listItem", "tableCell", "tableHeader", "tableRow", "table"):
        separator = "" if all(c.get("type") in INLINE_NODES for c in children) else "\n"
        return separator.join(p for p in parts if p)
    return "".join(parts)


def as_text(body: str | dict[str, Any] | None) -> str | None:
    """A stored body (string or ADF) as v2 returns it."""
    if body is None or isinstance(body, str):
        return body
    return document_to_text(body)


def as_document(body: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored body (string or ADF) as v3 returns it."""
    if body is None or isinstance(body, dict):
        return body
    return text_to_document(body)


def to_html(body: str | dict[str, Any] | None) -> str | None:
    """The ``renderedFields`` form: paragraphs as ``<p>``, text HTML-escaped."""
    text = as_text(body)
    if text is None:
        return None
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    return "".join(f"<p>{escape(p).replace(chr(10), '<br/>')}</p>" for p in paragraphs)

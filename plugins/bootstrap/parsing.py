"""Tolerant parsing of model output: the XML response block, one-word decisions and JSON objects."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

from bot.jsontext import parse_json_object

_TAG = r"<{0}>(.*?)</{0}>"


@dataclass
class ParsedResponse:
    text: str
    thought: str = ""
    actions: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


def _tag(body: str, name: str) -> str | None:
    match = re.search(_TAG.format(name), body, re.DOTALL | re.IGNORECASE)
    return None if match is None else html.unescape(match.group(1).strip())


def _names(value: str | None) -> list[str]:
    if not value:
        return []
    return [part.strip().upper() for part in re.split(r"[,\n]", value) if part.strip()]


def parse_response(raw: str) -> ParsedResponse | None:
    """The `<response>` block, or None when the model did not produce one with a <text>."""
    body = _tag(raw, "response") or raw
    text = _tag(body, "text")
    if text is None:
        return None
    options = [o.strip() for o in re.split(r"[|\n]", _tag(body, "options") or "") if o.strip()]
    return ParsedResponse(
        text=text,
        thought=_tag(body, "thought") or "",
        actions=_names(_tag(body, "actions")),
        providers=_names(_tag(body, "providers")),
        options=options,
    )


def parse_decision(raw: str) -> str:
    """RESPOND, IGNORE or STOP from a should-respond answer; anything unclear means IGNORE."""
    found = re.findall(r"\b(RESPOND|IGNORE|STOP)\b", raw.upper())
    return found[0] if found else "IGNORE"


def parse_json_object_or_none(raw: Any) -> dict[str, Any] | None:
    """A dict from a model answer (already a dict from OBJECT models, or text with JSON in it)."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        return None
    try:
        return parse_json_object(raw)
    except ValueError:
        return None

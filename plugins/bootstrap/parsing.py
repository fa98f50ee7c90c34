"""Tolerant parsing of model output: the XML response block, one-word decisions and JSON objects."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any

from bot.jsontext import parse_json_object
from bot.tools import normalise_action

_TAG = r"<{0}>(.*?)</{0}>"


@dataclass
class ParsedResponse:
    text: str
    thought: str = ""
    actions: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    # Arguments per action name (normalised), from <params>.
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def arguments_for(self, action: str) -> dict[str, Any]:
        return self.params.get(normalise_action(action), {})


def tag_text(body: str, name: str) -> str | None:
    match = re.search(_TAG.format(name), body, re.DOTALL | re.IGNORECASE)
    return None if match is None else html.unescape(match.group(1).strip())


def _raw_tag(body: str, name: str) -> str | None:
    """A tag's content as written (nested tags kept)."""
    match = re.search(_TAG.format(name), body, re.DOTALL | re.IGNORECASE)
    return None if match is None else match.group(1).strip()


def action_names(value: str | None) -> list[str]:
    if not value:
        return []
    return [part.strip().upper() for part in re.split(r"[,\n]", value) if part.strip()]


def _scalar(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def parse_params(raw: str | None) -> dict[str, dict[str, Any]]:
    """Arguments per action from <params>: JSON ({"ROLL_DIE": {"sides": 6}}), or elizaOS's nested
    XML (<ROLL_DIE><sides>6</sides></ROLL_DIE>). Anything unreadable is no arguments."""
    if not raw:
        return {}
    found = parse_json_object_or_none(raw)
    if found is None:
        found = {name: {key: _scalar(html.unescape(value.strip()))
                        for key, value in re.findall(r"<(\w+)>(.*?)</\1>", inner, re.DOTALL)}
                 for name, inner in re.findall(r"<(\w+)>(.*?)</\1>", raw, re.DOTALL)}
    return {normalise_action(str(name)): value for name, value in found.items() if isinstance(value, dict)}


def parse_response(raw: str) -> ParsedResponse | None:
    """The `<response>` block, or None when the model did not produce one with a <text>."""
    body = tag_text(raw, "response") or raw
    text = tag_text(body, "text")
    if text is None:
        return None
    options = [o.strip() for o in re.split(r"[|\n]", tag_text(body, "options") or "") if o.strip()]
    return ParsedResponse(
        text=text,
        thought=tag_text(body, "thought") or "",
        actions=action_names(tag_text(body, "actions")),
        providers=action_names(tag_text(body, "providers")),
        options=options,
        params=parse_params(_raw_tag(body, "params")),
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


_SPEAKER = re.compile(r"^\s*[\w .'-]{1,40}:\s")


def clean_plain_reply(raw: str) -> str:
    """The first turn of a small model's answer, without a leading "Name:" or later turns."""
    text = _SPEAKER.sub("", raw.strip(), count=1) if _SPEAKER.match(raw.strip()) else raw.strip()
    lines = []
    for line in text.splitlines():
        if lines and _SPEAKER.match(line):
            break
        lines.append(line)
    return "\n".join(lines).strip() or raw.strip()

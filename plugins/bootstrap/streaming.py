"""The reply's text so far, from the pieces a streaming model writes.

What is shown must be a prefix of the reply that will be sent, so only text that is sure to be the
reply is passed on: with the XML response format, the inside of <text> once <actions> has said it
is a plain reply (an action such as CHOOSE_OPTION sends its text itself, and a tool's round is not
the reply); with native tool calling, the content; from a small local model, its cleaned first turn.
A model that might still be writing "IGNORE" shows nothing yet.
"""

from __future__ import annotations

import html
import re

from bot.streaming import ReplyStream, TextListener

from .parsing import action_names, clean_plain_reply, tag_text

PLAIN_REPLY = {"REPLY", "NONE"}  # actions that mean "send the text", and nothing else
_OPEN = "<text>"
_CLOSE = "</text>"
_PARTIAL_ENTITY = re.compile(r"&#?\w*$")


def _without_partial_suffix(text: str, token: str) -> str:
    """`text` without a trailing start of `token` (a closing tag still being written)."""
    for size in range(min(len(token) - 1, len(text)), 0, -1):
        if text.lower().endswith(token[:size]):
            return text[:-size]
    return text


def xml_reply_text(raw: str) -> str | None:
    """The reply text a partial <response> holds so far, or None while it may not be a reply."""
    lower = raw.lower()
    start = lower.find(_OPEN)
    if start < 0:
        return None
    head = raw[:start]
    actions = tag_text(head, "actions")
    names = action_names(actions)
    if not names or any(name not in PLAIN_REPLY for name in names) or action_names(tag_text(head, "providers")):
        return None  # unknown yet, or actions that send the text themselves, or providers to compose first
    body = raw[start + len(_OPEN):]
    end = body.lower().find(_CLOSE)
    body = body[:end] if end >= 0 else _without_partial_suffix(body, _CLOSE)
    body = _PARTIAL_ENTITY.sub("", body)
    return html.unescape(body).strip()


def native_reply_text(raw: str) -> str | None:
    if raw.lstrip().startswith("<"):  # a character's own template answered in XML
        return xml_reply_text(raw)
    return raw.strip()


def plain_reply_text(raw: str) -> str | None:
    return clean_plain_reply(raw) if raw.strip() else ""


def _may_be_ignore(text: str) -> bool:
    return "IGNORE".startswith(text.upper().strip(".! "))


class ReplyText:
    """A `TextSink` for one round of the reply: feeds the connector's stream the text so far.

    `xml` says whether the structured prompt asked for the XML response format (else the model
    writes the reply itself, natively). Each listener starts from nothing; when an earlier
    attempt or round showed text that will not be the reply, the stream is reset first.
    """

    def __init__(self, stream: ReplyStream, *, xml: bool) -> None:
        self.stream = stream
        self.xml = xml
        self.shown = False

    def listener(self, structured: bool) -> TextListener:
        extract = (xml_reply_text if self.xml else native_reply_text) if structured else plain_reply_text
        raw: list[str] = []
        fresh = True

        async def on_text(delta: str) -> None:
            nonlocal fresh
            if fresh and self.shown:
                await self.reset()
            fresh = False
            raw.append(delta)
            text = extract("".join(raw))
            if text and not _may_be_ignore(text):
                self.shown = True
                await self.stream.update(text)

        return on_text

    async def reset(self) -> None:
        if self.shown:
            self.shown = False
            await self.stream.reset()

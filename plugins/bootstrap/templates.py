"""Prompt templates and a tiny `{{slot}}` renderer.

Kept short on purpose: elizaOS sends ~11,900 characters per reply for a small character; a lean
prompt is cheaper, faster and leaves room for conversation history on small local models.
A character overrides any template by its elizaOS key in `templates`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

SHOULD_RESPOND_TEMPLATE = """\
You are {{agentName}} in a group chat. Decide whether {{agentName}} should answer the last message.
{{roomNote}}
{{recentMessages}}

Answer RESPOND if the last message is for {{agentName}}, asks something {{agentName}} can help with, or continues a conversation with {{agentName}}; IGNORE if it is not for {{agentName}} or needs no answer; STOP if someone asks {{agentName}} to stop or be quiet.
Reply with one word: RESPOND, IGNORE or STOP."""

MESSAGE_HANDLER_TEMPLATE = """\
{{providers}}

You are {{agentName}}. Write {{agentName}}'s next message in this conversation, in character.
Actions you can take:
{{actionList}}
Use REPLY to answer; add another action only when it is needed. An action with arguments takes them
in <params> as JSON, e.g. <params>{"NAME": {"arg": "value"}}</params>; its result comes back to you
before your reply is sent.
{{toolResults}}
Answer in this XML format and nothing else:
<response>
<thought>a short private thought</thought>
<actions>REPLY</actions>
<params></params>
<providers></providers>
<text>the message to send</text>
</response>"""

TOOL_HANDLER_TEMPLATE = """\
{{providers}}

You are {{agentName}}. Write {{agentName}}'s next message in this conversation, in character.
When the message needs one of your tools, call it; you will read its result before you reply.
Reply with the message text only. If the message needs no answer from {{agentName}}, reply with just IGNORE."""

REPLY_TEMPLATE = """\
{{providers}}

You are {{agentName}}. Write {{agentName}}'s reply to the last message, in character.
Answer in this XML format and nothing else:
<response>
<thought>a short private thought</thought>
<text>the message to send</text>
</response>"""

REFLECTION_TEMPLATE = """\
{{recentMessages}}

Known facts:
{{knownFacts}}

Extract from the conversation above NEW lasting facts about the people in it (not about {{agentName}}), and how they relate to each other.
Answer with JSON only:
{"facts": [{"about": "name of the person", "claim": "the fact, as a short sentence"}],
 "relationships": [{"source": "name", "target": "name", "tags": ["friend"]}]}"""

EXTRACT_TEMPLATE = """\
{{recentMessages}}

{{instruction}}
Answer with JSON only: {{shape}}"""

DEFAULTS = {
    "shouldRespondTemplate": SHOULD_RESPOND_TEMPLATE,
    "messageHandlerTemplate": MESSAGE_HANDLER_TEMPLATE,
    "toolHandlerTemplate": TOOL_HANDLER_TEMPLATE,
    "replyTemplate": REPLY_TEMPLATE,
    "reflectionTemplate": REFLECTION_TEMPLATE,
    "extractTemplate": EXTRACT_TEMPLATE,
}

_SLOT = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def render(template: str, values: Mapping[str, Any]) -> str:
    """Fill `{{slot}}`s from values; unknown slots render empty so a custom template never crashes."""
    return _SLOT.sub(lambda m: str(values.get(m.group(1), "")), template).strip()


def template_for(overrides: Mapping[str, str], key: str) -> str:
    return overrides.get(key) or DEFAULTS[key]

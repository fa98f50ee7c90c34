"""What the model reads back from an MCP result: its text, with anything else named in brackets.

Models here read text only, so an image or audio block becomes a short marker ("[image]") rather
than base64 that would flood the prompt; structured content stands in when there is no text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mcp_types import (
    AudioContent,
    BlobResourceContents,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)


def _contents(contents: TextResourceContents | BlobResourceContents) -> str:
    if isinstance(contents, TextResourceContents):
        return contents.text
    return f"[binary {contents.mime_type or 'data'} at {contents.uri}]"


def _block(block: ContentBlock) -> str:
    if isinstance(block, TextContent):
        return block.text
    if isinstance(block, ImageContent):
        return "[image]"
    if isinstance(block, AudioContent):
        return "[audio]"
    if isinstance(block, ResourceLink):
        return f"[resource {block.name}: {block.uri}]"
    if isinstance(block, EmbeddedResource):
        return _contents(block.resource)
    return f"[{getattr(block, 'type', 'content')}]"


def content_text(blocks: Sequence[ContentBlock], structured: dict[str, Any] | None = None) -> str:
    """A tool result's blocks joined by newlines; its structured content when it has no blocks."""
    if not blocks and structured:
        return json.dumps(structured, ensure_ascii=False)
    return "\n".join(_block(block) for block in blocks)


def resource_text(contents: Sequence[TextResourceContents | BlobResourceContents]) -> str:
    """A read resource's parts joined by newlines."""
    return "\n".join(_contents(part) for part in contents)

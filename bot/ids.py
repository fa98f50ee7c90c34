"""Deterministic ids compatible with elizaOS, so the same platform ids always map to the same rows."""

from __future__ import annotations

import hashlib
import uuid
from urllib.parse import quote

# The characters JavaScript's encodeURIComponent leaves as they are.
_URI_SAFE = "-_.!~*'()"


def string_to_uuid(target: str | int) -> uuid.UUID:
    """elizaOS `stringToUuid`: SHA-1 of the URI-encoded string, variant 10, version nibble 0."""
    digest = bytearray(hashlib.sha1(quote(str(target), safe=_URI_SAFE).encode("utf-8")).digest()[:16])
    digest[8] = (digest[8] & 0x3F) | 0x80
    digest[6] = digest[6] & 0x0F
    return uuid.UUID(bytes=bytes(digest))


def create_unique_uuid(agent_id: uuid.UUID, platform_id: str | int | uuid.UUID) -> uuid.UUID:
    """elizaOS `createUniqueUuid`: one id per (platform id, agent), the agent's own id unchanged."""
    if str(platform_id) == str(agent_id):
        return agent_id
    return string_to_uuid(f"{platform_id}:{agent_id}")

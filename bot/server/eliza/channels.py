"""elizaOS channels: the UUID-named conversations its clients (Socket.IO, the messaging sessions)
talk in. Each one is a parley room; a session's channel is the session's own room."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from bot.ids import create_unique_uuid

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

    from ..sessions import Session

# elizaOS's default message server: clients send it with every message.
DEFAULT_SERVER_ID = uuid.UUID("00000000-0000-0000-0000-000000000000")


def channel_room_key(channel_id: uuid.UUID) -> str:
    """The room of a channel no session owns."""
    return f"eliza:channel:{channel_id}"


def session_channel_id(runtime: AgentRuntime, session: Session) -> uuid.UUID:
    """A session's channel: stable for its life, so a socket can join it before the first message."""
    return create_unique_uuid(runtime.agent_id, f"api:session-channel:{session.id}")

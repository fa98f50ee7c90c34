"""elizaOS channels: the UUID-named conversations its clients (Socket.IO, the messaging sessions)
talk in. Each one is a parley room (`conversation.channel_room_key`); a session talks in its own."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from ..conversation import channel_room_key

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

    from ..sessions import Session

# elizaOS's default message server: clients send it with every message.
DEFAULT_SERVER_ID = uuid.UUID("00000000-0000-0000-0000-000000000000")


def session_channel_id(runtime: AgentRuntime, session: Session) -> uuid.UUID:
    """A session's channel: stable for its life, so a socket can join it before the first message."""
    return session.channel


__all__ = ["DEFAULT_SERVER_ID", "channel_room_key", "session_channel_id"]

"""elizaOS channels: the UUID-named conversations its clients (Socket.IO, the messaging sessions)
talk in. Each one is a parley room (`conversation.channel_room_key`); a session talks in its own
(`Session.channel`)."""

from __future__ import annotations

import uuid

from ..conversation import channel_room_key

# elizaOS's default message server: clients send it with every message.
DEFAULT_SERVER_ID = uuid.UUID("00000000-0000-0000-0000-000000000000")

__all__ = ["DEFAULT_SERVER_ID", "channel_room_key"]

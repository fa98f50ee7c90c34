"""Socket.IO endpoint speaking elizaOS's real-time protocol (filled in by the realtime work)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from aiohttp import web

from .access import AccessPolicy
from .conversation import Pending
from .sessions import SessionManager

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime


class Realtime:
    def __init__(self, runtime: AgentRuntime, policy: AccessPolicy, sessions: SessionManager) -> None:
        self.runtime, self.policy, self.sessions = runtime, policy, sessions

    def attach(self, app: web.Application) -> None:
        """Serve Socket.IO at /socket.io/ on `app`."""

    def relay(self, pending: Pending, channel_id: uuid.UUID) -> None:
        """Send the reply of an accepted (streaming) message to every socket in `channel_id`:
        messageStreamChunk events as it is written, then one messageBroadcast per reply."""

    async def stop(self) -> None:
        """Disconnect every socket and wait for relays in flight."""

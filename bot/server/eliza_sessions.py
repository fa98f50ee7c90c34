"""elizaOS 1.7's messaging sessions (`/api/messaging/sessions`) (filled in by the sessions work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .access import AccessPolicy
from .api import RestApi
from .openapi import Operation
from .realtime import Realtime
from .sessions import SessionManager

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime


class ElizaSessionApi:
    def __init__(self, runtime: AgentRuntime, manager: SessionManager, rest: RestApi, policy: AccessPolicy,
                 realtime: Realtime) -> None:
        self.runtime, self.manager, self.rest, self.policy, self.realtime = runtime, manager, rest, policy, realtime

    def operations(self) -> list[Operation]:
        return []

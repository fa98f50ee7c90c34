"""Recent messages per room, kept in memory so building a prompt costs no query.

Every message the runtime stores passes through `AgentRuntime.create_memory`, which adds it
here; a room is loaded from the store once, on first use. Only the busiest rooms are kept.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from uuid import UUID

from bot.store.base import Store
from bot.types import Memory, MemoryType

MAX_ROOMS = 2000


class MessageHistory:
    def __init__(self, store: Store, agent_id: UUID, length: int, max_rooms: int = MAX_ROOMS) -> None:
        self.store, self.agent_id, self.length, self.max_rooms = store, agent_id, length, max_rooms
        # Per room: messages oldest → newest (sorted by created_at), at most `length`.
        self._rooms: OrderedDict[UUID, list[Memory]] = OrderedDict()

    async def recent(self, room_id: UUID) -> list[Memory]:
        """The room's last `length` messages, newest first."""
        messages = self._rooms.get(room_id)
        if messages is None:
            loaded = await self.store.get_memories(agent_id=self.agent_id, room_id=room_id, count=self.length)
            messages = self._rooms.setdefault(room_id, [])
            for memory in loaded:
                self._insert(messages, memory)
            while len(self._rooms) > self.max_rooms:
                self._rooms.popitem(last=False)
        self._rooms.move_to_end(room_id)
        return messages[::-1]

    def add(self, memory: Memory) -> None:
        if memory.type is not MemoryType.MESSAGE:
            return
        messages = self._rooms.get(memory.room_id)
        if messages is not None:
            self._insert(messages, memory)

    def replace(self, memory: Memory) -> None:
        """An edited message: swap the cached copy if the room is loaded."""
        messages = self._rooms.get(memory.room_id)
        if messages is None:
            return
        for index, cached in enumerate(messages):
            if cached.id == memory.id:
                messages[index] = memory.model_copy(update={"created_at": cached.created_at})
                return

    def forget(self, memory: Memory) -> None:
        """A deleted message leaves the cached room, so no prompt shows it again."""
        messages = self._rooms.get(memory.room_id)
        if messages is not None:
            messages[:] = [m for m in messages if m.id != memory.id]

    def forget_room(self, room_id: UUID) -> None:
        """Drop a room's cache (its messages were deleted in bulk); it loads again on next use."""
        self._rooms.pop(room_id, None)

    def _insert(self, messages: list[Memory], memory: Memory) -> None:
        if any(m.id == memory.id for m in messages[-4:]):
            return
        bisect.insort(messages, memory, key=lambda m: m.created_at)
        if len(messages) > self.length:
            del messages[: len(messages) - self.length]

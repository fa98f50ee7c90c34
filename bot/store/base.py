"""The memory store's contract: what the runtime, plugins and connectors may ask of the database.

One implementation (`bot.store.sql.SqlStore`) serves SQLite and PostgreSQL through SQLAlchemy.
Everything is scoped to one agent id, so several characters can share one database.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bot.types import (
    Agent,
    Entity,
    Memory,
    MemoryType,
    Participant,
    Relationship,
    Room,
    RoomState,
    Task,
    World,
)

if TYPE_CHECKING:
    from bot.store.coordination import PgCoordinator

# A received message's processing (see MessageDispatcher): queued → running → done | failed;
# with several processes, "preparing" while its receiver enriches it (others may not run it yet) and
# "sending" once its first reply is on its way (a process taking the room over does not run it again);
# expired when it waited past RESUME_WINDOW and is not answered out of context.
RunState = Literal["preparing", "queued", "running", "sending", "done", "failed", "expired"]


@dataclass(frozen=True, slots=True)
class ScoredMemory:
    memory: Memory
    score: float


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Token counts of one model call, for per-room and per-user totals."""

    agent_id: uuid.UUID
    provider: str
    model_type: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    room_id: uuid.UUID | None = None
    entity_id: uuid.UUID | None = None
    created_at: int | None = None


@dataclass(frozen=True, slots=True)
class UsageTotals:
    calls: int
    prompt_tokens: int
    completion_tokens: int


class Store(ABC):
    """Async persistence for one or more agents."""

    # Lifecycle -----------------------------------------------------------------------------
    @abstractmethod
    async def init(self) -> None:
        """Create or upgrade the schema without losing data."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True when the database answers (for readiness checks)."""

    # Agents, entities, worlds, rooms, participants -----------------------------------------
    @abstractmethod
    async def upsert_agent(self, agent: Agent) -> None: ...

    @abstractmethod
    async def get_agent(self, agent_id: uuid.UUID) -> Agent | None: ...

    @abstractmethod
    async def list_agents(self) -> list[Agent]: ...

    @abstractmethod
    async def upsert_entity(self, entity: Entity) -> None:
        """Insert, or merge names (kept unique, order preserved) and metadata into the stored row."""

    @abstractmethod
    async def get_entity(self, entity_id: uuid.UUID) -> Entity | None: ...

    @abstractmethod
    async def get_entities(self, entity_ids: Sequence[uuid.UUID]) -> list[Entity]: ...

    @abstractmethod
    async def upsert_world(self, world: World) -> None: ...

    @abstractmethod
    async def get_world(self, world_id: uuid.UUID) -> World | None: ...

    @abstractmethod
    async def upsert_room(self, room: Room) -> None: ...

    @abstractmethod
    async def get_room(self, room_id: uuid.UUID) -> Room | None: ...

    @abstractmethod
    async def get_rooms(self, agent_id: uuid.UUID, world_id: uuid.UUID | None = None) -> list[Room]: ...

    @abstractmethod
    async def add_participant(self, entity_id: uuid.UUID, room_id: uuid.UUID) -> None:
        """Idempotent."""

    @abstractmethod
    async def get_participants(self, room_id: uuid.UUID) -> list[Participant]: ...

    @abstractmethod
    async def set_participant_state(
        self, room_id: uuid.UUID, entity_id: uuid.UUID, state: RoomState | None
    ) -> None: ...

    @abstractmethod
    async def get_participant_state(self, room_id: uuid.UUID, entity_id: uuid.UUID) -> RoomState | None: ...

    # Memories --------------------------------------------------------------------------------
    @abstractmethod
    async def create_memory(self, memory: Memory, *, run_state: RunState | None = None) -> bool:
        """Store a memory; idempotent on id. Returns True when the row is new, False if it existed.

        A memory with an embedding also stores it; text search indexes `content.text`. `run_state`
        ("queued" for a message to be processed) is stored in the same statement.
        """

    @abstractmethod
    async def set_run_states(self, states: Sequence[tuple[uuid.UUID, RunState]]) -> None:
        """Record how far received messages' processing got, in one batch."""

    @abstractmethod
    async def unfinished_messages(self, agent_id: uuid.UUID, *, since: int) -> list[Memory]:
        """Messages queued or running, created at or after `since` (ms), oldest first."""

    @abstractmethod
    async def room_queue(self, agent_id: uuid.UUID, room_id: uuid.UUID, *, since: int,
                         limit: int) -> list[tuple[Memory, RunState]]:
        """The room's oldest messages being prepared, queued or running (at or after `since`), with their states."""

    @abstractmethod
    def coordinator(self) -> PgCoordinator | None:
        """How this process shares rooms with other processes on the same database; None when
        the database serves one process only (SQLite)."""

    @abstractmethod
    async def advance_run_state(self, memory_id: uuid.UUID, state: RunState, *, from_states: Sequence[str]) -> bool:
        """Set `state` only if the stored state is one of `from_states`; True when it was set. Several
        processes may race for one message: only one moves it on."""

    @abstractmethod
    async def rooms_with_unfinished(self, agent_id: uuid.UUID, *, since: int) -> list[uuid.UUID]:
        """Rooms with messages queued or running created at or after `since`, oldest first."""

    @abstractmethod
    async def run_states_of(self, memory_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str | None]:
        """The stored run state of each of these memories that exists."""

    @abstractmethod
    async def requeue_preparing(self, agent_id: uuid.UUID, *, before: int) -> int:
        """Queue messages left "preparing" (their process died) created before `before`; returns how many."""

    @abstractmethod
    async def latest_received_time(self, agent_id: uuid.UUID, room_id: uuid.UUID) -> int | None:
        """The created_at of the newest message the agent received in the room (not its own), or None."""

    @abstractmethod
    async def expire_unfinished(self, agent_id: uuid.UUID, *, before: int, running: bool = True) -> int:
        """Mark messages queued (and running, unless not `running`) created before `before` (ms)
        "expired"; returns how many."""

    @abstractmethod
    async def update_memory(self, memory: Memory) -> bool:
        """Replace content/metadata of an existing memory (e.g. an edited message). False if absent."""

    @abstractmethod
    async def get_memory(self, memory_id: uuid.UUID) -> Memory | None: ...

    @abstractmethod
    async def get_memories(
        self,
        *,
        agent_id: uuid.UUID,
        room_id: uuid.UUID | None = None,
        entity_id: uuid.UUID | None = None,
        type: MemoryType = MemoryType.MESSAGE,
        count: int | None = 32,
        before: int | None = None,
        after: int | None = None,
    ) -> list[Memory]:
        """Newest first. `before`/`after` are created_at bounds in ms (exclusive)."""

    @abstractmethod
    async def count_memories(
        self,
        *,
        agent_id: uuid.UUID,
        room_id: uuid.UUID | None = None,
        entity_id: uuid.UUID | None = None,
        type: MemoryType = MemoryType.MESSAGE,
    ) -> int: ...

    @abstractmethod
    async def delete_memory(self, memory_id: uuid.UUID) -> bool: ...

    @abstractmethod
    async def delete_room_memories(self, room_id: uuid.UUID, type: MemoryType | None = None) -> int: ...

    @abstractmethod
    async def set_embeddings(self, items: Sequence[tuple[uuid.UUID, Sequence[float]]]) -> None:
        """Attach embeddings (any dimension) to existing memories in one batch."""

    @abstractmethod
    async def count_embeddings(self, agent_id: uuid.UUID) -> dict[int, int]:
        """How many of the agent's memories have an embedding, per vector size."""

    @abstractmethod
    async def embedded_in_other_size(self, agent_id: uuid.UUID, dim: int, *, types: Sequence[MemoryType],
                                     count: int = 100, after: Memory | None = None) -> list[Memory]:
        """Up to `count` of the agent's memories of these types whose vector is not of size `dim`,
        oldest first (after `after`, the last of the previous page)."""

    @abstractmethod
    def forget_vectors(self, agent_id: uuid.UUID) -> None:
        """Drop what this process holds of the agent's vectors (an in-process index), so the next
        search reads them afresh, with what other processes wrote meanwhile."""

    @abstractmethod
    async def search_memories_by_embedding(
        self,
        embedding: Sequence[float],
        *,
        agent_id: uuid.UUID,
        count: int = 10,
        room_id: uuid.UUID | None = None,
        entity_id: uuid.UUID | None = None,
        type: MemoryType | None = None,
        min_score: float | None = None,
    ) -> list[ScoredMemory]:
        """Cosine similarity, best first, over memories whose embedding has the same dimension."""

    @abstractmethod
    async def search_memories_by_text(
        self,
        query: str,
        *,
        agent_id: uuid.UUID,
        count: int = 10,
        room_id: uuid.UUID | None = None,
        entity_id: uuid.UUID | None = None,
        type: MemoryType | None = None,
    ) -> list[ScoredMemory]:
        """Full-text search (SQLite FTS5 / PostgreSQL tsvector), best first; any word may match."""

    # Relationships -------------------------------------------------------------------------
    @abstractmethod
    async def upsert_relationship(self, relationship: Relationship) -> None:
        """One row per (agent, source, target); tags are merged, metadata updated."""

    @abstractmethod
    async def get_relationships(
        self, *, agent_id: uuid.UUID, entity_id: uuid.UUID, tags: Sequence[str] | None = None
    ) -> list[Relationship]:
        """Relationships where the entity is source or target, optionally having all `tags`."""

    # Tasks -----------------------------------------------------------------------------------
    @abstractmethod
    async def create_task(self, task: Task) -> None: ...

    @abstractmethod
    async def get_tasks(
        self,
        *,
        agent_id: uuid.UUID,
        room_id: uuid.UUID | None = None,
        name: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[Task]: ...

    @abstractmethod
    async def update_task(self, task: Task) -> None: ...

    @abstractmethod
    async def delete_task(self, task_id: uuid.UUID) -> None: ...

    @abstractmethod
    async def claim_task(self, task: Task, expected_updated_at: int) -> bool:
        """Write `task` only if the stored row still has `expected_updated_at` (compare and swap).

        True when this caller won: of several processes sharing a database that read the same row,
        exactly one may fire it. `task.updated_at` must differ from `expected_updated_at`.
        """

    # Cache (key/value with optional expiry) ----------------------------------------------------
    @abstractmethod
    async def get_cache(self, agent_id: uuid.UUID, key: str) -> Any | None:
        """The JSON value, or None when absent or expired."""

    @abstractmethod
    async def set_cache(
        self, agent_id: uuid.UUID, key: str, value: Any, ttl_seconds: float | None = None
    ) -> None: ...

    @abstractmethod
    async def delete_cache(self, agent_id: uuid.UUID, key: str) -> bool: ...

    @abstractmethod
    async def list_cache(self, agent_id: uuid.UUID, prefix: str) -> dict[str, Any]:
        """Every unexpired key starting with `prefix`, with its value."""

    # Logs and model usage ----------------------------------------------------------------------
    @abstractmethod
    async def log(
        self,
        *,
        agent_id: uuid.UUID,
        type: str,
        body: dict[str, Any],
        room_id: uuid.UUID | None = None,
        entity_id: uuid.UUID | None = None,
    ) -> None: ...

    @abstractmethod
    async def get_logs(
        self, *, agent_id: uuid.UUID, type: str | None = None, room_id: uuid.UUID | None = None, count: int = 50
    ) -> list[dict[str, Any]]:
        """Newest first: dicts with id, type, body, room_id, entity_id, created_at."""

    @abstractmethod
    async def record_model_usage(self, usages: Sequence[ModelUsage]) -> None:
        """Store a batch of usage rows in one statement (written off the reply path)."""

    @abstractmethod
    async def usage_totals(
        self, *, agent_id: uuid.UUID, room_id: uuid.UUID | None = None, entity_id: uuid.UUID | None = None
    ) -> UsageTotals: ...

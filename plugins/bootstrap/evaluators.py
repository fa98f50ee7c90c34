"""REFLECTION: every N messages in a room, extract lasting facts and relationships and store them.

elizaOS's flat XML parser loses nested facts; we ask for JSON and store every fact as a memory
of type `facts`, so the FACTS provider can recall it later by text (or by embedding).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from uuid import UUID

from bot.lru import LRU
from bot.plugin import ActionResult, Evaluator, State
from bot.types import Content, Memory, MemoryType, ModelType, Relationship

from .parsing import parse_json_object_or_none
from .providers import Recall
from .templates import render, template_for

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)
ROOMS_TRACKED = 10_000


class ReflectionCounter:
    """Messages received per room since the last reflection (fed by MESSAGE_RECEIVED)."""

    def __init__(self) -> None:
        self.counts: LRU[UUID, int] = LRU(ROOMS_TRACKED)  # bounded: rooms come and go

    async def on_message(self, payload: dict[str, Any]) -> None:
        room_id = payload["message"].room_id
        self.counts[room_id] = self.counts.get(room_id, 0) + 1


def reflection_evaluator(counter: ReflectionCounter, recall: Recall) -> Evaluator:
    async def validate(runtime: AgentRuntime, message: Memory, state: State | None) -> bool:
        if not runtime.follows_formats(_model(runtime)):
            return False  # a small local model's "facts" are noise; recall reads what people said
        if counter.counts.get(message.room_id, 0) < runtime.settings.reflection_interval:
            return False
        counter.counts[message.room_id] = 0
        return True

    async def handler(runtime: AgentRuntime, message: Memory, state: State, responses: list[Memory]):
        known = (await recall.facts(runtime, message.room_id))[:30]
        known_texts = {m.content.text.strip().lower() for m in known}
        recent = state.values.get("recentMessages") or message.content.text
        prompt = render(template_for(runtime.character.templates, "reflectionTemplate"), {
            "recentMessages": recent, "agentName": runtime.character.name,
            "knownFacts": "\n".join(f"- {m.content.text}" for m in known) or "(none)",
        })
        output = await runtime.use_model_output(_model(runtime), {"prompt": prompt, "room_id": message.room_id})
        if not output.structured:  # the first model failed over to a plain one: its "facts" are noise
            return ActionResult(success=False, error="answered by a model that cannot extract facts")
        found = parse_json_object_or_none(output.value)
        if found is None:
            log.info("reflection in room %s produced no JSON; nothing stored", message.room_id)
            return ActionResult(success=False, error="no JSON")
        by_name = _names_in_room(runtime, message.room_id)
        stored = 0
        for fact in found.get("facts") or []:
            claim = str(fact.get("claim", "") if isinstance(fact, dict) else fact).strip()
            if not claim or claim.lower() in known_texts:
                continue
            about = by_name.get(str(fact.get("about", "")).lower()) if isinstance(fact, dict) else None
            memory = Memory(
                entity_id=about or message.entity_id, agent_id=runtime.agent_id, room_id=message.room_id,
                world_id=message.world_id, type=MemoryType.FACT,
                content=Content(text=claim, source="reflection", metadata={"about": str(about or "")}),
            )
            await runtime.create_memory(memory)
            recall.fact_added(memory)
            known_texts.add(claim.lower())
            stored += 1
        for rel in found.get("relationships") or []:
            if not isinstance(rel, dict):
                continue
            source = by_name.get(str(rel.get("source", "")).lower())
            target = by_name.get(str(rel.get("target", "")).lower())
            if source and target and source != target:
                tags = [str(t) for t in rel.get("tags") or [] if str(t).strip()] or ["known"]
                await runtime.store.upsert_relationship(Relationship(
                    agent_id=runtime.agent_id, source_entity_id=source, target_entity_id=target, tags=tags,
                ))
                recall.relationships_changed(source, target)
        return ActionResult(values={"facts_stored": stored})

    return Evaluator("REFLECTION", "Remember lasting facts and relationships from the conversation.",
                     handler, validate, always=True)


def _model(runtime: AgentRuntime) -> ModelType:
    return ModelType.OBJECT_SMALL if runtime.has_model(ModelType.OBJECT_SMALL) else ModelType.TEXT_SMALL


def _names_in_room(runtime: AgentRuntime, room_id: UUID) -> dict[str, UUID]:
    names: dict[str, UUID] = {}
    for entity in runtime.room_entities(room_id):
        for name in entity.names:
            names.setdefault(name.lower(), entity.id)
    names[runtime.character.name.lower()] = runtime.agent_id
    return names

"""Providers: the context each prompt is built from, each short and each skippable."""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID

from bot.plugin import Action, Provider, ProviderResult, State
from bot.types import Memory, MemoryType, ModelType, Relationship

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

MAX_CACHED = 10_000
MAX_FACTS_PER_ROOM = 200
BIO_LINES = 4
LORE_LINES = 2
EXAMPLES = 2
FACTS = 6


class Recall:
    """What FACTS and RELATIONSHIPS know without a query per message.

    Facts and relationships are written only by this process's REFLECTION evaluator, which tells
    the cache; so a room's facts and an entity's relationships are each loaded once.
    """

    def __init__(self) -> None:
        self._facts: OrderedDict[UUID, list[Memory]] = OrderedDict()
        self._relationships: OrderedDict[UUID, list[Relationship]] = OrderedDict()

    async def facts(self, runtime: AgentRuntime, room_id: UUID) -> list[Memory]:
        """The room's newest facts, newest first."""
        if room_id not in self._facts:
            found = await runtime.store.get_memories(agent_id=runtime.agent_id, room_id=room_id,
                                                     type=MemoryType.FACT, count=MAX_FACTS_PER_ROOM)
            self._remember(self._facts, room_id, found)
        return self._facts[room_id]

    def fact_added(self, fact: Memory) -> None:
        if fact.room_id in self._facts:
            self._facts[fact.room_id] = [fact, *self._facts[fact.room_id]][:MAX_FACTS_PER_ROOM]

    async def relationships(self, runtime: AgentRuntime, entity_id: UUID) -> list[Relationship]:
        if entity_id not in self._relationships:
            found = await runtime.store.get_relationships(agent_id=runtime.agent_id, entity_id=entity_id)
            self._remember(self._relationships, entity_id, found)
        return self._relationships[entity_id]

    def relationships_changed(self, *entity_ids: UUID) -> None:
        for entity_id in entity_ids:
            self._relationships.pop(entity_id, None)

    @staticmethod
    def _remember(cache: OrderedDict, key: UUID, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > MAX_CACHED:
            cache.popitem(last=False)


_WORD = re.compile(r"\w{3,}")


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower())}


def _sample(items: list[str], count: int, rng: random.Random) -> list[str]:
    return items if len(items) <= count else rng.sample(items, count)


def _render_example(example: list, agent: str, rng: random.Random) -> str:
    names = ["Alex", "Sam", "Jordan", "Robin", "Kai"]
    lines = []
    for turn in example:
        speaker = turn.name
        for i, name in enumerate(names, start=1):
            speaker = speaker.replace(f"{{{{name{i}}}}}", name)
        text = str(turn.content.get("text", ""))
        if text:
            lines.append(f"{speaker}: {text}")
    return "\n".join(lines)


async def character_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    c = runtime.character
    rng = random.Random(message.id.int)
    parts = [f"# About {c.name}"]
    if c.system:
        parts.append(c.system)
    parts.append(" ".join(_sample(c.bio_lines, BIO_LINES, rng)))
    if c.lore:
        parts.append(" ".join(_sample(c.lore, LORE_LINES, rng)))
    if c.adjectives:
        parts.append(f"{c.name} is " + ", ".join(_sample(c.adjectives, 3, rng)) + ".")
    if c.topics:
        parts.append("Interested in: " + ", ".join(_sample(c.topics, 3, rng)) + ".")
    style = c.style.all + c.style.chat
    if style:
        parts.append("Style: " + " ".join(_sample(style, 4, rng)))
    if c.message_examples:
        examples = [_render_example(e, c.name, rng) for e in _sample(c.message_examples, EXAMPLES, rng)]
        parts.append("Example exchanges:\n" + "\n\n".join(e for e in examples if e))
    return ProviderResult(text="\n".join(parts), values={"agentName": c.name})


def _format_messages(runtime: AgentRuntime, memories: list[Memory], names: dict) -> str:
    lines = []
    for memory in reversed(memories):
        name = names.get(memory.entity_id, "Someone")
        text = memory.content.text.replace("\n", " ").strip()
        notes = [a.description or a.text or a.title or a.kind for a in memory.content.attachments]
        if notes:
            text += " [attached: " + "; ".join(n for n in notes if n)[:300] + "]"
        if text:
            lines.append(f"{name}: {text}")
    return "\n".join(lines)


async def recent_messages_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    memories = await runtime.history.recent(message.room_id)
    if not any(m.id == message.id for m in memories):
        memories = [message, *memories][: runtime.settings.conversation_length]
    names = await runtime.entity_names({m.entity_id for m in memories})
    text = _format_messages(runtime, memories, names)
    sender = names.get(message.entity_id, "Someone")
    return ProviderResult(
        text=f"# Conversation\n{text}" if text else "",
        values={"recentMessages": text, "senderName": sender},
        data={"memories": memories},
    )


async def time_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    now = datetime.fromtimestamp(runtime.clock(), tz=UTC)
    return ProviderResult(text=f"Current time: {now:%Y-%m-%d %H:%M} UTC", values={"time": now.isoformat()})


async def entities_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    entities = runtime.room_entities(message.room_id)
    people = [e for e in entities if e.id != runtime.agent_id]
    if not people:
        return ProviderResult()
    described = []
    for entity in people[:10]:
        profile = entity.metadata.get("profile") or {}
        facts = "; ".join(f"{k}: {v}" for k, v in list(profile.items())[:5])
        described.append(f"{' / '.join(entity.names[:2]) or 'unknown'}" + (f" ({facts})" if facts else ""))
    return ProviderResult(text="People here: " + ", ".join(described))


def _signature(action: Action) -> str:
    """NAME(arg: type, ...): description — how the XML prompt shows an action."""
    properties = (action.parameters or {}).get("properties") or {}
    required = set((action.parameters or {}).get("required") or ())
    args = ", ".join(f"{key}{'' if key in required else '?'}: {spec.get('type', 'any') if isinstance(spec, dict) else 'any'}"
                     for key, spec in properties.items())
    return f"- {action.name}({args}): {action.description}" if action.is_tool else f"- {action.name}: {action.description}"


async def actions_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    """Only the actions this asker may use here: the model is never offered what would be refused."""
    allowed = await runtime.allowed_actions(message, state)
    names = [action.name for action in allowed]
    return ProviderResult(values={"actionNames": ", ".join(names),
                                  "actionList": "\n".join(_signature(a) for a in allowed)},
                          data={"actions": names, "allowed": allowed})


def facts_provider(recall: Recall):
    async def get(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
        """The room's facts that share words with the message (else the newest few).

        Ranked in memory: no embedding call and no full-text query on the reply path.
        """
        known = await recall.facts(runtime, message.room_id)
        if not known:
            return ProviderResult()
        words = _words(message.content.text)
        scored = sorted(known, key=lambda f: len(words & _words(f.content.text)), reverse=True)
        matching = [f for f in scored if words & _words(f.content.text)]
        facts = [f.content.text for f in (matching or known)[:FACTS]]
        return ProviderResult(text="# Things you know\n" + "\n".join(f"- {f}" for f in facts),
                              data={"facts": facts})

    return get


def relationships_provider(recall: Recall):
    async def get(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
        relationships = await recall.relationships(runtime, message.entity_id)
        if not relationships:
            return ProviderResult()
        ids = {r.source_entity_id for r in relationships} | {r.target_entity_id for r in relationships}
        names = await runtime.entity_names(ids)
        lines = [
            f"- {names.get(r.source_entity_id, '?')} → {names.get(r.target_entity_id, '?')}: {', '.join(r.tags)}"
            for r in relationships[:8]
        ]
        return ProviderResult(text="# Relationships\n" + "\n".join(lines))

    return get


async def world_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    room = await runtime.get_room(message.room_id)
    if room is None or room.world_id is None:
        return ProviderResult()
    world = await runtime.store.get_world(room.world_id)
    rooms = await runtime.store.get_rooms(runtime.agent_id, room.world_id)
    names = ", ".join(r.name or str(r.channel_id) for r in rooms[:15])
    return ProviderResult(text=f"# World: {world.name if world else 'unknown'}\nRooms: {names}")


async def attachments_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    lines = [
        f"- {a.kind} {a.title or ''}: {a.description or a.text or 'no description'}".strip()
        for a in message.content.attachments
    ]
    return ProviderResult(text="# Attachments\n" + "\n".join(lines)) if lines else ProviderResult()


async def capabilities_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    can = []
    if runtime.has_model(ModelType.IMAGE):
        can.append("create images")
    if runtime.has_model(ModelType.TEXT_TO_SPEECH):
        can.append("speak")
    if runtime.has_model(ModelType.TRANSCRIPTION):
        can.append("hear voice messages")
    if runtime.has_model(ModelType.IMAGE_DESCRIPTION):
        can.append("see images")
    return ProviderResult(text=f"{runtime.character.name} can " + ", ".join(can) + ".") if can else ProviderResult()


def make_providers(recall: Recall) -> list[Provider]:
    return [
        Provider("CHARACTER", character_provider, "who the agent is", position=0),
        # Asked for by name only: LOCAL_TIME (the tasks plugin) puts the asker's local time in every prompt.
        Provider("TIME", time_provider, "the current time in UTC", dynamic=True, position=10),
        Provider("ENTITIES", entities_provider, "people in the room", position=20),
        Provider("CAPABILITIES", capabilities_provider, "what the agent can do", position=25),
        Provider("ACTIONS", actions_provider, "actions the agent may take", position=30),
        Provider("FACTS", facts_provider(recall), "facts recalled for this message", position=40),
        Provider("RELATIONSHIPS", relationships_provider(recall), "how the sender relates to others",
                 position=50),
        Provider("WORLD", world_provider, "the server or group and its rooms", dynamic=True, position=60),
        Provider("ATTACHMENTS", attachments_provider, "files attached to the message", position=70),
        Provider("RECENT_MESSAGES", recent_messages_provider, "the conversation so far", position=100),
    ]

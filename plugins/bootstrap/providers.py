"""Providers: the context each prompt is built from, each short and each skippable."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.plugin import Provider, ProviderResult, State
from bot.types import Memory, MemoryType, ModelType

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

BIO_LINES = 4
LORE_LINES = 2
EXAMPLES = 2
FACTS = 6


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
    memories = await runtime.store.get_memories(
        agent_id=runtime.agent_id, room_id=message.room_id, count=runtime.settings.conversation_length
    )
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


async def actions_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    names = []
    for action in runtime.actions:
        try:
            if await action.validate(runtime, message, state):
                names.append(action.name)
        except Exception:
            continue
    return ProviderResult(values={"actionNames": ", ".join(names)}, data={"actions": names})


async def facts_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    """Facts recalled by full-text search on the message: no embedding call on the reply path."""
    if not message.content.text.strip():
        return ProviderResult()
    found = await runtime.store.search_memories_by_text(
        message.content.text, agent_id=runtime.agent_id, type=MemoryType.FACT, count=FACTS,
        room_id=message.room_id,
    )
    facts = [s.memory.content.text for s in found if s.memory.content.text]
    if not facts:
        return ProviderResult()
    return ProviderResult(text="# Things you know\n" + "\n".join(f"- {f}" for f in facts), data={"facts": facts})


async def relationships_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    relationships = await runtime.store.get_relationships(agent_id=runtime.agent_id, entity_id=message.entity_id)
    if not relationships:
        return ProviderResult()
    ids = {r.source_entity_id for r in relationships} | {r.target_entity_id for r in relationships}
    names = await runtime.entity_names(ids)
    lines = [
        f"- {names.get(r.source_entity_id, '?')} → {names.get(r.target_entity_id, '?')}: {', '.join(r.tags)}"
        for r in relationships[:8]
    ]
    return ProviderResult(text="# Relationships\n" + "\n".join(lines))


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


PROVIDERS = [
    Provider("CHARACTER", character_provider, "who the agent is", position=0),
    Provider("TIME", time_provider, "the current time", position=10),
    Provider("ENTITIES", entities_provider, "people in the room", position=20),
    Provider("CAPABILITIES", capabilities_provider, "what the agent can do", position=25),
    Provider("ACTIONS", actions_provider, "actions the agent may take", position=30),
    Provider("FACTS", facts_provider, "facts recalled for this message", position=40),
    Provider("RELATIONSHIPS", relationships_provider, "how the sender relates to others", position=50),
    Provider("WORLD", world_provider, "the server or group and its rooms", dynamic=True, position=60),
    Provider("ATTACHMENTS", attachments_provider, "files attached to the message", position=70),
    Provider("RECENT_MESSAGES", recent_messages_provider, "the conversation so far", position=100),
]

"""One run of the message pipeline: decide, compose, generate once, act, store, evaluate later."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.ids import create_unique_uuid
from bot.plugin import HandlerCallback, MessagePreparer, State
from bot.runtime import RunOutcome
from bot.settings import ShouldRespondMode
from bot.types import DIRECT_CHANNELS, ChannelType, Content, EventType, Memory, ModelType, RoomState

from .embeddings import EmbeddingQueue
from .parsing import ParsedResponse, parse_decision, parse_response
from .templates import render, template_for

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

PLAIN_REPLY = {"REPLY", "NONE"}
# Actions that send the response text themselves, with their buttons or images attached.
TEXT_CARRIERS = {"CHOOSE_OPTION", "GENERATE_IMAGE"}


@dataclass
class Job:
    message: Memory
    callback: HandlerCallback | None
    prepare: MessagePreparer | None = None
    run_id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass
class Decision:
    respond: bool
    status: str = "completed"  # when not responding: ignored | muted
    reason: str = ""


_SPEAKER = re.compile(r"^\s*[\w .'-]{1,40}:\s")


def clean_plain_reply(raw: str) -> str:
    """The first turn of a small model's answer, without a leading "Name:" or later turns."""
    text = _SPEAKER.sub("", raw.strip(), count=1) if _SPEAKER.match(raw.strip()) else raw.strip()
    lines = []
    for line in text.splitlines():
        if lines and _SPEAKER.match(line):
            break
        lines.append(line)
    return "\n".join(lines).strip() or raw.strip()


class ReplySender:
    """Wraps a connector callback: stamps replies, stores each as a memory and emits MESSAGE_SENT."""

    def __init__(self, runtime: AgentRuntime, message: Memory, callback: HandlerCallback | None,
                 run_id: uuid.UUID) -> None:
        self.runtime, self.message, self.callback, self.run_id = runtime, message, callback, run_id
        self.sent: list[Content] = []

    async def __call__(self, content: Content) -> list[str]:
        content.in_reply_to = content.in_reply_to or self.message.id
        content.source = content.source or self.message.content.source
        content.channel_type = content.channel_type or self.message.content.channel_type
        keys = await self.callback(content) if self.callback else []
        memory_id = create_unique_uuid(self.runtime.agent_id, keys[0]) if keys else uuid.uuid4()
        reply = Memory(
            id=memory_id, entity_id=self.runtime.agent_id, agent_id=self.runtime.agent_id,
            room_id=self.message.room_id, world_id=self.message.world_id, content=content,
            metadata={"platform_keys": keys, "run_id": str(self.run_id)} if keys else {"run_id": str(self.run_id)},
        )
        await self.runtime.create_memory(reply)
        self.sent.append(content)
        await self.runtime.emit(EventType.MESSAGE_SENT, {
            "runtime": self.runtime, "message": reply, "in_reply_to": self.message, "run_id": self.run_id,
        })
        return keys


class Pipeline:
    def __init__(self, runtime: AgentRuntime, embeddings: EmbeddingQueue) -> None:
        self.runtime = runtime
        self.embeddings = embeddings
        names = [re.escape(n) for n in (runtime.character.name, runtime.character.username) if n]
        self._name_pattern = re.compile(rf"(?<!\w)@?(?:{'|'.join(names)})(?!\w)", re.IGNORECASE)

    # Should-respond -------------------------------------------------------------------------------
    def names_agent(self, text: str) -> bool:
        return self._name_pattern.search(text) is not None

    async def should_respond(self, message: Memory, run_id: uuid.UUID) -> Decision:
        runtime, content = self.runtime, message.content
        if message.metadata.get("author_is_bot") and not runtime.settings.respond_to_bots:
            return Decision(False, "ignored", "author is a bot")
        named = self.names_agent(content.text)
        state = await runtime.get_room_state(message.room_id)
        if state is RoomState.MUTED:
            return Decision(True) if named else Decision(False, "muted", "room is muted")
        mention = content.mention_context
        if content.channel_type in DIRECT_CHANNELS or (mention and (mention.is_mention or mention.is_reply)) or named:
            return Decision(True)
        if runtime.settings.should_respond_mode is ShouldRespondMode.MENTIONS:
            return Decision(False, "ignored", "not addressed (SHOULD_RESPOND_MODE=mentions)")
        recent = await runtime.compose_state(message, only=["RECENT_MESSAGES"])
        note = ("You follow this room: answer unless the message is clearly meant for someone else."
                if state is RoomState.FOLLOWED else "")
        prompt = render(template_for(runtime.character.templates, "shouldRespondTemplate"), {
            **recent.values, "agentName": runtime.character.name, "roomNote": note,
        })
        raw = await runtime.use_model(ModelType.TEXT_SMALL, {
            "prompt": prompt, "max_tokens": 8, "room_id": message.room_id, "entity_id": message.entity_id,
        })
        decision = parse_decision(raw)
        return Decision(decision == "RESPOND", "ignored", f"model said {decision}")

    # Generation -----------------------------------------------------------------------------------
    async def _generate(self, message: Memory, state: State) -> ParsedResponse:
        runtime = self.runtime
        if runtime.prefers_plain_text(ModelType.TEXT_LARGE):
            return await self._generate_plain(message, state)
        prompt = render(template_for(runtime.character.templates, "messageHandlerTemplate"), {
            **state.values, "providers": state.text, "agentName": runtime.character.name,
        })
        params = {"prompt": prompt, "system": runtime.character.system, "room_id": message.room_id,
                  "entity_id": message.entity_id}
        raw = ""
        for _attempt in range(2):
            raw = await runtime.use_model(ModelType.TEXT_LARGE, params)
            parsed = parse_response(raw)
            if parsed is not None:
                return parsed
        return ParsedResponse(text=raw.strip(), actions=["REPLY"])

    async def _generate_plain(self, message: Memory, state: State) -> ParsedResponse:
        """For small local models: the context as the system prompt and the conversation as chat
        turns, asking for the reply text alone; what they add around it is trimmed."""
        runtime = self.runtime
        providers = state.data.get("providers", {})
        context = "\n\n".join(r.text for name, r in providers.items() if r.text and name != "RECENT_MESSAGES")
        system = "\n\n".join(p for p in (runtime.character.system, context,
                                         f"Reply as {runtime.character.name}, briefly and in character.") if p)
        history = providers["RECENT_MESSAGES"].data.get("memories", []) if "RECENT_MESSAGES" in providers else []
        names = await runtime.entity_names({m.entity_id for m in history})
        turns = [
            {"role": "assistant", "content": m.content.text} if m.entity_id == runtime.agent_id
            else {"role": "user", "content": m.content.text if message.content.channel_type in DIRECT_CHANNELS
                  else f"{names.get(m.entity_id, 'Someone')}: {m.content.text}"}
            for m in reversed(history) if m.content.text
        ] or [{"role": "user", "content": message.content.text}]
        raw = await runtime.use_model(ModelType.TEXT_LARGE, {
            "prompt": message.content.text, "messages": turns, "system": system,
            "room_id": message.room_id, "entity_id": message.entity_id,
        })
        return ParsedResponse(text=clean_plain_reply(raw), actions=["REPLY"])

    async def run(self, job: Job) -> RunOutcome:
        runtime, message = self.runtime, job.message
        base = {"runtime": runtime, "message": message, "run_id": job.run_id}
        await runtime.emit(EventType.RUN_STARTED, base)
        sender = ReplySender(runtime, message, job.callback, job.run_id)
        try:
            if job.prepare is not None:
                message = job.message = sender.message = base["message"] = await self.prepare(job)
            decision = await self.should_respond(message, job.run_id)
            if not decision.respond:
                outcome = RunOutcome(status=decision.status, run_id=job.run_id)
            else:
                outcome = await self._respond(message, sender, job.run_id)
        except Exception as error:
            log.exception("run %s failed for message %s", job.run_id, message.id)
            await self._apologise(sender)
            outcome = RunOutcome(status="error", run_id=job.run_id, responses=sender.sent,
                                 error=f"{type(error).__name__}: {error}")
        await runtime.emit(EventType.RUN_ENDED, {**base, "status": outcome.status, "error": outcome.error})
        return outcome

    async def prepare(self, job: Job) -> Memory:
        """The message after its connector's enrichment; on failure the stored message stands."""
        try:
            prepared = await job.prepare(job.message)
        except Exception:
            log.exception("preparing message %s failed; answering it as received", job.message.id)
            self.embeddings.add(job.message)
            return job.message
        await self.runtime.update_memory(prepared)
        self.embeddings.add(prepared)
        return prepared

    async def _respond(self, message: Memory, sender: ReplySender, run_id: uuid.UUID) -> RunOutcome:
        runtime = self.runtime
        state = await runtime.compose_state(message)
        parsed = await self._generate(message, state)
        actions = parsed.actions or ["REPLY"]
        if "IGNORE" in actions and len(actions) == 1:
            runtime.forget_state(message.id)
            return RunOutcome(status="ignored", run_id=run_id)
        if TEXT_CARRIERS & set(actions):
            actions = [a for a in actions if a not in PLAIN_REPLY]  # they send the text themselves
        replies = [a for a in actions if a in PLAIN_REPLY]
        others = [a for a in actions if a not in PLAIN_REPLY]
        if parsed.providers:
            state = await runtime.compose_state(message, include=parsed.providers)
        response = Memory(
            entity_id=runtime.agent_id, agent_id=runtime.agent_id, room_id=message.room_id,
            content=Content(text=parsed.text, thought=parsed.thought, actions=actions, providers=parsed.providers,
                            metadata={"options": parsed.options} if parsed.options else {}),
        )
        if replies and not parsed.providers:
            if parsed.text:  # the text the model already wrote: no second model call
                await sender(Content(text=parsed.text, thought=parsed.thought or None, actions=replies))
        elif replies:
            await runtime.process_actions(message, [self._with(response, replies[:1])], state, sender,
                                          run_id=run_id)
        if others:
            # The reply text went out once already; the other actions must not send it again.
            rest = self._with(response, others, text="" if replies else None)
            await runtime.process_actions(message, [rest], state, sender, run_id=run_id)
        runtime.run_in_background(self._evaluate(message, state, bool(sender.sent), response),
                                  f"evaluate-{message.id}")
        return RunOutcome(status="completed", run_id=run_id, responses=sender.sent)

    @staticmethod
    def _with(response: Memory, actions: list[str], text: str | None = None) -> Memory:
        update: dict = {"actions": actions}
        if text is not None:
            update["text"] = text
        return response.model_copy(update={"content": response.content.model_copy(update=update)})

    async def _evaluate(self, message: Memory, state: State, responded: bool, response: Memory) -> None:
        try:
            await self.runtime.evaluate(message, state, responded, [response])
        finally:
            self.runtime.forget_state(message.id)

    async def _apologise(self, sender: ReplySender) -> None:
        text = self.runtime.settings.error_reply.strip()
        if not text or sender.sent or sender.message.content.channel_type is ChannelType.FEED:
            return
        try:
            await sender(Content(text=text, actions=["ERROR"], metadata={"error": True}))
        except Exception:
            log.exception("could not deliver the error reply")

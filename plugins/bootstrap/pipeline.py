"""One run of the message pipeline: decide, compose, generate once, act, store, evaluate later."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.ids import create_unique_uuid
from bot.plugin import ActionResult, HandlerCallback, MessagePreparer, State
from bot.runtime import ModelError, RunOutcome
from bot.settings import ShouldRespondMode, Streaming
from bot.streaming import ReplyStream, StreamingCallback
from bot.types import DIRECT_CHANNELS, Content, EventType, Memory, ModelType, RoomState

from .embeddings import EmbeddingQueue
from .parsing import ParsedResponse, parse_decision
from .recall import recall_statements
from .streaming import PLAIN_REPLY, ReplyText
from .templates import render, template_for
from .turn import Turn, is_tool_memory

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

# Actions that send the response text themselves, with their buttons or images attached.
TEXT_CARRIERS = {"CHOOSE_OPTION", "GENERATE_IMAGE"}
# Plain (small local) models see only the message before this one and the providers that carry
# facts the reply needs; with more turns a 135M-parameter model copies and rambles
# (bench/offline_chat.py: with 4 earlier turns 25% of replies ran to max_tokens, with 2 35%, with 1 5%).
PLAIN_TURNS = 1
PLAIN_CONTEXT = {"ATTACHMENTS", "KNOWLEDGE"}
GROUNDED_TEMPERATURE = 0.0  # an answer from recalled context should repeat it, not improvise


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


class ReplySender:
    """Wraps a connector callback: stamps replies, stores each as a memory and emits MESSAGE_SENT.

    Where the connector can show a reply while it is written (and STREAMING allows it here), the
    model's text goes to that stream, and the run's first reply finishes it: the final text
    replaces what was shown instead of arriving as another message.
    """

    def __init__(self, runtime: AgentRuntime, message: Memory, callback: HandlerCallback | None,
                 run_id: uuid.UUID) -> None:
        self.runtime, self.message, self.callback, self.run_id = runtime, message, callback, run_id
        self.sent: list[Content] = []
        self.refused = False
        self.stream: ReplyStream | None = None
        self._stream_used = False

    def text_sink(self, *, xml: bool) -> ReplyText | None:
        """Where a model round's text goes while it is written (None: this reply is not streamed)."""
        if self._stream_used:
            return None
        if self.stream is None:
            mode = self.runtime.settings.streaming
            direct = self.message.content.channel_type in DIRECT_CHANNELS
            if mode is Streaming.OFF or (mode is Streaming.DM and not direct):
                return None
            if not isinstance(self.callback, StreamingCallback):
                return None
            self.stream = self.callback.open_stream()
            if self.stream is None:
                return None
        return ReplyText(self.stream, xml=xml)

    async def close(self) -> None:
        """End of the run: a stream no reply finished is withdrawn."""
        if self.stream is not None:
            await self.stream.close()

    async def refuse(self, results: list[ActionResult]) -> None:
        """Tell the asker, once per run, that an action they asked for is not theirs to use."""
        refusal = next((r.error for r in results if r.data.get("refused")), None)
        if refusal and not self.refused:
            self.refused = True
            await self(Content(text=refusal, actions=["REFUSED"]))

    async def __call__(self, content: Content) -> list[str]:
        content.in_reply_to = content.in_reply_to or self.message.id
        content.source = content.source or self.message.content.source
        content.channel_type = content.channel_type or self.message.content.channel_type
        keys = None
        if self.stream is not None and not self._stream_used:
            self._stream_used = True
            keys = await self.stream.finish(content)
        if keys is None:
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

    # Should-respond -------------------------------------------------------------------------------
    async def should_respond(self, message: Memory, run_id: uuid.UUID) -> Decision:
        runtime = self.runtime
        if message.metadata.get("author_is_bot") and not runtime.settings.respond_to_bots:
            return Decision(False, "ignored", "author is a bot")
        state = await runtime.get_room_state(message.room_id)
        if state is RoomState.MUTED:  # muted: only the bot's name gets through
            named = runtime.names_agent(message.content.text)
            return Decision(True) if named else Decision(False, "muted", "room is muted")
        if runtime.is_addressed(message):
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
    async def _generate(self, message: Memory, state: State, sender: ReplySender,
                        run_id: uuid.UUID) -> ParsedResponse | None:
        """The model's answer after any tool rounds (None: a tool sent the reply itself). Models
        with native tool calling get tools; others the XML template; plain local models (first
        choice or fallback) get the conversation as chat turns."""
        runtime = self.runtime
        plain = await self._plain_params(message, state) if runtime.has_plain_model(ModelType.TEXT_LARGE) else None
        turn = Turn(runtime, message, state, sender, run_id, plain)
        return await (turn.native() if runtime.has_native_tools(ModelType.TEXT_LARGE) else turn.xml())

    async def _plain_params(self, message: Memory, state: State) -> dict:
        """For small local models: a short system prompt, the last few turns as chat turns, and
        what the speaker said earlier that bears on the new message right before it (they find a
        fact placed there, not forty turns back). What they add around the reply is trimmed."""
        runtime = self.runtime
        providers = state.data.get("providers", {})
        context = "\n\n".join(r.text for name, r in providers.items() if r.text and name in PLAIN_CONTEXT)
        character = runtime.character
        bio = character.bio if isinstance(character.bio, str) else " ".join(character.bio[:3])
        system = "\n\n".join(p for p in (character.system or bio, context,
                                         f"Reply as {character.name} in one or two short sentences, in character.") if p)
        history = providers["RECENT_MESSAGES"].data.get("memories", []) if "RECENT_MESSAGES" in providers else []
        history = [m for m in history if m.content.text and m.id != message.id and not is_tool_memory(m)][:PLAIN_TURNS]
        names = await runtime.entity_names({m.entity_id for m in history} | {message.entity_id})
        direct = message.content.channel_type in DIRECT_CHANNELS

        def said(memory: Memory, text: str) -> str:
            return text if direct else f"{names.get(memory.entity_id, 'Someone')}: {text}"

        turns = [{"role": "assistant", "content": m.content.text} if m.entity_id == runtime.agent_id
                 else {"role": "user", "content": said(m, m.content.text)} for m in reversed(history)]
        text, params = message.content.text, {}
        if text.rstrip().endswith("?") and (recalled := await recall_statements(runtime, message)):
            # A question about something said before: answered from that alone, conservatively;
            # earlier turns only distract a small model from the fact in front of it.
            text = f"Context: {' '.join(recalled)}\n\nQuestion: {text}\nAnswer from the context."
            turns, params["temperature"] = [], GROUNDED_TEMPERATURE
            grounded = f"You are {character.name}. Answer the question from the context, in one short sentence."
            system = "\n\n".join(p for p in (grounded, context) if p)  # documents' passages stay in view
        turns.append({"role": "user", "content": said(message, text)})
        return {"prompt": message.content.text, "messages": turns, "system": system, **params}

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
        except ModelError as error:  # an outage: one line naming each provider's error, no traceback
            log.error("no model could answer message %s (run %s): %s", message.id, job.run_id, error)
            await self._apologise(sender)
            outcome = RunOutcome(status="error", run_id=job.run_id, responses=sender.sent, error=str(error))
        except Exception as error:
            log.exception("run %s failed for message %s", job.run_id, message.id)
            await self._apologise(sender)
            outcome = RunOutcome(status="error", run_id=job.run_id, responses=sender.sent,
                                 error=f"{type(error).__name__}: {error}")
        finally:
            await sender.close()
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
        parsed = await self._generate(message, state, sender, run_id)
        if parsed is None:  # a tool delivered the reply
            runtime.run_in_background(self._evaluate(message, state, True, None), f"evaluate-{message.id}")
            return RunOutcome(status="completed", run_id=run_id, responses=sender.sent)
        actions = parsed.actions or ["REPLY"]
        if "IGNORE" in actions and len(actions) == 1:
            runtime.forget_state(message.id)
            return RunOutcome(status="ignored", run_id=run_id, responses=sender.sent)
        if TEXT_CARRIERS & set(actions):
            actions = [a for a in actions if a not in PLAIN_REPLY]  # they send the text themselves
        replies = [a for a in actions if a in PLAIN_REPLY]
        others = [a for a in actions if a not in PLAIN_REPLY and a != "IGNORE"]
        if parsed.providers:
            state = await runtime.compose_state(message, include=parsed.providers)
        metadata = {"options": parsed.options} if parsed.options else {}
        if parsed.params:
            metadata["params"] = parsed.params
        response = Memory(
            entity_id=runtime.agent_id, agent_id=runtime.agent_id, room_id=message.room_id,
            content=Content(text=parsed.text, thought=parsed.thought, actions=actions, providers=parsed.providers,
                            metadata=metadata),
        )
        results = []
        if replies and not parsed.providers:
            if parsed.text:  # the text the model already wrote: no second model call
                await sender(Content(text=parsed.text, thought=parsed.thought or None, actions=replies))
        elif replies:
            results += await runtime.process_actions(message, [self._with(response, replies[:1])], state, sender,
                                                     run_id=run_id)
        if others:
            # The reply text went out once already; the other actions must not send it again.
            rest = self._with(response, others, text="" if replies else None)
            results += await runtime.process_actions(message, [rest], state, sender, run_id=run_id)
            await sender.refuse(results)
        if not sender.sent and (not others or any(not r.success for r in results)):
            # An action that could not run (unknown, unavailable, refused, failed) never swallows
            # the answer: the text the model wrote goes out, or the apology.
            if parsed.text:
                await sender(Content(text=parsed.text, thought=parsed.thought or None, actions=["REPLY"]))
            else:
                await self._apologise(sender)
        runtime.run_in_background(self._evaluate(message, state, bool(sender.sent), response),
                                  f"evaluate-{message.id}")
        return RunOutcome(status="completed", run_id=run_id, responses=sender.sent)

    @staticmethod
    def _with(response: Memory, actions: list[str], text: str | None = None) -> Memory:
        update: dict = {"actions": actions}
        if text is not None:
            update["text"] = text
        return response.model_copy(update={"content": response.content.model_copy(update=update)})

    async def _evaluate(self, message: Memory, state: State, responded: bool, response: Memory | None) -> None:
        try:
            await self.runtime.evaluate(message, state, responded, [response] if response else [])
        finally:
            self.runtime.forget_state(message.id)

    async def _apologise(self, sender: ReplySender) -> None:
        text = self.runtime.settings.error_reply.strip()
        if not text or sender.sent or not self.runtime.is_addressed(sender.message):
            return  # nobody asked: an apology in a group would be noise
        try:
            await sender(Content(text=text, actions=["ERROR"], metadata={"error": True}))
        except Exception:
            log.exception("could not deliver the error reply")

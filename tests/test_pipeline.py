"""The bootstrap pipeline end to end: Memory in → reply callback out → rows in the store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot.plugin import Connector, Plugin, Priority
from bot.settings import ShouldRespondMode
from bot.types import Attachment, ChannelType, Content, EventType, MemoryType, ModelType, Room, RoomState
from tests.runtime_helpers import (
    ScriptedModel,
    make_character,
    make_chat,
    make_settings,
    start_runtime,
    xml_reply,
)


@pytest.fixture
def model() -> ScriptedModel:
    m = ScriptedModel()
    m.defaults[ModelType.TEXT_LARGE] = xml_reply("Hello there!")
    m.defaults[ModelType.TEXT_SMALL] = "IGNORE"
    return m


async def _runtime(store, tmp_path, model, *extra, **settings):
    return await start_runtime(store, make_settings(tmp_path, **settings), model, *extra)


def gated(model: ScriptedModel, text: str = "ok") -> asyncio.Event:
    """TEXT_LARGE waits until the returned event is set, then answers `text`."""
    gate = asyncio.Event()

    async def slow(params):
        await gate.wait()
        return xml_reply(text)

    model.defaults[ModelType.TEXT_LARGE] = slow
    return gate


async def test_dm_gets_one_reply_stored_with_in_reply_to(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    outcome = await chat.send("hi Ava")
    assert outcome.status == "completed"
    assert [c.text for c in chat.sent] == ["Hello there!"]
    assert model.count(ModelType.TEXT_LARGE) == 1 and model.count(ModelType.TEXT_SMALL) == 0
    rows = await sqlite_store.get_memories(agent_id=runtime.agent_id, room_id=chat.room.id)
    assert [r.content.text for r in rows] == ["Hello there!", "hi Ava"]
    assert rows[0].entity_id == runtime.agent_id and rows[0].content.in_reply_to == rows[1].id


async def test_same_message_id_twice_never_replies_twice(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    await runtime.ensure_connection(chat.user, chat.room)
    message = chat.message("hello")
    first = await runtime.receive_message(message, chat.callback)
    second = await runtime.receive_message(message.model_copy(), chat.callback)
    assert second.duplicate and (await second.outcome).status == "duplicate"
    assert (await first.outcome).status == "completed"
    assert len(chat.sent) == 1
    assert await sqlite_store.count_memories(agent_id=runtime.agent_id, room_id=chat.room.id) == 2


async def test_own_and_bot_messages_are_not_answered(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    own = chat.message("echo").model_copy(update={"entity_id": runtime.agent_id})
    assert (await (await runtime.receive_message(own, chat.callback)).outcome).status == "ignored"
    await runtime.ensure_connection(chat.user, chat.room)
    bot = chat.message("beep", metadata={"author_is_bot": True})
    assert (await (await runtime.receive_message(bot, chat.callback)).outcome).status == "ignored"
    assert chat.sent == [] and model.calls == []


async def test_bots_are_answered_when_configured(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model, respond_to_bots=True)
    chat = make_chat(runtime)
    await runtime.ensure_connection(chat.user, chat.room)
    bot = chat.message("beep", metadata={"author_is_bot": True})
    assert (await (await runtime.receive_message(bot, chat.callback)).outcome).status == "completed"


async def test_group_mentions_mode_needs_no_model_call(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model, should_respond_mode=ShouldRespondMode.MENTIONS)
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    assert (await chat.send("anyone around?")).status == "ignored"
    assert model.calls == []
    assert (await chat.send("question for you", mention=True)).status == "completed"
    assert (await chat.send("thanks", reply=True)).status == "completed"
    assert model.count(ModelType.TEXT_SMALL) == 0 and len(chat.sent) == 2


async def test_group_auto_mode_asks_the_small_model(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    model.script(ModelType.TEXT_SMALL, "IGNORE", "RESPOND")
    assert (await chat.send("lunch at noon?")).status == "ignored"
    assert (await chat.send("what do bots eat?")).status == "completed"
    assert model.count(ModelType.TEXT_SMALL) == 2 and len(chat.sent) == 1
    assert "what do bots eat?" in model.prompts(ModelType.TEXT_SMALL)[1]


async def test_named_in_group_answers_without_decision(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    assert (await chat.send("hey ava, you there?")).status == "completed"
    assert model.count(ModelType.TEXT_SMALL) == 0


async def test_muted_room_answers_only_when_named(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    await chat.send("hello", mention=True)
    await runtime.set_room_state(chat.room.id, RoomState.MUTED)
    assert (await chat.send("talking to you", mention=True)).status == "muted"
    assert (await chat.send("Ava, are you there?")).status == "completed"
    assert len(chat.sent) == 2


async def test_followed_room_says_so_in_the_decision_prompt(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    await chat.send("hello", mention=True)
    await runtime.set_room_state(chat.room.id, RoomState.FOLLOWED)
    model.script(ModelType.TEXT_SMALL, "RESPOND")
    assert (await chat.send("nice weather")).status == "completed"
    assert "You follow this room" in model.prompts(ModelType.TEXT_SMALL)[-1]


async def test_burst_in_one_room_answers_every_message_in_order(sqlite_store, tmp_path, model):
    gate = asyncio.Event()

    async def slow_reply(params):
        await gate.wait()
        return xml_reply(f"reply {model.count(ModelType.TEXT_LARGE)}")

    model.defaults[ModelType.TEXT_LARGE] = slow_reply
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    await runtime.ensure_connection(chat.user, chat.room)
    tickets = [await runtime.receive_message(chat.message(f"msg {i}"), chat.callback) for i in range(6)]
    gate.set()
    outcomes = [await t.outcome for t in tickets]
    assert [o.status for o in outcomes] == ["completed"] * 6
    assert [c.text for c in chat.sent] == [f"reply {i}" for i in range(1, 7)]
    # Messages that arrived during the first generation were stored at once: the next one sees them all.
    assert "msg 5" in model.prompts(ModelType.TEXT_LARGE)[1]
    rows = await sqlite_store.get_memories(agent_id=runtime.agent_id, room_id=chat.room.id, count=None)
    assert len(rows) == 12


async def test_rooms_run_concurrently(sqlite_store, tmp_path, model):
    both_started = asyncio.Event()
    started: set[str] = set()

    async def wait_for_other_room(params):
        started.add(str(params["room_id"]))
        if len(started) == 2:
            both_started.set()
        await asyncio.wait_for(both_started.wait(), 5)
        return xml_reply("done")

    model.defaults[ModelType.TEXT_LARGE] = wait_for_other_room
    runtime = await _runtime(sqlite_store, tmp_path, model)
    a, b = make_chat(runtime, "a"), make_chat(runtime, "b", user="Kim")
    outcomes = await asyncio.gather(a.send("hi"), b.send("hi"))
    assert [o.status for o in outcomes] == ["completed", "completed"]


async def _group_room_held_by_a_mention(sqlite_store, tmp_path, model):
    """A group room whose first message (a mention) is held in its model call until `gate` is set."""
    gate = gated(model)
    model.defaults[ModelType.TEXT_SMALL] = "RESPOND"
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    await runtime.ensure_connection(chat.user, chat.room)
    first = await runtime.receive_message(chat.message("ava?", mention=True), chat.callback)
    return gate, runtime, chat, first


async def test_superseded_group_chatter_is_decided_once(sqlite_store, tmp_path, model):
    gate, runtime, chat, first = await _group_room_held_by_a_mention(sqlite_store, tmp_path, model)
    chatter = [await runtime.receive_message(chat.message(f"chat {i}"), chat.callback) for i in range(3)]
    gate.set()
    assert (await first.outcome).status == "completed"
    statuses = [(await t.outcome).status for t in chatter]
    assert statuses == ["ignored", "ignored", "completed"]
    assert model.count(ModelType.TEXT_SMALL) == 1
    assert "chat 0" in model.prompts(ModelType.TEXT_SMALL)[0]


async def test_malformed_xml_retries_once_then_uses_raw_text(sqlite_store, tmp_path, model):
    model.script(ModelType.TEXT_LARGE, "just words", "still just words")
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    await chat.send("hi")
    assert model.count(ModelType.TEXT_LARGE) == 2
    assert [c.text for c in chat.sent] == ["still just words"]


async def test_failing_models_send_one_apology_and_recover(sqlite_store, tmp_path, model, caplog):
    model.script(ModelType.TEXT_LARGE, RuntimeError("boom"))
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    outcome = await chat.send("hi")
    assert outcome.status == "error" and "boom" in outcome.error
    assert [c.text for c in chat.sent] == [runtime.settings.error_reply]
    assert str(outcome.run_id) in caplog.text
    assert (await chat.send("again")).status == "completed"
    assert chat.sent[-1].text == "Hello there!"


async def test_apology_can_be_turned_off(sqlite_store, tmp_path, model):
    model.script(ModelType.TEXT_LARGE, RuntimeError("boom"))
    runtime = await _runtime(sqlite_store, tmp_path, model, error_reply="")
    chat = make_chat(runtime)
    assert (await chat.send("hi")).status == "error"
    assert chat.sent == []


async def test_events_of_a_run(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model)
    seen: list[str] = []
    for event in EventType:
        async def record(payload, event=event):
            seen.append(str(event) + ("" if "status" not in payload else f":{payload['status']}"))
        runtime.on(event, record)
    await make_chat(runtime).send("hi")
    for expected in ("MESSAGE_RECEIVED", "RUN_STARTED", "MODEL_USED", "MESSAGE_SENT", "RUN_ENDED:completed"):
        assert expected in seen


async def test_mute_and_follow_actions_change_room_state(sqlite_store, tmp_path, model):
    model.script(ModelType.TEXT_LARGE, xml_reply("Okay, going quiet.", "MUTE_ROOM"))
    connector = Plugin(name="test-connector", priority=Priority.PLATFORM, services=[RecordingConnector])
    runtime = await _runtime(sqlite_store, tmp_path, model, connector)  # Sam, vouched for as an owner
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    await chat.send("ava please be quiet", mention=True)
    assert await sqlite_store.get_participant_state(chat.room.id, runtime.agent_id) is RoomState.MUTED
    assert [c.text for c in chat.sent] == ["Okay, going quiet."]
    model.script(ModelType.TEXT_LARGE, xml_reply("Back!", "FOLLOW_ROOM"))
    await chat.send("Ava come back")
    assert await runtime.get_room_state(chat.room.id) is RoomState.FOLLOWED


async def test_ignore_action_sends_nothing(sqlite_store, tmp_path, model):
    model.script(ModelType.TEXT_LARGE, xml_reply("", "IGNORE"))
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    assert (await chat.send("ok bye")).status == "ignored"
    assert chat.sent == []


async def test_choose_option_sends_buttons(sqlite_store, tmp_path, model):
    model.script(ModelType.TEXT_LARGE, xml_reply("Pick one:", "CHOOSE_OPTION", options="Tea|Coffee"))
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    await chat.send("tea or coffee?")
    [sent] = chat.sent
    assert sent.text == "Pick one:"
    assert [[b.value for b in row] for row in sent.buttons] == [["Tea"], ["Coffee"]]


async def test_generate_image_returns_an_attachment(sqlite_store, tmp_path, model):
    model.script(ModelType.TEXT_LARGE, xml_reply("Here you go", "GENERATE_IMAGE"))
    model.defaults[ModelType.IMAGE] = lambda p: [Attachment(id="", kind="image", data=b"PNG", content_type="image/png")]
    connector = Plugin(name="test-connector", priority=Priority.PLATFORM, services=[RecordingConnector])
    runtime = await start_runtime(sqlite_store, make_settings(tmp_path), model, connector,  # a platform member
                                  model_types=(ModelType.TEXT_SMALL, ModelType.TEXT_LARGE, ModelType.IMAGE))
    chat = make_chat(runtime)
    await chat.send("draw a cat")
    [sent] = chat.sent
    assert sent.attachments[0].data == b"PNG" and sent.attachments[0].kind == "image"
    assert model.calls[-1][1]["prompt"] == "draw a cat"


async def test_generate_image_is_not_offered_without_an_image_model(sqlite_store, tmp_path, model):
    connector = Plugin(name="test-connector", priority=Priority.PLATFORM, services=[RecordingConnector])
    runtime = await _runtime(sqlite_store, tmp_path, model, connector)
    await make_chat(runtime).send("hi")
    assert "GENERATE_IMAGE" not in model.prompts(ModelType.TEXT_LARGE)[0]
    assert "MUTE_ROOM" in model.prompts(ModelType.TEXT_LARGE)[0]


async def test_update_entity_remembers_the_user(sqlite_store, tmp_path, model):
    model.script(ModelType.TEXT_LARGE, xml_reply("Nice to meet you, Robin!", "REPLY,UPDATE_ENTITY"))
    model.script(ModelType.TEXT_SMALL, json.dumps({"name": "Robin", "profile": {"city": "Lisbon"}}))
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    await chat.send("call me Robin, I live in Lisbon")
    entity = await sqlite_store.get_entity(chat.user.id)
    assert "Robin" in entity.names and entity.metadata["preferred_name"] == "Robin"
    assert entity.metadata["profile"] == {"city": "Lisbon"}
    assert (await runtime.entity_names({chat.user.id}))[chat.user.id] == "Robin"
    assert [c.text for c in chat.sent] == ["Nice to meet you, Robin!"]


class RecordingConnector(Connector):
    source = "test"
    delivered: list[tuple[str, str]] = []
    owners: set[str] = {"Sam"}  # by the sender's entity name: the platform vouches for them

    def sender_id(self, message):
        return next((e.names[0] for e in self.runtime.room_entities(message.room_id)
                     if e.id == message.entity_id), None)

    async def is_owner(self, message) -> bool:
        return self.sender_id(message) in self.owners

    @property
    def connected(self) -> bool:
        return True

    async def send_to_room(self, room: Room, content: Content) -> list[str]:
        self.delivered.append((room.name, content.text))
        return []


async def test_send_message_reaches_another_room(sqlite_store, tmp_path, model):
    RecordingConnector.delivered = []
    connector = Plugin(name="test-connector", priority=Priority.PLATFORM, services=[RecordingConnector])
    runtime = await _runtime(sqlite_store, tmp_path, model, connector)
    await make_chat(runtime, "general", channel=ChannelType.GROUP).send("hi all", mention=True)
    model.script(ModelType.TEXT_LARGE, xml_reply("Done, I told them.", "SEND_MESSAGE"))
    model.script(ModelType.TEXT_SMALL, json.dumps({"room": "general", "text": "Meeting moved to 3pm"}))
    chat = make_chat(runtime, "dm")
    await chat.send("tell general the meeting moved to 3pm")
    assert RecordingConnector.delivered == [("general", "Meeting moved to 3pm")]
    assert chat.sent[-1].text == "Done, I told them."


async def test_reflection_stores_facts_that_facts_provider_recalls(sqlite_store, tmp_path, model):
    model.defaults[ModelType.TEXT_SMALL] = json.dumps({
        "facts": [{"about": "Sam", "claim": "Sam has a dog named Biscuit"}],
        "relationships": [],
    })
    runtime = await _runtime(sqlite_store, tmp_path, model, reflection_interval=2)
    chat = make_chat(runtime)
    await chat.send("I have a dog named Biscuit")
    await chat.send("he is a corgi")
    for _ in range(50):  # evaluators run in the background, after the reply
        facts = await sqlite_store.get_memories(agent_id=runtime.agent_id, room_id=chat.room.id,
                                                type=MemoryType.FACT)
        if facts:
            break
        await asyncio.sleep(0.02)
    assert [f.content.text for f in facts] == ["Sam has a dog named Biscuit"]
    assert facts[0].entity_id == chat.user.id
    await chat.send("what is my dog called?")
    assert "Sam has a dog named Biscuit" in model.prompts(ModelType.TEXT_LARGE)[-1]


async def test_reflection_stores_relationships(sqlite_store, tmp_path, model):
    model.defaults[ModelType.TEXT_SMALL] = json.dumps({
        "facts": [], "relationships": [{"source": "Sam", "target": "Kim", "tags": ["sibling"]}],
    })
    runtime = await _runtime(sqlite_store, tmp_path, model, reflection_interval=2)
    sam = make_chat(runtime, "g", channel=ChannelType.GROUP)
    kim = make_chat(runtime, "g", channel=ChannelType.GROUP, user="Kim")
    await sam.send("Kim is my sister", mention=True)
    await kim.send("yes Sam is my brother", mention=True)
    for _ in range(50):
        rels = await sqlite_store.get_relationships(agent_id=runtime.agent_id, entity_id=sam.user.id)
        if rels:
            break
        await asyncio.sleep(0.02)
    assert [(r.source_entity_id, r.target_entity_id, r.tags) for r in rels] == [
        (sam.user.id, kim.user.id, ["sibling"])]


async def test_character_template_override_is_used(sqlite_store, tmp_path, model):
    character = make_character(templates={"messageHandlerTemplate": "CUSTOM {{agentName}} :: {{providers}}"})
    runtime = await start_runtime(sqlite_store, make_settings(tmp_path), model, character=character)
    await make_chat(runtime).send("hi")
    assert model.prompts(ModelType.TEXT_LARGE)[0].startswith("CUSTOM Ava ::")


async def test_requested_dynamic_provider_is_composed_before_the_reply(sqlite_store, tmp_path, model):
    model.script(ModelType.TEXT_LARGE, xml_reply("let me look", "REPLY", providers="WORLD"),
                 xml_reply("You are in world room1."))
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    await chat.send("where am I?", mention=True)
    assert "# World: world room1" in model.prompts(ModelType.TEXT_LARGE)[1]
    assert [c.text for c in chat.sent] == ["You are in world room1."]


async def test_rate_limit_says_slow_down_once(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model, rate_limit_per_minute=2)
    chat = make_chat(runtime)
    statuses = [(await chat.send(f"m{i}")).status for i in range(5)]
    assert statuses == ["completed", "completed", "rate_limited", "rate_limited", "rate_limited"]
    slow = [c for c in chat.sent if "slow down" in c.text]
    assert len(slow) == 1
    assert await sqlite_store.count_memories(agent_id=runtime.agent_id, room_id=chat.room.id) >= 5


async def test_prompt_is_lean_with_full_history(sqlite_store, tmp_path, model):
    from bot.character import load_character

    character = load_character(Path(__file__).parents[1] / "characters" / "default.json").character
    runtime = await start_runtime(sqlite_store, make_settings(tmp_path), model, character=character)
    chat = make_chat(runtime)
    for i in range(20):
        await chat.send(f"message number {i} about the weekend plans")
    prompt = model.prompts(ModelType.TEXT_LARGE)[-1]
    assert "message number 19" in prompt and "message number 4" in prompt
    assert len(prompt) < 5000


async def test_small_local_models_get_chat_turns_and_plain_text(sqlite_store, tmp_path, model):
    from bot.runtime import AgentRuntime
    from plugins.bootstrap import bootstrap_plugin

    model.script(ModelType.TEXT_LARGE, "Ava: Hi Sam, nice to meet you!\nSam: thanks")
    runtime = AgentRuntime(make_character(), make_settings(tmp_path), sqlite_store,
                           [bootstrap_plugin(), model.plugin(structured=False)])
    await runtime.initialize()
    chat = make_chat(runtime)
    await chat.send("hello")
    assert [c.text for c in chat.sent] == ["Hi Sam, nice to meet you!"]
    [(_, params)] = model.calls
    assert params["messages"] == [{"role": "user", "content": "hello"}]
    assert "<response>" not in params["system"] and "Ava is a helpful test character." in params["system"]


async def test_prepare_enriches_the_stored_message_before_its_run(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    await runtime.ensure_connection(chat.user, chat.room)
    seen_stored: list[str] = []

    async def transcribe(memory):
        seen_stored.append((await sqlite_store.get_memory(memory.id)).content.text)
        return memory.model_copy(update={"content": memory.content.model_copy(update={"text": "voice transcript"})})

    ticket = await runtime.receive_message(chat.message(""), chat.callback, prepare=transcribe)
    assert (await ticket.outcome).status == "completed"
    assert seen_stored == [""], "stored before the slow enrichment ran"
    assert (await sqlite_store.get_memory(ticket.message.id)).content.text == "voice transcript"
    assert "voice transcript" in model.prompts(ModelType.TEXT_LARGE)[0]


async def test_failed_prepare_still_answers_the_message(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    await runtime.ensure_connection(chat.user, chat.room)

    async def broken(memory):
        raise RuntimeError("transcription service down")

    ticket = await runtime.receive_message(chat.message("hello"), chat.callback, prepare=broken)
    assert (await ticket.outcome).status == "completed" and len(chat.sent) == 1


async def test_rate_limit_never_scolds_people_not_talking_to_the_bot(sqlite_store, tmp_path, model):
    runtime = await _runtime(sqlite_store, tmp_path, model, rate_limit_per_minute=2,
                             should_respond_mode=ShouldRespondMode.MENTIONS)
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    statuses = [(await chat.send(f"chatter {i}")).status for i in range(4)]
    assert statuses == ["ignored", "ignored", "rate_limited", "rate_limited"]
    assert chat.sent == []


async def test_shutdown_leaves_unfinished_and_late_messages_for_the_next_start(sqlite_store, tmp_path, model):
    """Runs cut off by the drain timeout and messages arriving after it stay unfinished in the
    store, in order, with no reply stored: the next start answers them (tests/test_resume.py)."""
    from plugins.bootstrap import ShuttingDown

    never, called = asyncio.Event(), asyncio.Event()

    async def hang(params):
        called.set()
        await never.wait()

    model.defaults[ModelType.TEXT_LARGE] = hang
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    await runtime.ensure_connection(chat.user, chat.room)
    running = await runtime.receive_message(chat.message("first"), chat.callback)
    queued = await runtime.receive_message(chat.message("second"), chat.callback)
    await called.wait()  # the first run is in its model call
    await runtime.message_handler.drain(0.2)
    assert (await running.outcome).status == "error" and (await queued.outcome).status == "error"
    late = chat.message("too late")
    with pytest.raises(ShuttingDown):
        await runtime.receive_message(late, chat.callback)
    await runtime.stop()
    pending = await sqlite_store.unfinished_messages(runtime.agent_id, since=0)
    assert [m.id for m in pending] == [running.message.id, queued.message.id, late.id]  # in order
    rows = await sqlite_store.get_memories(agent_id=runtime.agent_id, room_id=chat.room.id, count=None)
    assert not [r for r in rows if r.entity_id == runtime.agent_id] and chat.sent == []


async def test_superseded_voice_note_is_still_transcribed_for_the_next_run(sqlite_store, tmp_path, model):
    gate = gated(model)
    model.defaults[ModelType.TEXT_SMALL] = "RESPOND"
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    await runtime.ensure_connection(chat.user, chat.room)

    async def transcribe(memory):
        return memory.model_copy(update={"content": memory.content.model_copy(update={"text": "pizza tonight?"})})

    first = await runtime.receive_message(chat.message("ava?", mention=True), chat.callback)
    voice = await runtime.receive_message(chat.message(""), chat.callback, prepare=transcribe)
    last = await runtime.receive_message(chat.message("anyone?"), chat.callback)
    gate.set()
    assert [(await t.outcome).status for t in (first, voice, last)] == ["completed", "ignored", "completed"]
    assert "pizza tonight?" in model.prompts(ModelType.TEXT_SMALL)[0]


@pytest.mark.parametrize("actions", ["REPLY,MUTE_ROOM", "MUTE_ROOM,REPLY", "NONE,FOLLOW_ROOM,UPDATE_ENTITY"])
async def test_reply_with_other_actions_is_sent_once(sqlite_store, tmp_path, model, actions):
    model.script(ModelType.TEXT_LARGE, xml_reply("Sure thing.", actions))
    model.defaults[ModelType.TEXT_SMALL] = json.dumps({"name": "", "profile": {}})
    connector = Plugin(name="test-connector", priority=Priority.PLATFORM, services=[RecordingConnector])
    runtime = await _runtime(sqlite_store, tmp_path, model, connector)  # Sam may change the room's state
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    await chat.send("ava, a request", mention=True)
    assert [c.text for c in chat.sent] == ["Sure thing."]


async def test_reply_with_buttons_is_one_message(sqlite_store, tmp_path, model):
    model.script(ModelType.TEXT_LARGE, xml_reply("Pick one:", "REPLY,CHOOSE_OPTION", options="A|B"))
    runtime = await _runtime(sqlite_store, tmp_path, model)
    chat = make_chat(runtime)
    await chat.send("choices?")
    [sent] = chat.sent
    assert sent.text == "Pick one:" and len(sent.buttons) == 2


async def test_a_plain_fallback_gets_chat_turns_never_the_template(sqlite_store, tmp_path, model):
    """The first model fails; the local model behind it must not be handed the XML template."""
    from bot.runtime import AgentRuntime
    from plugins.bootstrap import bootstrap_plugin

    local = ScriptedModel()
    local.script(ModelType.TEXT_LARGE, "Hi from the local model.")
    model.script(ModelType.TEXT_LARGE, RuntimeError("api unreachable"))
    runtime = AgentRuntime(make_character(), make_settings(tmp_path), sqlite_store,
                           [bootstrap_plugin(), model.plugin(name="api"),
                            local.plugin(ModelType.TEXT_LARGE, name="local", structured=False)])
    await runtime.initialize()
    chat = make_chat(runtime)
    await chat.send("hello")
    assert [c.text for c in chat.sent] == ["Hi from the local model."]
    [(_, params)] = local.calls
    assert params["messages"][-1] == {"role": "user", "content": "hello"}
    assert "<response>" not in params["system"] and "<response>" not in str(params["messages"])


async def test_every_model_failing_is_one_line_and_no_apology_in_an_unaddressed_group(
        sqlite_store, tmp_path, model, caplog):
    model.defaults[ModelType.TEXT_SMALL] = RuntimeError("HTTP 500")
    model.defaults[ModelType.TEXT_LARGE] = RuntimeError("HTTP 500")
    runtime = await _runtime(sqlite_store, tmp_path, model)
    group = make_chat(runtime, "group", ChannelType.GROUP)
    for text in ("lunch anyone?", "I'm in", "same"):
        assert (await group.send(text)).status == "error"
    assert group.sent == []  # nobody addressed the bot: no apology in the group
    assert (await group.send("Ava, are you there?")).status == "error"
    assert [c.text for c in group.sent] == [runtime.settings.error_reply]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 4 and all(r.exc_info is None for r in errors)
    assert all("every model for" in r.getMessage() and "HTTP 500" in r.getMessage() for r in errors)
    assert "Traceback" not in caplog.text


async def test_plain_models_get_the_speakers_earlier_statement_with_a_question(sqlite_store, tmp_path, model):
    from bot.runtime import AgentRuntime
    from plugins.bootstrap import bootstrap_plugin

    model.defaults[ModelType.TEXT_LARGE] = "ok"
    runtime = AgentRuntime(make_character(), make_settings(tmp_path), sqlite_store,
                           [bootstrap_plugin(), model.plugin(structured=False)])
    await runtime.initialize()
    chat = make_chat(runtime)
    await chat.send("My dog is called Rex.")
    for i in range(12):
        await chat.send(f"small talk number {i}")
    await chat.send("What is my dog called?")
    last = model.calls[-1][1]["messages"][-1]["content"]
    assert last.startswith("Context: My dog is called Rex.") and last.endswith(
        "Question: What is my dog called?\nAnswer from the context.")
    assert all("Rex" not in t["content"] for t in model.calls[-1][1]["messages"][:-1]), "too far back for turns"


async def test_a_rooms_queue_holds_addressed_messages_and_at_most_one_other(sqlite_store, tmp_path, model):
    """While a slow run holds the room, group chatter collapses as it arrives: the queue stays
    short, every addressed message is kept, and the last chatter is still decided."""
    gate, runtime, chat, first = await _group_room_held_by_a_mention(sqlite_store, tmp_path, model)
    tickets = []
    for i in range(100):
        tickets.append(await runtime.receive_message(chat.message(f"chat {i}"), chat.callback))
        if i % 25 == 0:
            tickets.append(await runtime.receive_message(chat.message(f"ava, question {i}", mention=True),
                                                         chat.callback))
    assert runtime.message_handler.queue_depth <= 4 + 1  # 4 addressed + the newest chatter
    gate.set()
    assert (await first.outcome).status == "completed"
    outcomes = {t.message.content.text: (await t.outcome).status for t in tickets}
    assert [text for text, status in outcomes.items() if status == "completed"] == [
        "ava, question 0", "ava, question 25", "ava, question 50", "ava, question 75", "chat 99"]
    decisions = [p for p in model.prompts(ModelType.TEXT_SMALL) if "RESPOND, IGNORE or STOP" in p]
    assert len(decisions) == 1 and "chat 99" in decisions[0]  # one decision, for the newest chatter

"""The Discord connector end to end: real discord.py against the fake Discord on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.character import load_character
from bot.ids import create_unique_uuid
from bot.settings import Settings
from connectors.discord_connector import DiscordConnector
from tests.fakes.discord_api import TOKEN, FakeDiscord
from tests.fakes.openai_server import FakeOpenAI

GENERAL, OTHER, VOICE, THREAD, DM = 600, 601, 602, 603, 700
ALICE = FakeDiscord.user(160_000_000_000_000_042, "alice")
REPO_ROOT = str(Path(__file__).resolve().parents[1])
OTHER_BOT = FakeDiscord.user(160_000_000_000_000_043, "otherbot", bot=True)


def xml(text: str, actions: str = "REPLY", extra: str = "") -> str:
    return f"<response><thought>t</thought><actions>{actions}</actions>{extra}<text>{text}</text></response>"


@pytest.fixture(autouse=True)
def fast_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DiscordConnector, "guild_ready_timeout", 0.05)


@pytest.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    fake.add_channel(GENERAL, "general")
    fake.add_channel(OTHER, "other")
    fake.add_channel(VOICE, "Lounge", kind=2)
    fake.add_channel(THREAD, "a-thread", kind=11, parent_id=GENERAL)
    fake.members.append(fake.member(ALICE))
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(reply=xml("Hello from Test"))
    await fake.start()
    yield fake
    await fake.stop()


class Bot:
    """The whole app in-process, restartable on the same data directory."""

    def __init__(self, tmp_path: Path, fake: FakeDiscord, model: FakeOpenAI, **overrides: Any) -> None:
        character = tmp_path / "character.json"
        character.write_text(json.dumps({"name": "Test", "bio": "A test character."}))
        self.settings = Settings(
            _env_file=None, character_path=character, data_dir=tmp_path / "data", port=0,
            openai_api_key="sk-test-discord", openai_base_url=model.base_url, model_providers=["openai"],
            discord_api_token=TOKEN, discord_api_base=fake.api_base, discord_gateway_url=fake.gateway_url,
            should_respond_mode="mentions", **{"streaming": "off", **overrides},  # streaming: test_discord_streaming
        )
        self.fake = fake
        self.app: App | None = None

    async def start(self) -> App:
        self.app = App(self.settings, load_character(self.settings.character_path).character)
        await self.app.start()
        await self.fake.wait_connected()
        await self.fake.wait_for(lambda: self.connector.connected)
        return self.app

    @property
    def connector(self) -> DiscordConnector:
        assert self.app is not None
        connector = self.app.runtime.connector_for("discord")
        assert isinstance(connector, DiscordConnector)
        return connector

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None


@pytest.fixture
async def bot(tmp_path: Path, discord_fake: FakeDiscord, model: FakeOpenAI) -> AsyncIterator[Bot]:
    runner = Bot(tmp_path, discord_fake, model)
    await runner.start()
    yield runner
    await runner.stop()


async def say(fake: FakeDiscord, channel: int, text: str, author: dict = ALICE, **options: Any) -> dict:
    message = fake.message(channel, author, text, **options)
    await fake.dispatch("MESSAGE_CREATE", message)
    return message


async def quiet(bot: Bot, seconds: float = 0.4) -> None:
    """Let any (wrong) reply arrive, then wait for the pipeline to settle."""
    await asyncio.sleep(seconds)
    assert bot.app is not None
    dispatcher = bot.app.runtime.message_handler
    await bot.fake.wait_for(lambda: dispatcher.active_rooms == 0 and dispatcher.queue_depth == 0)


async def ask(fake: FakeDiscord, question: str) -> None:
    """Alice runs /ask in #general (the commands synced to the test guild)."""
    command = next(c for c in fake.commands[str(fake.guild_id)] if c["name"] == "ask")
    await fake.dispatch("INTERACTION_CREATE", fake.interaction(2, ALICE, GENERAL, {
        "id": command["id"], "name": "ask", "type": 1,
        "options": [{"name": "question", "type": 3, "value": question}]}))


# Messages ----------------------------------------------------------------------------------------------
async def test_mention_gets_one_reply_to_the_message(bot: Bot, discord_fake: FakeDiscord) -> None:
    sent = await say(discord_fake, GENERAL, f"<@{discord_fake.bot['id']}> hi there", mentions=[discord_fake.bot])
    [reply] = await discord_fake.wait_for_messages(1)
    body = reply["sent_body"]
    assert body["content"] == "Hello from Test"
    assert str(body["message_reference"]["message_id"]) == sent["id"]
    assert body["allowed_mentions"]["parse"] == ["users"]  # never @everyone or roles
    assert any(r.path.endswith(f"/channels/{GENERAL}/typing") for r in discord_fake.requests)
    memory_id = create_unique_uuid(bot.app.runtime.agent_id, f"discord:msg:{GENERAL}:{sent['id']}")
    stored = await bot.app.runtime.store.get_memory(memory_id)
    assert stored is not None and stored.content.text == "@Parley hi there"  # mention token → name
    assert stored.content.mention_context.is_mention
    await quiet(bot)
    assert len(discord_fake.messages) == 1


async def test_unaddressed_message_is_stored_but_not_answered(bot: Bot, discord_fake: FakeDiscord) -> None:
    sent = await say(discord_fake, GENERAL, "just chatting among ourselves")
    await quiet(bot)
    assert discord_fake.messages == []
    memory_id = create_unique_uuid(bot.app.runtime.agent_id, f"discord:msg:{GENERAL}:{sent['id']}")
    assert await bot.app.runtime.store.get_memory(memory_id) is not None


async def test_reply_to_the_bot_counts_as_addressed(bot: Bot, discord_fake: FakeDiscord) -> None:
    await say(discord_fake, GENERAL, "hey", mentions=[discord_fake.bot])
    [first] = await discord_fake.wait_for_messages(1)
    bot_message = {k: v for k, v in first.items() if not k.startswith("sent_")}
    reply = await say(discord_fake, GENERAL, "and another thing", reply_to=bot_message)
    messages = await discord_fake.wait_for_messages(2)
    assert str(messages[1]["sent_body"]["message_reference"]["message_id"]) == reply["id"]
    runtime = bot.app.runtime
    stored = await runtime.store.get_memory(create_unique_uuid(runtime.agent_id, f"discord:msg:{GENERAL}:{reply['id']}"))
    assert stored.content.mention_context.is_reply
    # The stored bot reply has the id the connector returned, so in_reply_to resolves to it.
    assert stored.content.in_reply_to == create_unique_uuid(runtime.agent_id, f"discord:msg:{GENERAL}:{first['id']}")
    assert await runtime.store.get_memory(stored.content.in_reply_to) is not None


async def test_edit_updates_the_stored_message_without_a_second_reply(bot: Bot, discord_fake: FakeDiscord) -> None:
    sent = await say(discord_fake, GENERAL, "hey, meet at 5?", mentions=[discord_fake.bot])
    await discord_fake.wait_for_messages(1)
    await discord_fake.dispatch("MESSAGE_UPDATE", {**sent, "content": "hey, meet at 6?",
                                                   "edited_timestamp": sent["timestamp"]})
    runtime = bot.app.runtime
    memory_id = create_unique_uuid(runtime.agent_id, f"discord:msg:{GENERAL}:{sent['id']}")

    async def edited() -> bool:
        stored = await runtime.store.get_memory(memory_id)
        return stored.content.text == "hey, meet at 6?"

    for _ in range(100):
        if await edited():
            break
        await asyncio.sleep(0.02)
    assert await edited()
    await quiet(bot)
    assert len(discord_fake.messages) == 1


async def test_dm_is_answered_without_mention(bot: Bot, discord_fake: FakeDiscord) -> None:
    await discord_fake.dispatch("CHANNEL_CREATE", {"id": str(DM), "type": 1, "recipients": [ALICE],
                                                   "last_message_id": None})
    await say(discord_fake, DM, "hello in private", guild=False)
    [reply] = await discord_fake.wait_for_messages(1)
    assert reply["channel_id"] == str(DM)
    room = await bot.app.runtime.get_room(create_unique_uuid(bot.app.runtime.agent_id, f"discord:channel:{DM}"))
    assert room is not None and room.type == "DM" and room.world_id is None


async def test_thread_is_its_own_room_and_inherits_the_allowlist(
    tmp_path: Path, discord_fake: FakeDiscord, model: FakeOpenAI
) -> None:
    runner = Bot(tmp_path, discord_fake, model, channel_ids=[GENERAL])
    await runner.start()
    try:
        await say(discord_fake, THREAD, "in the thread", mentions=[discord_fake.bot])
        await say(discord_fake, OTHER, "not allowlisted", mentions=[discord_fake.bot])
        [reply] = await discord_fake.wait_for_messages(1)
        assert reply["channel_id"] == str(THREAD)
        await quiet(runner)
        assert len(discord_fake.messages) == 1
        runtime = runner.app.runtime
        room = await runtime.get_room(create_unique_uuid(runtime.agent_id, f"discord:channel:{THREAD}"))
        assert room.type == "THREAD" and room.metadata["parent_id"] == str(GENERAL)
        assert room.world_id == create_unique_uuid(runtime.agent_id, f"discord:guild:{discord_fake.guild_id}")
    finally:
        await runner.stop()


async def test_bots_and_itself_are_ignored(bot: Bot, discord_fake: FakeDiscord) -> None:
    other = await say(discord_fake, GENERAL, "I am a bot", author=OTHER_BOT, mentions=[discord_fake.bot])
    await say(discord_fake, GENERAL, "my own words", author=discord_fake.bot)
    await quiet(bot)
    assert discord_fake.messages == []
    runtime = bot.app.runtime
    assert await runtime.store.get_memory(
        create_unique_uuid(runtime.agent_id, f"discord:msg:{GENERAL}:{other['id']}")) is None


async def test_long_reply_is_chunked_with_balanced_code_fences(
    bot: Bot, discord_fake: FakeDiscord, model: FakeOpenAI
) -> None:
    code = "\n".join(f"    value_{i} = compute({i})  # step {i}" for i in range(90))
    text = ("Here is the plan. " * 60) + "\n```python\n" + code + "\n```\n" + ("And that is all. " * 60)
    assert len(text) > 5000
    model.script(xml(text))
    sent = await say(discord_fake, GENERAL, "show me code", mentions=[discord_fake.bot])
    await discord_fake.wait_for(lambda: sum(len(m["content"]) for m in discord_fake.messages) >= 5000)
    await quiet(bot)
    chunks = [m["sent_body"]["content"] for m in discord_fake.messages]
    assert len(chunks) >= 3 and all(len(c) <= 2000 for c in chunks)
    assert all(c.count("```") % 2 == 0 for c in chunks)
    assert sum("```python" in c for c in chunks) >= 2  # the block was reopened in the next chunk
    assert str(discord_fake.messages[0]["sent_body"]["message_reference"]["message_id"]) == sent["id"]
    assert all("message_reference" not in m["sent_body"] for m in discord_fake.messages[1:])
    joined = "".join(chunks)
    assert "value_89 = compute(89)" in joined and "value_0 = compute(0)" in joined


# Buttons and slash commands -------------------------------------------------------------------------------
async def test_button_press_round_trip_survives_a_restart(
    tmp_path: Path, discord_fake: FakeDiscord, model: FakeOpenAI
) -> None:
    runner = Bot(tmp_path, discord_fake, model)
    await runner.start()
    try:
        model.script(xml("Pick one", "CHOOSE_OPTION", "<options>red|blue</options>"))
        await say(discord_fake, GENERAL, "give me a choice", mentions=[discord_fake.bot])
        [with_buttons] = await discord_fake.wait_for_messages(1)
        buttons = [c for row in with_buttons["sent_body"]["components"] for c in row["components"]]
        assert [b["label"] for b in buttons] == ["red", "blue"]
        assert all(b["custom_id"].startswith("parley:") and "blue" not in b["custom_id"] for b in buttons)
    finally:
        await runner.stop()
    await discord_fake.drop()

    restarted = Bot(tmp_path, discord_fake, model)
    await restarted.start()
    try:
        model.script(xml("You chose blue"))
        message = {k: v for k, v in with_buttons.items() if not k.startswith("sent_")}
        press = discord_fake.interaction(3, ALICE, GENERAL, {"custom_id": buttons[1]["custom_id"],
                                                            "component_type": 2}, message=message)
        await discord_fake.dispatch("INTERACTION_CREATE", press)
        await discord_fake.wait_for(lambda: discord_fake.interaction_responses)
        assert discord_fake.interaction_responses[0]["type"] == 6  # deferred update: acknowledged at once
        messages = await discord_fake.wait_for_messages(2)
        assert messages[1]["sent_body"]["content"] == "You chose blue"
        assert str(messages[1]["sent_body"]["message_reference"]["message_id"]) == with_buttons["id"]
        runtime = restarted.app.runtime
        pressed = await runtime.store.get_memory(create_unique_uuid(runtime.agent_id,
                                                                    f"discord:interaction:{press['id']}"))
        assert pressed.content.text == "blue"
        assert pressed.content.in_reply_to == create_unique_uuid(
            runtime.agent_id, f"discord:msg:{GENERAL}:{with_buttons['id']}")
        assert "blue" in json.dumps(model.requests[-1].body)  # the value went through the pipeline
    finally:
        await restarted.stop()


async def test_slash_commands_are_synced_to_the_guild_and_ask_answers(
    tmp_path: Path, discord_fake: FakeDiscord, model: FakeOpenAI
) -> None:
    runner = Bot(tmp_path, discord_fake, model, discord_guild_id=discord_fake.guild_id)
    await runner.start()
    try:
        synced = {c["name"] for c in discord_fake.commands[str(discord_fake.guild_id)]}
        assert synced == {"ask", "join", "leave"}
        model.script(xml("Forty-two"))
        await ask(discord_fake, "what is the answer?")
        [answer] = await discord_fake.wait_for_messages(1)
        assert discord_fake.interaction_responses[0]["type"] == 5  # "thinking…" acknowledgement
        assert answer["sent_body"]["content"] == "Forty-two" and "webhook_token" in answer
        assert "what is the answer?" in json.dumps(model.requests[-1].body)
    finally:
        await runner.stop()


async def test_ask_that_gets_no_reply_does_not_leave_thinking_up(
    tmp_path: Path, discord_fake: FakeDiscord, model: FakeOpenAI
) -> None:
    runner = Bot(tmp_path, discord_fake, model, discord_guild_id=discord_fake.guild_id)
    await runner.start()
    try:
        model.script(xml("", actions="IGNORE"))
        await ask(discord_fake, "never mind")
        [settled] = await discord_fake.wait_for_messages(1)
        assert any(r.method == "PATCH" and r.path.endswith("/messages/@original") for r in discord_fake.requests)
        assert settled["sent_body"]["content"] == "I've nothing to add to that one."
    finally:
        await runner.stop()


async def test_shutdown_answers_interactions_with_a_restart_notice(
    tmp_path: Path, discord_fake: FakeDiscord, model: FakeOpenAI, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    from connectors.discord_connector.connector import RESTARTING
    from plugins.bootstrap import ShuttingDown

    runner = Bot(tmp_path, discord_fake, model, discord_guild_id=discord_fake.guild_id)
    await runner.start()
    try:
        runtime = runner.app.runtime
        token = "ab" * 16
        await runtime.store.set_cache(runtime.agent_id, f"button:{token}", {"label": "red", "value": "red"}, 60)

        async def shutting_down(*args: Any, **kwargs: Any) -> Any:
            raise ShuttingDown("shutting down: message stored, not answered")

        monkeypatch.setattr(runtime, "receive_message", shutting_down)
        with caplog.at_level(logging.INFO, logger="connectors.discord_connector.connector"):
            await ask(discord_fake, "still up?")
            [notice] = await discord_fake.wait_for_messages(1)
            assert notice["sent_body"]["content"] == RESTARTING and notice["sent_body"]["flags"] == 64
            assert discord_fake.interaction_responses[0]["type"] == 5
            # The public "thinking…" placeholder is removed, so the notice really is only for the asker.
            assert any(r.method == "DELETE" and r.path.endswith("/messages/@original") for r in discord_fake.requests)

            message = discord_fake.message(GENERAL, discord_fake.bot, "pick")
            custom_id = f"parley:{token}"
            message["components"] = [{"type": 1, "components": [{"type": 2, "style": 1, "label": "red",
                                                                 "custom_id": custom_id}]}]
            await discord_fake.dispatch("INTERACTION_CREATE", discord_fake.interaction(
                3, ALICE, GENERAL, {"custom_id": custom_id, "component_type": 2}, message=message))
            messages = await discord_fake.wait_for_messages(2)
            assert messages[1]["sent_body"]["content"] == RESTARTING and messages[1]["sent_body"]["flags"] == 64
            assert discord_fake.interaction_responses[1]["type"] == 6

            await say(discord_fake, GENERAL, "hello?", mentions=[discord_fake.bot])
            await asyncio.sleep(0.3)
        assert len(discord_fake.messages) == 2
        not_accepted = [r for r in caplog.records if "not accepted" in r.getMessage()]
        assert len(not_accepted) == 3 and all(r.levelno == logging.INFO for r in not_accepted)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("discord")]
    finally:
        await runner.stop()


# Faults -------------------------------------------------------------------------------------------------------
async def test_429_with_via_is_retried_and_403_is_logged_once(
    bot: Bot, discord_fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    discord_fake.fail("POST", rf"/channels/{GENERAL}/messages$", 429)
    await say(discord_fake, GENERAL, "hi", mentions=[discord_fake.bot])
    [reply] = await discord_fake.wait_for_messages(1)
    posts = [r for r in discord_fake.requests if r.method == "POST" and r.path.endswith(f"{GENERAL}/messages")]
    assert len(posts) == 2 and reply["sent_body"]["content"] == "Hello from Test"

    discord_fake.fail("POST", rf"/channels/{OTHER}/messages$", 403, times=2)
    with caplog.at_level(logging.WARNING, logger="connectors.discord_connector.connector"):
        for text in ("one", "two"):
            await say(discord_fake, OTHER, text, mentions=[discord_fake.bot])
        await quiet(bot)
    assert sum("no permission to post" in r.getMessage() for r in caplog.records) == 1
    assert bot.connector.connected  # still serving
    await say(discord_fake, GENERAL, "still there?", mentions=[discord_fake.bot])
    await discord_fake.wait_for_messages(2)


async def test_failure_after_the_first_chunk_keeps_the_sent_part_without_an_apology(
    bot: Bot, discord_fake: FakeDiscord, model: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    text = "\n\n".join(f"Paragraph {i}: " + "words " * 300 for i in range(3))
    assert len(text) > 4000
    model.script(xml(text))
    discord_fake.fail("POST", rf"/channels/{GENERAL}/messages$", 400, after=1)  # the 2nd message POST
    with caplog.at_level(logging.WARNING, logger="connectors.discord_connector.connector"):
        sent = await say(discord_fake, GENERAL, "tell me everything", mentions=[discord_fake.bot])
        [first] = await discord_fake.wait_for_messages(1)
        await quiet(bot)
    posts = [r for r in discord_fake.requests if r.method == "POST" and r.path.endswith(f"{GENERAL}/messages")]
    assert len(posts) == 2  # the first chunk went out, the second failed, the third was not tried
    assert len(discord_fake.messages) == 1 and first["sent_body"]["content"].startswith("Paragraph 0:")
    assert str(first["sent_body"]["message_reference"]["message_id"]) == sent["id"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("message 2 of 3" in w for w in warnings) == 1, warnings
    # The part that was sent is the stored reply, under the key of its first message.
    runtime = bot.app.runtime
    reply = await runtime.store.get_memory(create_unique_uuid(runtime.agent_id, f"discord:msg:{GENERAL}:{first['id']}"))
    assert reply is not None and reply.entity_id == runtime.agent_id


async def test_first_chunk_failure_gets_one_apology(bot: Bot, discord_fake: FakeDiscord) -> None:
    discord_fake.fail("POST", rf"/channels/{GENERAL}/messages$", 400)
    await say(discord_fake, GENERAL, "hello?", mentions=[discord_fake.bot])
    [apology] = await discord_fake.wait_for_messages(1)
    await quiet(bot)
    assert len(discord_fake.messages) == 1 and apology["sent_body"]["content"] != "Hello from Test"


async def test_refused_command_sync_does_not_stop_the_bot(
    tmp_path: Path, discord_fake: FakeDiscord, model: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    discord_fake.fail("PUT", rf"/guilds/{discord_fake.guild_id}/commands$", 403)
    runner = Bot(tmp_path, discord_fake, model, discord_guild_id=discord_fake.guild_id)
    with caplog.at_level(logging.WARNING, logger="connectors.discord_connector.commands"):
        await runner.start()
    try:
        assert discord_fake.commands == {}
        warnings = [r.getMessage() for r in caplog.records if r.name == "connectors.discord_connector.commands"]
        assert len(warnings) == 1
        assert "applications.commands" in warnings[0] and "DISCORD_GUILD_ID" in warnings[0]
        await say(discord_fake, GENERAL, "are you there?", mentions=[discord_fake.bot])
        [reply] = await discord_fake.wait_for_messages(1)
        assert reply["sent_body"]["content"] == "Hello from Test"
    finally:
        await runner.stop()


async def test_dropped_socket_resumes_without_duplicate_reply(bot: Bot, discord_fake: FakeDiscord) -> None:
    first = await say(discord_fake, GENERAL, "before the drop", mentions=[discord_fake.bot])
    await discord_fake.wait_for_messages(1)
    await discord_fake.drop()
    # Sent while the socket is down: delivered by the RESUME replay.
    await say(discord_fake, GENERAL, "during the drop", mentions=[discord_fake.bot])
    await discord_fake.wait_for(lambda: discord_fake.resumes == 1)
    await discord_fake.wait_for_messages(2)
    # Discord may redeliver an event around a reconnect; it must not be answered twice.
    await discord_fake.dispatch("MESSAGE_CREATE", first)
    await quiet(bot)
    assert len(discord_fake.messages) == 2 and discord_fake.identifies == 1


async def test_invalidated_session_reidentifies_without_duplicate_reply(bot: Bot, discord_fake: FakeDiscord) -> None:
    first = await say(discord_fake, GENERAL, "hello", mentions=[discord_fake.bot])
    await discord_fake.wait_for_messages(1)
    discord_fake.invalidate_next_resume = True
    await discord_fake.drop()
    await discord_fake.wait_for(lambda: discord_fake.identifies == 2, timeout=15)
    await discord_fake.wait_connected()
    await discord_fake.dispatch("MESSAGE_CREATE", first)
    await say(discord_fake, GENERAL, "after re-identify", mentions=[discord_fake.bot])
    await discord_fake.wait_for_messages(2)
    await quiet(bot)
    assert len(discord_fake.messages) == 2


# Attachments ---------------------------------------------------------------------------------------------
async def test_image_in_is_described_and_file_out_is_uploaded(bot: Bot, discord_fake: FakeDiscord) -> None:
    from bot.types import Attachment, Content
    from tests.fakes.openai_server import tiny_png

    image = discord_fake.add_file("photo.png", tiny_png(), "image/png")
    sent = await say(discord_fake, GENERAL, "look at this", mentions=[discord_fake.bot], attachments=[image])
    await discord_fake.wait_for_messages(1)
    runtime = bot.app.runtime
    stored = await runtime.store.get_memory(create_unique_uuid(runtime.agent_id, f"discord:msg:{GENERAL}:{sent['id']}"))
    [attachment] = stored.content.attachments
    assert attachment.kind == "image" and attachment.description == "A small solid red square."

    channel = bot.connector.client.get_channel(GENERAL)
    keys = await bot.connector.deliver(channel, Content(text="Here it is", attachments=[
        Attachment(id="img1", kind="image", title="drawing.png", data=b"\x89PNG fake bytes")]), channel.send)
    messages = await discord_fake.wait_for_messages(2)
    assert messages[1]["sent_files"] == [("drawing.png", b"\x89PNG fake bytes")]
    assert keys == [f"discord:msg:{GENERAL}:{messages[1]['id']}"]


def image_requests(model: FakeOpenAI) -> int:
    from tests.fakes.openai_server import has_image

    return sum(has_image(r.body.get("messages", [])) for r in model.requests_to("/chat/completions"))


async def test_message_is_stored_before_its_image_is_described_and_a_replay_is_not_described_again(
    bot: Bot, discord_fake: FakeDiscord, model: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.types import ModelType
    from tests.fakes.openai_server import tiny_png

    runtime = bot.app.runtime
    use_model, gate = runtime.use_model, asyncio.Event()

    async def slow_description(model_type: ModelType, params: dict[str, Any], **options: Any) -> Any:
        if model_type is ModelType.IMAGE_DESCRIPTION:
            await gate.wait()
        return await use_model(model_type, params, **options)

    monkeypatch.setattr(runtime, "use_model", slow_description)
    image = discord_fake.add_file("slow.png", tiny_png(), "image/png")
    sent = await say(discord_fake, GENERAL, "what is this?", mentions=[discord_fake.bot], attachments=[image])
    memory_id = create_unique_uuid(runtime.agent_id, f"discord:msg:{GENERAL}:{sent['id']}")
    stored = None
    for _ in range(200):  # stored while the description model is still busy
        if (stored := await runtime.store.get_memory(memory_id)) is not None:
            break
        await asyncio.sleep(0.01)
    assert stored is not None and discord_fake.messages == []
    [noted] = stored.content.attachments
    assert noted.kind == "image" and noted.title == "slow.png" and noted.description is None
    gate.set()
    await discord_fake.wait_for_messages(1)
    described = await runtime.store.get_memory(memory_id)
    assert described.content.attachments[0].description == "A small solid red square."
    assert described.content.text == "what is this?"
    assert image_requests(model) == 1

    await discord_fake.dispatch("MESSAGE_CREATE", sent)  # redelivered around a reconnect
    await quiet(bot)
    assert image_requests(model) == 1 and len(discord_fake.messages) == 1


async def test_failing_description_model_does_not_lose_the_message(
    bot: Bot, discord_fake: FakeDiscord, model: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.fakes.openai_server import Status, tiny_png

    model.script(Status(400, body={"error": {"message": "image rejected", "type": "invalid_request_error"}}))
    image = discord_fake.add_file("broken.png", tiny_png(), "image/png")
    with caplog.at_level(logging.WARNING, logger="connectors.discord_connector.events"):
        sent = await say(discord_fake, GENERAL, "look", mentions=[discord_fake.bot], attachments=[image])
        [reply] = await discord_fake.wait_for_messages(1)
        await quiet(bot)
    assert reply["sent_body"]["content"] == "Hello from Test"
    assert str(reply["sent_body"]["message_reference"]["message_id"]) == sent["id"]
    assert len(discord_fake.messages) == 1  # answered once, no apology
    runtime = bot.app.runtime
    stored = await runtime.store.get_memory(create_unique_uuid(runtime.agent_id, f"discord:msg:{GENERAL}:{sent['id']}"))
    assert stored is not None and stored.content.text == "look"
    [attachment] = stored.content.attachments
    assert attachment.kind == "image" and attachment.title == "broken.png" and attachment.description is None
    assert any("could not process attachment broken.png" in r.getMessage() for r in caplog.records)


# The real process ------------------------------------------------------------------------------------------
async def test_python_m_bot_answers_on_discord_and_never_logs_the_token(
    tmp_path: Path, discord_fake: FakeDiscord, model: FakeOpenAI
) -> None:
    import os
    import signal
    import sys

    character = tmp_path / "character.json"
    character.write_text(json.dumps({"name": "Test", "bio": "A test character."}))
    env = {**os.environ, "CHARACTER_PATH": str(character), "DATA_DIR": str(tmp_path / "data"), "PORT": "0",
           "OPENAI_API_KEY": "sk-test-subprocess", "OPENAI_BASE_URL": model.base_url, "MODEL_PROVIDERS": "openai",
           "DISCORD_API_TOKEN": TOKEN, "DISCORD_API_BASE": discord_fake.api_base,
           "DISCORD_GATEWAY_URL": discord_fake.gateway_url, "SHOULD_RESPOND_MODE": "mentions",
           "PYTHONPATH": REPO_ROOT}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await discord_fake.wait_connected(timeout=30)
        await say(discord_fake, GENERAL, "hello process", mentions=[discord_fake.bot])
        [reply] = await discord_fake.wait_for_messages(1, timeout=20)
        # Streamed (the default): the message ends as the reply, whatever it showed while written.
        await discord_fake.wait_for(lambda: reply["content"] == "Hello from Test", timeout=20)
        assert all("Hello from Test".startswith(shown.removesuffix(" ▌"))
                   for shown in discord_fake.history[reply["id"]])
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output.decode()[-2000:]
    assert TOKEN not in output.decode() and "sk-test-subprocess" not in output.decode()


async def test_expired_button_is_acknowledged_and_explained(bot: Bot, discord_fake: FakeDiscord) -> None:
    custom_id = "parley:" + "0" * 32
    message = discord_fake.message(GENERAL, discord_fake.bot, "old buttons")
    message["components"] = [{"type": 1, "components": [{"type": 2, "style": 1, "label": "old",
                                                         "custom_id": custom_id}]}]
    press = discord_fake.interaction(3, ALICE, GENERAL, {"custom_id": custom_id, "component_type": 2},
                                     message=message)
    await discord_fake.dispatch("INTERACTION_CREATE", press)
    [notice] = await discord_fake.wait_for_messages(1)
    assert discord_fake.interaction_responses[0]["type"] == 6
    assert notice["sent_body"]["content"] == "This button has expired." and notice["sent_body"]["flags"] == 64


async def test_button_the_bot_does_not_know_is_acknowledged_as_inactive(
    bot: Bot, discord_fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    from connectors.discord_connector.connector import INACTIVE

    message = discord_fake.message(GENERAL, discord_fake.bot, "buttons from an older version")
    with caplog.at_level(logging.INFO, logger="connectors.discord_connector.connector"):
        for custom_id in ("v1:choose:red", "parley:not-a-token"):
            press = discord_fake.interaction(3, ALICE, GENERAL, {"custom_id": custom_id, "component_type": 2},
                                             message=message)
            await discord_fake.dispatch("INTERACTION_CREATE", press)
        await discord_fake.wait_for(lambda: len(discord_fake.interaction_responses) == 2)
    for response in discord_fake.interaction_responses:
        assert response["type"] == 4 and response["data"]["content"] == INACTIVE and response["data"]["flags"] == 64
    assert sum("unknown custom_id" in r.getMessage() for r in caplog.records) == 2
    await quiet(bot)
    assert discord_fake.messages == [] and len(discord_fake.interaction_responses) == 2


async def test_lone_surrogates_in_edits_and_ask_are_replaced_not_fatal(
    tmp_path: Path, discord_fake: FakeDiscord, model: FakeOpenAI
) -> None:
    runner = Bot(tmp_path, discord_fake, model, discord_guild_id=discord_fake.guild_id)
    await runner.start()
    try:
        runtime = runner.app.runtime
        sent = await say(discord_fake, GENERAL, "plain words", mentions=[discord_fake.bot])
        await discord_fake.wait_for_messages(1)
        memory_id = create_unique_uuid(runtime.agent_id, f"discord:msg:{GENERAL}:{sent['id']}")
        await discord_fake.dispatch("MESSAGE_UPDATE", {**sent, "content": "edited \ud800 words",
                                                       "edited_timestamp": sent["timestamp"]})
        await ask(discord_fake, "why \udfff?")
        await discord_fake.wait_for_messages(2)  # /ask answered: the question was stored and processed
        assert "why \ufffd?" in json.dumps(model.requests[-1].body, ensure_ascii=False)
        for _ in range(100):  # the edit is handled in its own task
            if (stored := await runtime.store.get_memory(memory_id)).content.text != "plain words":
                break
            await asyncio.sleep(0.02)
        assert stored.content.text == "edited \ufffd words"
    finally:
        await runner.stop()


async def test_typing_shows_for_the_run_in_progress_not_for_every_queued_message(
        bot: Bot, discord_fake: FakeDiscord, model: FakeOpenAI) -> None:
    """Three mentions in a row while the model takes a second over the first: "typing…" goes out for
    the one being answered, not for the two waiting (each refresh costs a request of the bot's budget)."""
    from tests.fakes.openai_server import Hang

    model.script(Hang(seconds=1.0))
    mention = f"<@{discord_fake.bot['id']}>"
    for n in range(3):
        await say(discord_fake, GENERAL, f"{mention} question {n}", mentions=[discord_fake.bot])
    await discord_fake.wait_for_messages(3, timeout=20)
    paths = [r.path for r in discord_fake.requests if r.method == "POST"]
    first_reply = next(i for i, p in enumerate(paths) if p.endswith(f"/channels/{GENERAL}/messages"))
    assert sum(p.endswith(f"/channels/{GENERAL}/typing") for p in paths[:first_reply]) == 1
    assert sum(p.endswith(f"/channels/{GENERAL}/typing") for p in paths) == 3  # one per run, none left over


async def test_ask_answered_by_another_process_points_to_the_channel(
    tmp_path: Path, discord_fake: FakeDiscord, model: FakeOpenAI
) -> None:
    """With several processes, another one may run the /ask and post the answer in the channel: the
    "thinking…" placeholder then says so instead of "nothing to add"."""
    from bot.types import Content, EventType, Memory

    runner = Bot(tmp_path, discord_fake, model, discord_guild_id=discord_fake.guild_id)
    await runner.start()
    try:
        runtime = runner.app.runtime

        async def answered_elsewhere(payload: dict[str, Any]) -> None:  # what the other process stores
            asked = payload["message"]
            await runtime.create_memory(Memory(entity_id=runtime.agent_id, agent_id=runtime.agent_id,
                                               room_id=asked.room_id,
                                               content=Content(text="Forty-two", in_reply_to=asked.id)))

        runtime.on(EventType.RUN_STARTED, answered_elsewhere)
        model.script(xml("", actions="IGNORE"))
        await ask(discord_fake, "what is the answer?")
        [settled] = await discord_fake.wait_for_messages(1)
        assert settled["sent_body"]["content"] == "Answered in the channel."
    finally:
        await runner.stop()

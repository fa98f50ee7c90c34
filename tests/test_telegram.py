"""The Telegram connector in the whole in-process App: real python-telegram-bot, real SQLite, real
ffmpeg, against a fake Bot API and a fake OpenAI API on 127.0.0.1 (the process boundaries)."""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import App
from bot.ids import create_unique_uuid
from bot.plugin import ModelRegistration, Plugin, Priority
from bot.types import ModelType, RoomState
from connectors.telegram_connector import TelegramConnector, webhook_secret
from connectors.telegram_connector.handlers import EXPIRED_BUTTON, VOICE_UNAVAILABLE
from connectors.telegram_connector.pacing import ChatPacer
from plugins.voice import to_ogg_opus
from tests.fakes.openai_server import FakeOpenAI, Hang, sine_wav, tiny_png
from tests.fakes.telegram_api import (
    BAD_GATEWAY,
    BLOCKED,
    CANT_PARSE,
    THREAD_NOT_FOUND,
    ApiError,
    FakeTelegram,
    parse_html,
    retry_after,
)
from tests.server_helpers import character, settings_for, xml_reply

TOKEN = "123456789:AAHtestTOKENabcdefghijklmnopqrstuvw"
REPLY = "Hello **Ada**, nice to meet you!"
SHOULD_RESPOND_MARK = "Reply with one word: RESPOND, IGNORE or STOP"


def model_reply(body: dict[str, Any]) -> str:
    """The fake model: decides IGNORE for the should-respond prompt, replies REPLY otherwise."""
    prompt = " ".join(str(m.get("content")) for m in body.get("messages", []))
    return "IGNORE" if SHOULD_RESPOND_MARK in prompt else xml_reply(REPLY)


@pytest.fixture(autouse=True)
def quick_connector(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short long-polls and a fast per-chat pace: the real ones are tested on their own."""
    monkeypatch.setattr(TelegramConnector, "poll_timeout", 1.0)
    monkeypatch.setattr(TelegramConnector, "pacer", ChatPacer(private_per_second=100, private_burst=10))


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as fake:
        yield fake


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(reply=model_reply, transcript="what is the weather like")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@asynccontextmanager
async def running_bot(tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI,
                      model_plugins: list[Plugin] | None = None, **overrides: Any) -> AsyncIterator[App]:
    overrides.setdefault("streaming", "off")  # whole replies here; tests/test_telegram_streaming.py streams
    settings = settings_for(tmp_path, model.base_url, telegram_bot_token=TOKEN, telegram_api_root=telegram.root,
                            shutdown_timeout=3, **overrides)
    app = App(settings, character(), model_plugins=model_plugins)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def memory_id(app: App, chat_id: int, message_id: int) -> Any:
    return create_unique_uuid(app.runtime.agent_id, f"telegram:msg:{chat_id}:{message_id}")


async def eventually(check: Any, timeout: float = 5.0) -> Any:
    """Poll an async check until it returns something truthy (work that follows a send)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await check()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return result


def visible(call: Any) -> str:
    text = call["text"]
    return html.unescape(parse_html(text)[0]) if call.get("parse_mode") == "HTML" else text


ADA = FakeTelegram.user()
DM = FakeTelegram.private_chat(ADA)
GROUP = FakeTelegram.group_chat()


async def test_dm_reply_is_formatted_stored_and_replies_to_the_message(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    async with running_bot(tmp_path, telegram, model) as app:
        assert telegram.calls_to("setMyCommands")[0]["commands"][0]["command"] == "start"
        incoming = telegram.push({"message": telegram.message(ADA, DM, "hi there")})["message"]
        (sent,) = await telegram.wait_for("sendMessage")
        assert int(sent["chat_id"]) == ADA["id"]
        assert sent["parse_mode"] == "HTML"
        assert sent["text"] == "Hello <b>Ada</b>, nice to meet you!"
        assert sent["reply_parameters"]["message_id"] == incoming["message_id"]
        assert telegram.calls_to("sendChatAction")[0]["action"] == "typing"

        stored = await app.runtime.store.get_memory(memory_id(app, ADA["id"], incoming["message_id"]))
        assert stored is not None and stored.content.text == "hi there"
        assert stored.content.channel_type == "DM"
        user = await app.runtime.store.get_entity(stored.entity_id)
        assert user is not None and user.names == ["Ada Lovelace", "ada"]
        reply = await eventually(lambda: app.runtime.store.get_memory(
            memory_id(app, ADA["id"], sent.result["message_id"])))
        assert reply.content.in_reply_to == stored.id


async def test_group_answers_when_addressed_and_lets_the_model_decide_otherwise(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    bob = FakeTelegram.user(43, "Bob", "bob")
    async with running_bot(tmp_path, telegram, model):
        plain = telegram.push({"message": telegram.message(bob, GROUP, "anyone around?")})["message"]
        mentioned = telegram.push({"message": telegram.message(bob, GROUP, "what's up?", mention=True)})["message"]
        (first,) = await telegram.wait_for("sendMessage")
        assert first["reply_parameters"]["message_id"] == mentioned["message_id"]

        earlier = telegram.bot_message(GROUP, first.result["message_id"])
        replied = telegram.push({"message": telegram.message(bob, GROUP, "and then?", reply_to=earlier)})["message"]
        named = telegram.push({"message": telegram.message(bob, GROUP, "Test, are you there?")})["message"]
        unaddressed = telegram.push({"message": telegram.message(bob, GROUP, "just chatting")})["message"]
        last = telegram.push({"message": telegram.message(bob, GROUP, "ping", mention=True)})["message"]
        sent = await telegram.wait_for("sendMessage", count=4)
        await asyncio.sleep(0.2)
        answered = [c["reply_parameters"]["message_id"] for c in telegram.calls_to("sendMessage")]
        assert answered == [mentioned["message_id"], replied["message_id"], named["message_id"], last["message_id"]]
        assert plain["message_id"] not in answered and unaddressed["message_id"] not in answered
        assert all(int(c["chat_id"]) == GROUP["id"] for c in sent)
        asked = [r for r in model.requests_to("/chat/completions")
                 if SHOULD_RESPOND_MARK in json.dumps(r.body)]
        assert asked, "an unaddressed group message goes to the should-respond step"


async def test_mentions_mode_never_asks_the_model_about_unaddressed_messages(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    async with running_bot(tmp_path, telegram, model, should_respond_mode="mentions"):
        telegram.push({"message": telegram.message(ADA, GROUP, "not for the bot")})
        addressed = telegram.push({"message": telegram.message(ADA, GROUP, "hi", mention=True)})["message"]
        (sent,) = await telegram.wait_for("sendMessage")
        assert sent["reply_parameters"]["message_id"] == addressed["message_id"]
        assert not [r for r in model.requests_to("/chat/completions") if SHOULD_RESPOND_MARK in json.dumps(r.body)]


async def test_every_chunk_of_a_long_reply_goes_to_the_forum_topic(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    paragraphs = [f"Paragraph {i}: " + " ".join(["**word**", "plain", "`code<x>`", "&"] * 40) for i in range(10)]
    long_text = "\n\n".join(paragraphs)
    model.reply = xml_reply(html.escape(long_text))
    forum = FakeTelegram.group_chat(-100_777, "Forum", forum=True)
    async with running_bot(tmp_path, telegram, model) as app:
        incoming = telegram.push({"message": telegram.message(ADA, forum, "tell me a lot", topic=77,
                                                              mention=True)})["message"]
        sent = await telegram.wait_for("sendMessage", count=3)
        await asyncio.sleep(0.2)
        assert len(telegram.calls_to("sendMessage")) == 3, "10 paragraphs of 853 visible characters, 4 a message"
        assert {int(c["message_thread_id"]) for c in sent} == {77}
        assert sent[0]["reply_parameters"]["message_id"] == incoming["message_id"]
        assert all(c.get("reply_parameters") is None for c in sent[1:])
        texts = [visible(c) for c in sent]
        assert all(len(t) <= 4096 for t in texts)
        expected = long_text.replace("**", "").replace("`", "")
        assert "\n\n".join(texts) == expected, "split only between paragraphs, nothing lost"
        message = await app.runtime.store.get_memory(memory_id(app, forum["id"], incoming["message_id"]))
        assert message is not None
        topic_room = create_unique_uuid(app.runtime.agent_id, f"telegram:chat:{forum['id']}:topic:77")
        assert message.room_id == topic_room
        assert message.content.in_reply_to is None, "the topic's creation message is not a reply"


async def test_ten_thousand_characters_split_at_boundaries_with_valid_html(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    code = "\n".join(f"print({i})  # <{i}>" for i in range(400))
    prose = " ".join(["Some *emphasis* and text"] * 170)
    long_text = f"{prose}\n```python\n{code}\n```"
    assert len(long_text) >= 10_000
    model.reply = xml_reply(html.escape(long_text))
    async with running_bot(tmp_path, telegram, model):
        telegram.push({"message": telegram.message(ADA, DM, "long please")})
        sent = await telegram.wait_for("sendMessage", count=3)
        await asyncio.sleep(0.2)
        assert len(telegram.calls_to("sendMessage")) == 3 and not telegram.calls_to("sendMessage", ok=False)
        for call in sent:
            assert len(visible(call)) <= 4096
        assert sent[0]["text"].startswith("Some <i>emphasis</i>")
        assert all(c["text"].endswith("</code></pre>") for c in sent), "the open code block is closed..."
        assert all(c["text"].startswith('<pre><code class="language-python">') for c in sent[1:]), "...and reopened"
        joined = "\n".join(visible(c) for c in sent)
        assert joined == long_text.replace("*", "").replace("```python\n", "").removesuffix("\n```"), \
            "split between lines, nothing lost"


CHOICES = ("<response><thought>t</thought><actions>CHOOSE_OPTION</actions><text>Tea or coffee?</text>"
           "<options>Tea, please|Coffee</options></response>")


async def test_inline_keyboard_press_round_trip_survives_a_restart_and_expires(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    model.reply = lambda body: CHOICES if "Tea, please" not in json.dumps(body) else xml_reply("Tea it is.")
    async with running_bot(tmp_path, telegram, model) as app:
        telegram.push({"message": telegram.message(ADA, DM, "a drink?")})
        (offer,) = await telegram.wait_for("sendMessage")
        rows = offer["reply_markup"]["inline_keyboard"]
        assert [[b["text"] for b in row] for row in rows] == [["Tea, please"], ["Coffee"]]
        data = [row[0]["callback_data"] for row in rows]
        assert all(len(d.encode()) <= 64 and "Tea" not in d for d in data)
        keyboard_message = {**telegram.bot_message(DM, offer.result["message_id"], "Tea or coffee?"),
                            "reply_markup": offer["reply_markup"]}
        agent_id = app.runtime.agent_id

    async with running_bot(tmp_path, telegram, model) as app:  # a restart: same database
        press = telegram.push(telegram.callback_query(ADA, keyboard_message, data[0]))
        (answer,) = await telegram.wait_for("answerCallbackQuery")
        assert answer["callback_query_id"] == press["callback_query"]["id"] and not answer.get("show_alert")
        (_, reply) = await telegram.wait_for("sendMessage", count=2)
        assert reply["text"] == "Tea it is."
        pressed = await app.runtime.store.get_memory(
            create_unique_uuid(agent_id, f"telegram:callback:{press['callback_query']['id']}"))
        assert pressed is not None and pressed.content.text == "Tea, please"
        assert pressed.content.in_reply_to == memory_id(app, DM["id"], offer.result["message_id"])

        await app.runtime.store.set_cache(agent_id, "button:old", {"label": "Old", "value": "old"}, 0.001)
        await asyncio.sleep(0.01)
        for stale in ("b:old", "b:never-issued"):
            telegram.push(telegram.callback_query(ADA, keyboard_message, stale))
        alerts = await telegram.wait_for("answerCallbackQuery", count=3)
        assert [(a.get("text"), a.get("show_alert")) for a in alerts[1:]] == [(EXPIRED_BUTTON, True)] * 2
        await asyncio.sleep(0.2)
        assert len(telegram.calls_to("sendMessage")) == 2, "an expired button does nothing else"


async def ffprobe_codec(audio: bytes) -> str:
    process = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-show_entries", "stream=codec_name:format=format_name", "-of", "json", "pipe:0",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate(audio)
    info = json.loads(out)
    return f"{info['format']['format_name']}/{info['streams'][0]['codec_name']}"


async def test_voice_note_in_transcribed_and_answered_by_voice(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    spoken = await to_ogg_opus(sine_wav())
    async with running_bot(tmp_path, telegram, model) as app:
        incoming = telegram.push({"message": telegram.voice_message(ADA, DM, spoken)})["message"]
        (voice,) = await telegram.wait_for("sendVoice")
        transcription = model.requests_to("/audio/transcriptions")[0]
        assert transcription.body["file"] == spoken
        assert voice["reply_parameters"]["message_id"] == incoming["message_id"]
        assert await ffprobe_codec(voice["voice"]) == "ogg/opus"
        assert voice["caption"] == "Hello <b>Ada</b>, nice to meet you!"
        assert model.requests_to("/audio/speech")[0].body["input"] == "Hello Ada, nice to meet you!"
        assert not telegram.calls_to("sendMessage"), "the text went as the caption"

        stored = await app.runtime.store.get_memory(memory_id(app, DM["id"], incoming["message_id"]))
        assert stored is not None and stored.content.text == "what is the weather like"
        (attachment,) = stored.content.attachments
        assert attachment.kind == "voice" and attachment.file_id == "voice-file-1" and attachment.url is None
        assert TOKEN not in stored.model_dump_json()

        telegram.push({"message": telegram.message(ADA, DM, "and in text?")})
        (text_reply,) = await telegram.wait_for("sendMessage")
        assert len(telegram.calls_to("sendVoice")) == 1, "VOICE_REPLIES=auto: voice only when the user spoke"

        telegram.push({"edited_message": {**incoming, "caption": "(sent from the car)", "edit_date": incoming["date"]}})

        async def edited() -> Any:
            memory = await app.runtime.store.get_memory(stored.id)
            return memory if memory and "edited_at" in memory.metadata else None

        assert (await eventually(edited)).content.text == "what is the weather like\n(sent from the car)", \
            "a caption edit keeps the transcript"


async def test_a_voice_note_is_stored_before_transcription_and_kept_when_it_fails(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    spoken = await to_ogg_opus(sine_wav())
    model.script(Hang(1.0), endpoint="transcriptions")  # slow, then a 504
    async with running_bot(tmp_path, telegram, model) as app:
        incoming = telegram.push({"message": telegram.voice_message(ADA, DM, spoken)})["message"]
        key = memory_id(app, DM["id"], incoming["message_id"])

        async def transcribing() -> bool:
            return bool(model.requests_to("/audio/transcriptions"))

        await eventually(transcribing)
        stored = await app.runtime.store.get_memory(key)
        assert stored is not None and stored.content.text == "", "stored while the transcription is still running"
        (attachment,) = stored.content.attachments
        assert (attachment.kind, attachment.file_id, attachment.url, attachment.text) == (
            "voice", "voice-file-1", None, None)
        assert not telegram.calls_to("sendVoice") and not telegram.calls_to("sendMessage")

        (reply,) = await telegram.wait_for("sendVoice")
        assert reply["reply_parameters"]["message_id"] == incoming["message_id"]
        assert reply["caption"] == "Hello <b>Ada</b>, nice to meet you!", "answered, not apologised for"
        stored = await app.runtime.store.get_memory(key)
        assert stored is not None and stored.content.attachments[0].title == "Voice message (could not be transcribed)"
        prompts = [json.dumps(r.body) for r in model.requests_to("/chat/completions")]
        assert any("could not be transcribed" in p for p in prompts), "the model knows it could not hear it"
        assert TOKEN not in stored.model_dump_json()


async def text_only_models(fake: FakeOpenAI, tmp_path: Path) -> list[Plugin]:
    """The OpenAI provider with only its text and embedding models: no speech, no vision."""
    from plugins.openai_provider import openai_plugin

    settings = settings_for(tmp_path, fake.base_url)
    full = openai_plugin(settings, settings.openai_api_key.get_secret_value() if settings.openai_api_key else None)
    keep = {ModelType.TEXT_SMALL, ModelType.TEXT_LARGE, ModelType.TEXT_EMBEDDING}
    models: list[ModelRegistration] = [m for m in full.models if m.model_type in keep]
    return [Plugin(name=full.name, priority=Priority.MODEL, models=models, services=full.services)]


async def test_without_a_speech_model_the_user_is_told_once(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    spoken = await to_ogg_opus(sine_wav())
    async with running_bot(tmp_path, telegram, model, model_plugins=await text_only_models(model, tmp_path)):
        telegram.push({"message": telegram.voice_message(ADA, DM, spoken)})
        telegram.push({"message": telegram.voice_message(ADA, DM, spoken, file_id="voice-file-2")})
        telegram.push({"message": telegram.message(ADA, DM, "typed instead")})
        notice, reply = await telegram.wait_for("sendMessage", count=2)
        assert notice["text"] == VOICE_UNAVAILABLE and reply["text"].startswith("Hello")
        await asyncio.sleep(0.2)
        assert len(telegram.calls_to("sendMessage")) == 2
        assert not telegram.calls_to("getFile"), "nothing is downloaded that cannot be heard"


async def test_photo_is_described_into_the_attachment(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    telegram.add_file("photo-big", tiny_png(), "photos/file_1.jpg")
    photo = [{"file_id": "photo-small", "file_unique_id": "ps", "width": 1, "height": 1},
             {"file_id": "photo-big", "file_unique_id": "pb", "width": 4, "height": 4, "file_size": 80}]
    async with running_bot(tmp_path, telegram, model) as app:
        incoming = telegram.push({"message": telegram.message(ADA, DM, photo=photo, caption="look")})["message"]
        await telegram.wait_for("sendMessage")
        stored = await app.runtime.store.get_memory(memory_id(app, DM["id"], incoming["message_id"]))
        assert stored is not None and stored.content.text == "look"
        (attachment,) = stored.content.attachments
        assert (attachment.file_id, attachment.title, attachment.description) == (
            "photo-big", "A red square", "A small solid red square.")
        assert telegram.calls_to("getFile")[0]["file_id"] == "photo-big"


async def test_retry_after_is_honoured(tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI) -> None:
    telegram.fail("sendMessage", retry_after(1))
    async with running_bot(tmp_path, telegram, model):
        telegram.push({"message": telegram.message(ADA, DM, "hello?")})
        (delivered,) = await telegram.wait_for("sendMessage")
        (refused,) = telegram.calls_to("sendMessage", ok=False)
        assert delivered.at - refused.at >= 1.0
        assert delivered["text"] == refused["text"]


async def test_a_blocked_chat_stops_getting_messages_and_others_are_served(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    model.reply = xml_reply("\n\n".join(["x" * 3000] * 3))
    bob = FakeTelegram.user(43, "Bob", "bob")
    telegram.fail("sendMessage", BLOCKED)
    async with running_bot(tmp_path, telegram, model) as app:
        telegram.push({"message": telegram.message(ADA, DM, "hi")})
        await telegram.wait_for("sendMessage", ok=False)
        telegram.push({"message": telegram.message(bob, FakeTelegram.private_chat(bob), "hi")})
        served = await telegram.wait_for("sendMessage", count=3)
        assert {int(c["chat_id"]) for c in served} == {bob["id"]}
        assert len(telegram.calls_to("sendMessage", chat_id=str(ADA["id"]))) == 1, "no chunk after the 403"
        connector = app.runtime.connector_for("telegram")
        room = await app.runtime.get_room(create_unique_uuid(app.runtime.agent_id, f"telegram:chat:{ADA['id']}"))
        assert connector is not None and room is not None
        from bot.types import Content

        assert await connector.send_to_room(room, Content(text="still there?")) == []
        assert len(telegram.calls_to("sendMessage", chat_id=str(ADA["id"]))) == 1


@pytest.mark.parametrize("error", [THREAD_NOT_FOUND, BAD_GATEWAY], ids=["bad-request", "network"])
async def test_a_failed_later_chunk_keeps_what_was_sent_without_an_apology(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI, caplog: pytest.LogCaptureFixture, error: ApiError
) -> None:
    caplog.set_level(logging.WARNING)
    model.reply = xml_reply("\n\n".join(["x" * 3000] * 3))
    telegram.fail("sendMessage", error, after=1)
    async with running_bot(tmp_path, telegram, model) as app:
        incoming = telegram.push({"message": telegram.message(ADA, DM, "tell me a lot")})["message"]
        (first,) = await telegram.wait_for("sendMessage")
        await telegram.wait_for("sendMessage", ok=False)
        reply = await eventually(lambda: app.runtime.store.get_memory(
            memory_id(app, DM["id"], first.result["message_id"])))
        assert reply.content.in_reply_to == memory_id(app, DM["id"], incoming["message_id"])
        assert reply.metadata["platform_keys"] == [f"telegram:msg:{DM['id']}:{first.result['message_id']}"]
        await asyncio.sleep(0.3)
        assert len(telegram.calls_to("sendMessage")) == 2, "no third chunk and no apology after a partial reply"
        stops = [r for r in caplog.records if "the reply stops" in r.getMessage()]
        assert len(stops) == 1 and stops[0].levelno == logging.WARNING
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_failed_first_chunk_is_apologised_for_once(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    telegram.fail("sendMessage", THREAD_NOT_FOUND)
    async with running_bot(tmp_path, telegram, model) as app:
        telegram.push({"message": telegram.message(ADA, DM, "hi")})
        (apology,) = await telegram.wait_for("sendMessage")
        assert apology["text"] == app.settings.error_reply
        await asyncio.sleep(0.2)
        assert len(telegram.calls_to("sendMessage")) == 2


async def test_a_message_during_shutdown_is_stored_and_logged_once(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_bot(tmp_path, telegram, model) as app:
        assert app.runtime.message_handler is not None
        await app.runtime.message_handler.drain(1)  # what App.stop does first
        late = telegram.push({"message": telegram.message(ADA, DM, "still there?")})["message"]
        stored = await eventually(lambda: app.runtime.store.get_memory(memory_id(app, DM["id"], late["message_id"])))
        assert stored.content.text == "still there?"

        async def noted() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "stored, not answered" in r.getMessage()
                    and r.name.startswith("connectors.telegram_connector")]

        (note,) = await eventually(noted)
        assert note.levelno == logging.INFO and note.exc_info is None
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not telegram.calls_to("sendMessage")


async def test_rejected_markup_is_resent_as_plain_text(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    telegram.fail("sendMessage", CANT_PARSE)
    async with running_bot(tmp_path, telegram, model):
        telegram.push({"message": telegram.message(ADA, DM, "hi")})
        (plain,) = await telegram.wait_for("sendMessage")
        assert plain.get("parse_mode") is None and plain["text"] == "Hello Ada, nice to meet you!"
        assert len(telegram.calls_to("sendMessage")) == 2


async def test_an_edit_updates_the_memory_and_is_not_answered_again(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    async with running_bot(tmp_path, telegram, model) as app:
        original = telegram.push({"message": telegram.message(ADA, DM, "helo")})["message"]
        await telegram.wait_for("sendMessage")
        telegram.push({"edited_message": {**original, "text": "hello", "edit_date": original["date"] + 5}})
        telegram.push({"message": telegram.message(ADA, DM, "next")})
        await telegram.wait_for("sendMessage", count=2)
        await asyncio.sleep(0.2)
        assert len(telegram.calls_to("sendMessage")) == 2
        stored = await app.runtime.store.get_memory(memory_id(app, DM["id"], original["message_id"]))
        assert stored is not None and stored.content.text == "hello" and "edited_at" in stored.metadata


async def test_allowed_chats_limit_the_bot_and_log_once(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.telegram_connector")
    async with running_bot(tmp_path, telegram, model, telegram_allowed_chats=f"[{GROUP['id']}]"):
        telegram.push({"message": telegram.message(ADA, DM, "hi")})
        telegram.push({"message": telegram.message(ADA, DM, "hello??")})
        allowed = telegram.push({"message": telegram.message(ADA, GROUP, "hi", mention=True)})["message"]
        (sent,) = await telegram.wait_for("sendMessage")
        assert sent["reply_parameters"]["message_id"] == allowed["message_id"]
        notes = [r for r in caplog.records if "TELEGRAM_ALLOWED_CHATS" in r.getMessage()]
        assert len(notes) == 1


async def test_start_and_help_answer_from_the_character(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    async with running_bot(tmp_path, telegram, model):
        telegram.push({"message": telegram.message(ADA, DM, "/start")})
        telegram.push({"message": telegram.message(ADA, DM, "/help")})
        start, help_ = await telegram.wait_for("sendMessage", count=2)
        assert start["text"] == "Hi, I'm Test! Test is a patient character used in tests."
        assert "@parley_test_bot" in help_["text"]
        assert not model.requests_to("/chat/completions")


async def test_polling_recovers_from_errors_and_ignores_unknown_updates(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    async with running_bot(tmp_path, telegram, model):
        telegram.fail("getUpdates", BAD_GATEWAY)
        telegram.push({"future_update_kind": {"id": "x1", "what": "a type this library does not know"}})
        telegram.push({"message": telegram.message(ADA, DM, "still there?")})
        (sent,) = await telegram.wait_for("sendMessage")
        assert sent["text"].startswith("Hello")


async def test_webhook_mode_checks_the_secret(tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI) -> None:
    url = "https://bot.example.com/telegram/webhook"
    async with running_bot(tmp_path, telegram, model, telegram_webhook_url=url,
                           telegram_webhook_secret="right-secret") as app:
        (registered,) = telegram.calls_to("setWebhook")
        assert registered["url"] == url and registered["secret_token"] == "right-secret"
        endpoint = f"http://127.0.0.1:{app.server.port}/telegram/webhook"
        update = telegram.new_update({"message": telegram.message(ADA, DM, "via webhook")})
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
                async with http.post(endpoint, json=update, headers=headers) as response:
                    assert response.status == 403
            await asyncio.sleep(0.2)
            assert not telegram.calls_to("sendMessage") and not telegram.calls_to("sendChatAction")
            async with http.post(endpoint, json=update,
                                 headers={"X-Telegram-Bot-Api-Secret-Token": "right-secret"}) as response:
                assert response.status == 200
            (sent,) = await telegram.wait_for("sendMessage")
            assert sent["reply_parameters"]["message_id"] == update["message"]["message_id"]
            async with http.post(endpoint, data=b"not json",
                                 headers={"X-Telegram-Bot-Api-Secret-Token": "right-secret"}) as response:
                assert response.status == 400
        assert not telegram.calls_to("deleteWebhook"), "webhook mode does not poll"


async def test_a_webhook_update_that_cannot_be_stored_is_refused_so_telegram_retries_it(
        tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI) -> None:
    """A 200 tells Telegram to forget the update: it is only given once the message is stored."""
    import sqlalchemy as sa

    async with running_bot(tmp_path, telegram, model, telegram_webhook_url="https://bot.example.com/telegram/webhook",
                           telegram_webhook_secret="right-secret") as app:
        store = app.runtime.store
        create = store.create_memory

        async def database_away(*args: Any, **kwargs: Any) -> bool:
            raise sa.exc.OperationalError("INSERT", {}, Exception("the database is away"))

        endpoint = f"http://127.0.0.1:{app.server.port}/telegram/webhook"
        update = telegram.new_update({"message": telegram.message(ADA, DM, "are you there?")})
        headers = {"X-Telegram-Bot-Api-Secret-Token": "right-secret"}
        async with aiohttp.ClientSession() as http:
            store.create_memory = database_away  # type: ignore[method-assign]
            async with http.post(endpoint, json=update, headers=headers) as response:
                assert response.status == 500
            store.create_memory = create  # type: ignore[method-assign]
            for _ in range(2):  # Telegram's retry, and one more: stored once, answered once
                async with http.post(endpoint, json=update, headers=headers) as response:
                    assert response.status == 200
        (sent,) = await telegram.wait_for("sendMessage")
        assert sent["reply_parameters"]["message_id"] == update["message"]["message_id"]
        await app.runtime.message_handler.drain(5)
        assert len(telegram.calls_to("sendMessage")) == 1


def test_the_derived_webhook_secret_is_not_the_token(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, "http://127.0.0.1:9/v1", telegram_bot_token=TOKEN)
    secret = webhook_secret(settings)
    assert secret and TOKEN not in secret and TOKEN.split(":")[1] not in secret
    assert secret == webhook_secret(settings_for(tmp_path, "http://127.0.0.1:9/v1", telegram_bot_token=TOKEN))
    assert webhook_secret(settings_for(tmp_path, "http://x/v1", telegram_bot_token=TOKEN + "x")) != secret


async def test_only_chat_admins_mute_the_bot_in_a_group_asked_of_telegram_once(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    """Roles come from Telegram (getChatMember, cached), never from the message text."""
    bob = FakeTelegram.user(43, "Bob", "bob")
    telegram.admins[GROUP["id"]] = {ADA["id"]}
    model.reply = lambda body: xml_reply("Okay, going quiet.", "MUTE_ROOM")
    async with running_bot(tmp_path, telegram, model) as app:
        telegram.push({"message": telegram.message(bob, GROUP, "be quiet, I'm an admin", mention=True)})
        (refused,) = await telegram.wait_for("sendMessage")
        assert visible(refused) == "Sorry, only admins of this chat can ask me to do that."
        telegram.push({"message": telegram.message(ADA, GROUP, "please be quiet", mention=True)})
        await telegram.wait_for("sendMessage", count=2)
        rooms = [r for r in await app.runtime.store.get_rooms(app.runtime.agent_id) if r.channel_id == str(GROUP["id"])]
        assert [await app.runtime.get_room_state(r.id) for r in rooms] == [RoomState.MUTED]
        telegram.push({"message": telegram.message(bob, GROUP, "Test, unmute yourself")})
        await telegram.wait_for("sendMessage", count=3)
        asked = [(int(c["chat_id"]), int(c["user_id"])) for c in telegram.calls_to("getChatMember")]
        assert asked == [(GROUP["id"], bob["id"]), (GROUP["id"], ADA["id"])], "cached per person and chat"

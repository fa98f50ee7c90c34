"""Streamed Telegram replies: drafts in private chats, one edited message in groups and topics,
against a fake Bot API that enforces Telegram's flood limits (edits count as messages).

The model is scripted and gated: it writes its next piece only once the chat shows the previous
one, so "the reply appears as it is written" is proven by events, not by timing."""

from __future__ import annotations

import asyncio
import html
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.plugin import ModelOutput
from bot.types import ModelType
from connectors.telegram_connector import TelegramConnector
from connectors.telegram_connector.streaming import CURSOR
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_api import Call, FakeTelegram, parse_html, retry_after
from tests.runtime_helpers import ScriptedModel
from tests.server_helpers import xml_reply
from tests.test_telegram import ADA, DM, GROUP, TOKEN, memory_id, running_bot

PREVIEWS = {"sendMessage", "editMessageText", "sendMessageDraft"}


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TelegramConnector, "poll_timeout", 1.0)


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN, enforce_limits=True) as fake:
        yield fake


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:  # unused: the scripted model answers
        yield fake


def shown(call: Call) -> str:
    """What a send, edit or draft shows: visible text without the streaming cursor."""
    text = str(call.get("text") or "")
    if call.get("parse_mode") == "HTML":
        text = html.unescape(parse_html(text)[0])
    return text.removesuffix(CURSOR.strip()).rstrip()


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := check()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the chat never showed it")
        await asyncio.sleep(0.01)
    return result


def gated(telegram: FakeTelegram, pieces: list[str], *, wait_for: list[str] | None = None) -> ScriptedModel:
    """A model that streams `pieces` of an XML reply, each only after the chat shows the reply's
    text so far (`wait_for[i]`, default: the visible text of pieces[:i+1])."""
    text = "".join(pieces)

    async def write(params: dict[str, Any]) -> ModelOutput:
        on_text = params["stream"]
        await on_text("<response><thought>ok</thought><actions>REPLY</actions><text>")
        for index, piece in enumerate(pieces):
            await on_text(html.escape(piece, quote=False))
            expected = wait_for[index] if wait_for else "".join(pieces[:index + 1]).strip()
            try:
                await until(lambda expected=expected: any(shown(c) == expected for c in telegram.calls
                                                          if c.method in PREVIEWS))
            except AssertionError:
                raise AssertionError(f"never shown: {expected!r}; shown: "
                                     f"{[(c.method, c.get('text')) for c in telegram.calls if c.method in PREVIEWS]}"
                                     ) from None
        await on_text("</text></response>")
        return ModelOutput(xml_reply(html.escape(text, quote=False)))

    model = ScriptedModel()
    model.defaults[ModelType.TEXT_LARGE] = write
    model.defaults[ModelType.TEXT_SMALL] = "RESPOND"
    return model


async def answered(app: Any, chat_id: int, message_id: int) -> list[Any]:
    """The stored replies to a chat message, once the run has stored them."""
    async def replies() -> list[Any]:
        message = await app.runtime.store.get_memory(memory_id(app, chat_id, message_id))
        return await app.runtime.replies_to(message) if message else []

    deadline = asyncio.get_running_loop().time() + 20
    while not (found := await replies()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the message was never answered")
        await asyncio.sleep(0.02)
    return found


def previews(telegram: FakeTelegram, chat_id: int) -> list[Call]:
    return [c for c in telegram.calls if c.method in PREVIEWS and int(c["chat_id"]) == chat_id and c.get("text")]


async def test_a_private_chat_streams_drafts_then_sends_the_reply_once(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    pieces = ["Hello ", "there, **dear** ", "Ada. ", "Here is `code` and more."]
    final = "Hello there, dear Ada. Here is code and more."
    scripted = gated(telegram, pieces, wait_for=["Hello", "Hello there, dear", "Hello there, dear Ada.", final])
    async with running_bot(tmp_path, telegram, model, model_plugins=[scripted.plugin()], streaming="all",
                           stream_edit_seconds=0.2):
        incoming = telegram.push({"message": telegram.message(ADA, DM, "hi")})["message"]
        (sent,) = await telegram.wait_for("sendMessage")
        drafts = telegram.calls_to("sendMessageDraft")
        assert len({shown(d) for d in drafts}) >= 3, "the reply appeared in steps while it was written"
        assert all(final.startswith(shown(d)) for d in drafts), [shown(d) for d in drafts]
        assert all(d["text"].endswith(CURSOR.strip()) for d in drafts)
        assert len({d["draft_id"] for d in drafts}) == 1
        assert sent["text"] == "Hello there, <b>dear</b> Ada. Here is <code>code</code> and more."
        assert sent["reply_parameters"]["message_id"] == incoming["message_id"]
        await asyncio.sleep(0.3)  # a late preview would come now
        assert len(telegram.calls_to("sendMessage")) == 1 and not telegram.calls_to("editMessageText")
        assert telegram.limited == []


@pytest.mark.parametrize("topic", [None, 77])
async def test_a_group_or_topic_streams_one_edited_message_within_the_limits(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI, topic: int | None
) -> None:
    pieces = [f"Part {i} of the answer, with **bold** words. " for i in range(6)]
    final = "".join(pieces).replace("**", "").strip()
    wait_for = ["".join(pieces[:i + 1]).replace("**", "").strip() for i in range(6)]
    scripted = gated(telegram, pieces, wait_for=wait_for)
    chat = FakeTelegram.group_chat(-100_777, "Forum", forum=True) if topic else GROUP
    async with running_bot(tmp_path, telegram, model, model_plugins=[scripted.plugin()], streaming="all",
                           stream_edit_seconds=0.2):
        incoming = telegram.push({"message": telegram.message(ADA, chat, "tell me", mention=True,
                                                              topic=topic)})["message"]
        await until(lambda: [m for m in telegram.chat_messages(chat["id"]) if not m["text"].endswith("▌")])
        (first,) = telegram.calls_to("sendMessage")
        assert first["reply_parameters"]["message_id"] == incoming["message_id"]
        assert shown(first) == wait_for[0]
        edits = telegram.calls_to("editMessageText")
        assert {int(e["message_id"]) for e in edits} == {first.result["message_id"]}
        assert all(final.startswith(shown(c)) for c in previews(telegram, chat["id"]))
        (message,) = telegram.chat_messages(chat["id"])
        assert message["text"] == final, "one message, ending with the whole reply and no cursor"
        if topic:
            assert int(first["message_thread_id"]) == topic, "edits then name the message, not the topic"
            assert message["message_thread_id"] == topic
        assert not telegram.calls_to("sendMessageDraft"), "drafts are for private chats"
        assert telegram.limited == []


async def test_a_rate_limited_edit_never_doubles_the_final_message(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    pieces = ["First part. ", "Second part. ", "Third part."]
    final = "First part. Second part. Third part."
    telegram.fail("editMessageText", retry_after(1), retry_after(1))  # the first edits meet flood control

    async def write(params: dict[str, Any]) -> ModelOutput:
        on_text = params["stream"]
        await on_text("<response><actions>REPLY</actions><text>" + pieces[0])
        await until(lambda: any(shown(c) == "First part." for c in telegram.calls_to("sendMessage")))
        for piece in pieces[1:]:  # then on, without waiting for the chat
            await on_text(piece)
            await asyncio.sleep(0.25)
        return ModelOutput(xml_reply(final))

    scripted = ScriptedModel()
    scripted.defaults[ModelType.TEXT_LARGE] = write
    async with running_bot(tmp_path, telegram, model, model_plugins=[scripted.plugin()], streaming="all",
                           stream_edit_seconds=0.2) as app:
        incoming = telegram.push({"message": telegram.message(ADA, GROUP, "go", mention=True)})["message"]
        await answered(app, GROUP["id"], incoming["message_id"])
        assert len(telegram.calls_to("sendMessage")) == 1
        (message,) = telegram.chat_messages(GROUP["id"])
        assert message["text"] == final
        refused = [c for c in telegram.calls_to("editMessageText") if getattr(c.result, "code", 0) == 429]
        assert refused, "the scripted 429s were met"
        assert telegram.limited == []


async def test_a_reply_longer_than_a_message_continues_in_a_new_one(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    paragraphs = [f"Paragraph {i}: " + "words and more words " * 60 for i in range(8)]
    text = "\n\n".join(p.strip() for p in paragraphs)

    async def write(params: dict[str, Any]) -> ModelOutput:  # 8 paragraphs of ~1270 characters over 1.6 s
        await params["stream"]("<response><actions>REPLY</actions><text>")
        for paragraph in paragraphs:
            await params["stream"](paragraph.strip() + "\n\n")
            await asyncio.sleep(0.2)
        return ModelOutput(xml_reply(text))

    scripted = ScriptedModel()
    scripted.defaults[ModelType.TEXT_LARGE] = write
    async with running_bot(tmp_path, telegram, model, model_plugins=[scripted.plugin()], streaming="all",
                           stream_edit_seconds=0.2) as app:
        incoming = telegram.push({"message": telegram.message(ADA, GROUP, "a lot please", mention=True)})["message"]
        replies = await answered(app, GROUP["id"], incoming["message_id"])
        messages = telegram.chat_messages(GROUP["id"])
        assert len(messages) >= 3 and all(len(m["text"]) <= 4096 for m in messages)
        assert "\n\n".join(m["text"] for m in messages) == text, "nothing lost or doubled, no cursor left"
        first = telegram.calls_to("sendMessage")[0]
        assert first["reply_parameters"]["message_id"] == incoming["message_id"]
        assert len(replies) == 1 and replies[0].content.text == text
        assert len(replies[0].metadata["platform_keys"]) == len(messages)
        assert telegram.limited == []


@pytest.mark.parametrize(("streaming", "chat"), [("off", DM), ("off", GROUP), ("dm", GROUP)])
async def test_streaming_setting_turns_previews_off(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI, streaming: str, chat: dict[str, Any]
) -> None:
    from tests.runtime_helpers import Streamed

    scripted = ScriptedModel()
    scripted.defaults[ModelType.TEXT_LARGE] = Streamed(xml_reply("One whole reply."), chunks=8, seconds=0.4)
    async with running_bot(tmp_path, telegram, model, model_plugins=[scripted.plugin()], streaming=streaming):
        telegram.push({"message": telegram.message(ADA, chat, "hi", mention=chat is GROUP)})
        (sent,) = await telegram.wait_for("sendMessage")
        assert shown(sent) == "One whole reply."
        assert not telegram.calls_to("sendMessageDraft") and not telegram.calls_to("editMessageText")

"""Discord replies shown while they are written (issue #14): the real discord.py against the fake
Discord, which holds the bot to Discord's limits (a request over them would be answered 429 and
counted), and a scripted model writing its reply in pieces.

Most tests scale the channel's limit five times up on both sides (five at once, then five a second)
with STREAM_EDIT_SECONDS at its minimum, 0.2 s; the last one streams at Discord's own pace.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.character import load_character
from bot.settings import Settings
from bot.types import Attachment, Button, Content, ModelType
from connectors.discord_connector import DiscordConnector
from connectors.discord_connector.chunking import split_message
from connectors.discord_connector.pacing import DiscordLimits
from connectors.discord_connector.streaming import CURSOR, DiscordReply, DiscordStream
from tests.fakes.discord_api import TOKEN, FakeDiscord, Limits, Recorded
from tests.runtime_helpers import ScriptedModel, Streamed, xml_reply
from tests.test_discord import GENERAL, THREAD, discord_fake, fast_ready, quiet, say  # noqa: F401 - fixtures

EDIT = 0.2  # STREAM_EDIT_SECONDS
SCALED = 5.0  # the channel's messages and edits a second, after five at once
JITTER = 0.05  # how much sooner than its slot a request may reach the fake


class StreamingBot:
    """The whole app in-process with a scripted model, against the fake Discord."""

    def __init__(self, tmp_path: Path, fake: FakeDiscord, model: ScriptedModel, **overrides: Any) -> None:
        character = tmp_path / "character.json"
        character.write_text(json.dumps({"name": "Test", "bio": "A test character."}))
        self.settings = Settings(
            _env_file=None, character_path=character, data_dir=tmp_path / "data", port=0,
            discord_api_token=TOKEN, discord_api_base=fake.api_base, discord_gateway_url=fake.gateway_url,
            should_respond_mode="mentions", **{"stream_edit_seconds": EDIT, **overrides})
        self.fake, self.model = fake, model
        self.app: App | None = None

    async def start(self) -> None:
        character = load_character(self.settings.character_path).character
        self.app = App(self.settings, character, model_plugins=[self.model.plugin()])
        await self.app.start()
        await self.fake.wait_connected()
        await self.fake.wait_for(lambda: self.connector.connected)

    @property
    def connector(self) -> DiscordConnector:
        assert self.app is not None
        connector = self.app.runtime.connector_for("discord")
        assert isinstance(connector, DiscordConnector)
        return connector

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()


@pytest.fixture
def scaled(monkeypatch: pytest.MonkeyPatch, discord_fake: FakeDiscord) -> None:  # noqa: F811
    """Discord's channel limit five times faster, in the connector's budget and in the fake's 429s."""
    monkeypatch.setattr(DiscordConnector, "limits", DiscordLimits(channel_per_second=SCALED))
    discord_fake.enforce(Limits(channel_per_second=SCALED, tolerance=JITTER))


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture
async def bot(tmp_path: Path, discord_fake: FakeDiscord, model: ScriptedModel,  # noqa: F811
              scaled: None) -> AsyncIterator[StreamingBot]:
    runner = StreamingBot(tmp_path, discord_fake, model)
    await runner.start()
    yield runner
    await runner.stop()


def calls(fake: FakeDiscord, method: str, channel: int = GENERAL) -> list[Recorded]:
    """The requests to the channel's messages (POST: new ones; PATCH, DELETE: the bot's)."""
    path = re.compile(rf"/channels/{channel}/messages(/\d+)?$")
    return [r for r in fake.requests if r.method == method and path.search(r.path)]


def texts_shown(fake: FakeDiscord) -> set[str]:
    return {text for history in fake.history.values() for text in history}


def seen_growing(fake: FakeDiscord, streamed: Streamed, notes: dict[str, Any],
                 typing: Callable[[], dict[Any, Any]]) -> Callable[[dict[str, Any]], Streamed]:
    """`streamed`, whose last piece waits until the fake has shown two different texts of the reply:
    the reply was seen growing before the model finished (else the wait times out). Notes what
    "typing…" indicators were still up then."""
    def reply(params: dict[str, Any]) -> Streamed:
        listener, last = params["stream"], len(streamed.pieces())
        written = 0

        async def piece(text: str) -> None:
            nonlocal written
            written += 1
            if written == last:
                await fake.wait_for(lambda: len(texts_shown(fake)) >= 2)
                notes["typing"] = dict(typing())
            await listener(text)

        params["stream"] = piece
        return streamed

    return reply


async def answered(bot: StreamingBot, text: str) -> None:
    """Wait until a message shows `text`, then for the run to end."""
    await bot.fake.wait_for(lambda: any(m["content"] == text for m in bot.fake.messages))
    await quiet(bot, 0.2)  # type: ignore[arg-type]


# Through the pipeline -----------------------------------------------------------------------------------
@pytest.mark.parametrize("channel", [GENERAL, THREAD], ids=["channel", "thread"])
async def test_a_reply_grows_in_one_message_that_ends_as_the_plain_reply(
        bot: StreamingBot, discord_fake: FakeDiscord, model: ScriptedModel, channel: int) -> None:  # noqa: F811
    text = " ".join(f"word{i}" for i in range(150))
    notes: dict[str, Any] = {}
    model.script(ModelType.TEXT_LARGE, seen_growing(discord_fake, Streamed(xml_reply(text), chunks=30, seconds=1.5),
                                                    notes, lambda: bot.connector.typing._shown))
    sent = await say(discord_fake, channel, "tell me a lot", mentions=[discord_fake.bot])
    await answered(bot, text)

    [message] = discord_fake.messages
    assert message["channel_id"] == str(channel) and discord_fake.deleted == []
    [post] = calls(discord_fake, "POST", channel)  # one message, never the reply twice
    assert str(post.body["message_reference"]["message_id"]) == sent["id"]  # replying, as a plain send does
    assert post.body["allowed_mentions"]["parse"] == ["users"]
    shown = discord_fake.history[message["id"]]
    assert shown[-1] == text  # the plain reply's text, without the cursor
    assert len(set(shown[:-1])) >= 2 and all(text.startswith(t.removesuffix(CURSOR)) for t in shown)
    assert any(r.path.endswith(f"/channels/{channel}/typing") for r in discord_fake.requests)
    assert notes["typing"] == {}  # "typing…" was shown, and ended when the first text showed
    # Paced: no 429, and the edits while writing at least STREAM_EDIT_SECONDS apart (the final one may follow sooner).
    assert discord_fake.rate_limited == []
    patches = calls(discord_fake, "PATCH", channel)
    streamed = [post.at, *(p.at for p in patches[:-1])]
    assert all(later - earlier >= EDIT - JITTER for earlier, later in pairwise(streamed))
    assert len(patches) <= 1.5 / EDIT + 1


async def test_a_reply_over_2000_characters_ends_split_as_the_plain_send_splits_it(
        bot: StreamingBot, discord_fake: FakeDiscord, model: ScriptedModel) -> None:  # noqa: F811
    text = "\n\n".join(f"Paragraph {i}: " + " ".join(["words"] * 150) for i in range(6))
    chunks = split_message(text)
    assert len(chunks) >= 3
    model.script(ModelType.TEXT_LARGE, Streamed(xml_reply(text), chunks=40, seconds=2.0))
    sent = await say(discord_fake, GENERAL, "tell me everything", mentions=[discord_fake.bot])
    await answered(bot, chunks[-1])

    assert [m["content"] for m in discord_fake.messages] == chunks
    posts = calls(discord_fake, "POST")
    assert len(posts) == len(chunks) and discord_fake.deleted == []  # each part sent once, in order
    assert str(posts[0].body["message_reference"]["message_id"]) == sent["id"]
    assert all("message_reference" not in p.body for p in posts[1:])
    # While written, each message showed the reply from where it starts (a line that does not fit
    # its message moves on to the next one).
    start = 0
    for message, chunk in zip(discord_fake.messages, chunks, strict=True):
        start = text.index(chunk, start)
        assert all(text[start:].startswith(t.removesuffix(CURSOR)) for t in discord_fake.history[message["id"]])
    assert discord_fake.rate_limited == []


async def test_with_streaming_off_the_reply_is_one_message_as_before(
        tmp_path: Path, discord_fake: FakeDiscord, model: ScriptedModel, scaled: None) -> None:  # noqa: F811
    text = " ".join(f"word{i}" for i in range(150))
    runner = StreamingBot(tmp_path, discord_fake, model, streaming="off")
    await runner.start()
    try:
        model.script(ModelType.TEXT_LARGE, Streamed(xml_reply(text), chunks=30, seconds=1.0))
        await say(discord_fake, GENERAL, "tell me a lot", mentions=[discord_fake.bot])
        await answered(runner, text)
    finally:
        await runner.stop()
    [post] = calls(discord_fake, "POST")
    assert post.body["content"] == text and calls(discord_fake, "PATCH") == []
    assert [m["content"] for m in discord_fake.messages] == [text]


@pytest.mark.parametrize("failing", [1, 1000], ids=["one-edit-fails", "every-edit-fails"])
async def test_an_edit_refused_by_discord_still_ends_with_the_reply_once(
        bot: StreamingBot, discord_fake: FakeDiscord, model: ScriptedModel, failing: int) -> None:  # noqa: F811
    text = " ".join(f"word{i}" for i in range(100))
    discord_fake.fail("PATCH", rf"/channels/{GENERAL}/messages/\d+$", 400, times=failing)
    model.script(ModelType.TEXT_LARGE, Streamed(xml_reply(text), chunks=20, seconds=1.0))
    sent = await say(discord_fake, GENERAL, "tell me a lot", mentions=[discord_fake.bot])
    await answered(bot, text)

    [message] = discord_fake.messages  # the reply, once
    assert message["content"] == text
    assert str(message["sent_body"]["message_reference"]["message_id"]) == sent["id"]
    assert len(calls(discord_fake, "PATCH")) >= 2  # edits were tried, and refused
    if failing == 1:  # the next edit carried on
        assert discord_fake.deleted == [] and len(calls(discord_fake, "POST")) == 1
    else:  # the final edit failed too: what was shown made way for the reply sent anew
        [withdrawn] = discord_fake.deleted
        assert withdrawn["content"] != text and len(calls(discord_fake, "POST")) == 2
    assert discord_fake.rate_limited == []


async def test_other_replies_in_the_channel_meanwhile_get_their_slots_and_nothing_is_rate_limited(
        bot: StreamingBot, discord_fake: FakeDiscord, model: ScriptedModel) -> None:  # noqa: F811
    text = " ".join(f"word{i}" for i in range(150))
    model.script(ModelType.TEXT_LARGE, Streamed(xml_reply(text), chunks=30, seconds=1.5))
    await say(discord_fake, GENERAL, "tell me a lot", mentions=[discord_fake.bot])
    await discord_fake.wait_for(lambda: discord_fake.messages)  # the reply is showing
    connector = bot.connector
    channel = connector.client.get_channel(GENERAL)
    await asyncio.gather(*(connector.deliver(channel, Content(text=f"other {n}"), channel.send) for n in range(8)))
    await answered(bot, text)
    assert sorted(m["content"] for m in discord_fake.messages) == sorted([text, *(f"other {n}" for n in range(8))])
    assert discord_fake.rate_limited == []


# The stream itself ----------------------------------------------------------------------------------------
def open_stream(bot: StreamingBot) -> tuple[DiscordReply, DiscordStream]:
    channel = bot.connector.client.get_channel(GENERAL)
    reply = DiscordReply(bot.connector, channel, channel.send, None, uuid.uuid4(), streams=True)
    stream = reply.open_stream()
    assert isinstance(stream, DiscordStream)
    return reply, stream


async def showing(fake: FakeDiscord, *texts: str) -> None:
    await fake.wait_for(lambda: [m["content"] for m in fake.messages] == list(texts))


async def test_a_stream_no_reply_finished_is_withdrawn(bot: StreamingBot, discord_fake: FakeDiscord) -> None:  # noqa: F811
    _, stream = open_stream(bot)
    await stream.update("Let me look that up")
    await showing(discord_fake, "Let me look that up" + CURSOR)
    await stream.close()
    assert discord_fake.messages == [] and len(discord_fake.deleted) == 1


async def test_buttons_are_added_by_the_final_edit(bot: StreamingBot, discord_fake: FakeDiscord) -> None:  # noqa: F811
    _, stream = open_stream(bot)
    await stream.update("Pick")
    await showing(discord_fake, "Pick" + CURSOR)
    keys = await stream.finish(Content(text="Pick one", buttons=[[Button(label="red", value="red")]]))
    await stream.close()
    [message] = discord_fake.messages
    assert keys == [f"discord:msg:{GENERAL}:{message['id']}"] and message["content"] == "Pick one"
    assert [b["label"] for row in message["components"] for b in row["components"]] == ["red"]
    assert len(calls(discord_fake, "POST")) == 1


async def test_files_make_way_for_the_plain_send(bot: StreamingBot, discord_fake: FakeDiscord) -> None:  # noqa: F811
    reply, stream = open_stream(bot)
    await stream.update("Here it")
    await showing(discord_fake, "Here it" + CURSOR)
    content = Content(text="Here it is", attachments=[Attachment(id="a", kind="image", title="a.png", data=b"png")])
    assert await stream.finish(content) is None
    assert discord_fake.messages == []  # withdrawn: the callback sends it, files and all
    await reply(content)
    [message] = discord_fake.messages
    assert message["content"] == "Here it is" and message["sent_files"] == [("a.png", b"png")]


async def test_a_reset_replaces_what_was_shown(bot: StreamingBot, discord_fake: FakeDiscord) -> None:  # noqa: F811
    _, stream = open_stream(bot)
    long = "\n".join(["Searching the archives, one line at a time."] * 60)  # two messages
    await stream.update(long)
    await discord_fake.wait_for(lambda: len(discord_fake.messages) == 2)
    await stream.reset()  # that round ended in a tool call
    await stream.update("The answer")
    await showing(discord_fake, "The answer" + CURSOR)
    assert len(discord_fake.deleted) == 1
    keys = await stream.finish(Content(text="The answer is 42."))
    assert [m["content"] for m in discord_fake.messages] == ["The answer is 42."] and len(keys or []) == 1


# At Discord's own pace -----------------------------------------------------------------------------------
async def test_a_four_second_reply_at_discord_s_limits_costs_one_message_and_an_edit_a_second(
        tmp_path: Path, discord_fake: FakeDiscord, model: ScriptedModel) -> None:  # noqa: F811
    discord_fake.enforce()  # 5 a channel at once, then one a second; 50 a second for the bot
    runner = StreamingBot(tmp_path, discord_fake, model, stream_edit_seconds=1.0)
    await runner.start()
    try:
        text = " ".join(f"word{i}" for i in range(200))
        model.script(ModelType.TEXT_LARGE, Streamed(xml_reply(text), chunks=40, seconds=4.0))
        await say(discord_fake, GENERAL, "tell me a lot", mentions=[discord_fake.bot])
        await answered(runner, text)
    finally:
        await runner.stop()
    patches = calls(discord_fake, "PATCH")
    assert len(calls(discord_fake, "POST")) == 1 and 2 <= len(patches) <= 5
    assert discord_fake.rate_limited == [] and [m["content"] for m in discord_fake.messages] == [text]

"""Hostile MESSAGE_CREATE payloads: random text (lone surrogates, NULs, line breaks), names, attachments and
optional fields, sent through the fake gateway as JSON and parsed by the real discord.py into the connector.
Nothing may escape a handler or drop the gateway, and every accepted message is stored, cleaned."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import discord
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bot.ids import create_unique_uuid
from bot.sanitize import clean_text
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI, tiny_png
from tests.test_discord import GENERAL, Bot, discord_fake, fast_ready, model  # noqa: F401

# Random text is almost never a lone surrogate: splice the pieces that have broken intake in.
HOSTILE = ["\ud800", "\udfff", "\x00", "\n", "\r\n", "\u2028", "\x85", "\t", "@everyone", "<@1>", "```", "\u202e"]
hostile_text = st.lists(st.one_of(st.text(max_size=40), st.sampled_from(HOSTILE)), max_size=12).map("".join)
name = hostile_text.filter(bool)
content_type = st.one_of(st.sampled_from(["image/png", "audio/ogg", "application/pdf", "text/plain"]),
                         st.none(), name)


@st.composite
def message_parts(draw: st.DrawFn) -> dict[str, Any]:
    author = FakeDiscord.user(draw(st.integers(10**17, 10**18)), draw(name))
    author["global_name"] = draw(st.one_of(st.none(), name))
    attachments = [{"filename": draw(name), "description": draw(st.one_of(st.none(), hostile_text)),
                    "content_type": draw(content_type), "size": draw(st.integers(0, 10**9))}
                   for _ in range(draw(st.integers(0, 3)))]
    return {"author": author, "content": draw(hostile_text), "attachments": attachments,
            "drop": draw(st.sets(st.sampled_from(["edited_timestamp", "member", "embeds", "flags", "components"]))),
            "extra": draw(st.dictionaries(st.sampled_from(["poll_x", "new_field", "nonce"]), hostile_text))}


async def test_random_message_payloads_never_escape_and_are_stored_clean(
    tmp_path: Path, discord_fake: FakeDiscord, model: FakeOpenAI, caplog: pytest.LogCaptureFixture  # noqa: F811 (fixtures imported above)
) -> None:
    runner = Bot(tmp_path, discord_fake, model)
    await runner.start()
    loop = asyncio.get_running_loop()
    connector, runtime = runner.connector, runner.app.runtime  # type: ignore[union-attr]
    handled: dict[int, discord.Message] = {}
    escaped: list[BaseException] = []
    original = connector.on_message

    async def recording(message: discord.Message) -> None:
        try:
            await original(message)
        except BaseException as error:
            escaped.append(error)
            raise
        finally:
            handled[message.id] = message

    connector.on_message = recording  # type: ignore[method-assign]
    files = {kind: discord_fake.add_file(f"f.{kind.split('/')[1]}", data, kind)
             for kind, data in (("image/png", tiny_png()), ("audio/ogg", b"OggS not really"))}

    async def exercise(parts: dict[str, Any]) -> None:
        attachments = [{**files.get(a["content_type"], files["image/png"]), **a, "id": str(discord_fake.snowflake())}
                       for a in parts["attachments"]]
        payload = discord_fake.message(GENERAL, parts["author"], parts["content"], attachments=attachments)
        for key in parts["drop"]:
            payload.pop(key, None)
        payload.update(parts["extra"])
        await discord_fake.dispatch("MESSAGE_CREATE", payload)
        message_id = int(payload["id"])
        gateway = connector._task
        await discord_fake.wait_for(lambda: message_id in handled or gateway is None or gateway.done())
        assert gateway is not None and not gateway.done(), "the gateway connection ended"
        message = handled[message_id]
        stored = await runtime.store.get_memory(create_unique_uuid(runtime.agent_id, f"discord:msg:{GENERAL}:{message_id}"))
        assert stored is not None, "an accepted message was not stored"
        assert stored.content.text == clean_text(message.clean_content)
        json.dumps(stored.model_dump(mode="json"), ensure_ascii=False).encode()  # encodable: no lone surrogates
        assert all("\n" not in (a.title or "") for a in stored.content.attachments)

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate, Phase.shrink])
    @given(message_parts())
    def check(parts: dict[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(exercise(parts), loop).result(timeout=30)

    try:
        with caplog.at_level(logging.ERROR):
            await asyncio.to_thread(check)
        assert escaped == []
        assert discord_fake.identifies == 1 and connector.connected  # the gateway never broke
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records[:3]
    finally:
        await runner.stop()

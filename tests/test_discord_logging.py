"""Discord secrets never reach the logs, even at DEBUG: discord.py logs every request URL (interaction
callbacks and webhooks carry the interaction token) and every gateway event (INTERACTION_CREATE carries it)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from bot.logging_setup import configure_logging
from tests.fakes.discord_api import TOKEN, FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.test_discord import ALICE, GENERAL, Bot, discord_fake, fast_ready, model, xml  # noqa: F401

# A well-formed bot token that is not in the settings: only its shape can catch it.
FOREIGN_BOT_TOKEN = "MTA1MjM0NTY3ODkwMTIzNDU2Nw.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"


async def test_debug_logs_of_a_slash_command_and_button_presses_carry_no_tokens(
    tmp_path: Path, discord_fake: FakeDiscord, model: FakeOpenAI, restore_logging: None  # noqa: F811 (fixtures imported above)
) -> None:
    runner = Bot(tmp_path, discord_fake, model, discord_guild_id=discord_fake.guild_id, log_level="DEBUG")
    configure_logging(runner.settings)
    [handler] = logging.getLogger().handlers
    output = io.StringIO()
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(output)
    for name in ("discord.gateway", "discord.client"):  # configure_logging quiets these; log everything here
        logging.getLogger(name).setLevel(logging.DEBUG)
    await runner.start()
    try:
        ask = next(c for c in discord_fake.commands[str(discord_fake.guild_id)] if c["name"] == "ask")
        command = discord_fake.interaction(2, ALICE, GENERAL, {
            "id": ask["id"], "name": "ask", "type": 1,
            "options": [{"name": "question", "type": 3, "value": "what is the answer?"}]})
        await discord_fake.dispatch("INTERACTION_CREATE", command)
        await discord_fake.wait_for_messages(1)  # deferred, then answered by a webhook follow-up
        message = discord_fake.message(GENERAL, discord_fake.bot, "old buttons")
        press = discord_fake.interaction(3, ALICE, GENERAL, {"custom_id": "v1:old", "component_type": 2},
                                         message=message)
        await discord_fake.dispatch("INTERACTION_CREATE", press)
        await discord_fake.wait_for(lambda: len(discord_fake.interaction_responses) == 2)
        logging.getLogger("discord.http").debug("sending with Authorization: Bot %s", FOREIGN_BOT_TOKEN)
    finally:
        await runner.stop()
    text = output.getvalue()
    # The records were written: the URLs and the gateway event are in the output, the tokens are not.
    assert f"/interactions/{command['id']}/***/callback" in text and f"/interactions/{press['id']}/***/" in text
    assert "/webhooks/" in text and "INTERACTION_CREATE" in text and "'token': '***'" in text
    for secret in (command["token"], press["token"], TOKEN, FOREIGN_BOT_TOKEN, "sk-test-discord"):
        assert secret not in text

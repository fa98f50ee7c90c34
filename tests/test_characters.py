"""Several characters in one process (issue #16): real python-telegram-bot and discord.py against the fakes,
real SQLite, the real OpenAI provider against the fake model; each character answers in its own voice on
its own bots, their memories stay apart, and one broken character does not stop the others."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.agents import AgentError, StartupError, configure_agents, load_characters
from bot.app import App
from bot.character import parse_character
from bot.settings import Settings, SettingsError, load_settings, settings_for_character
from bot.types import MemoryType
from connectors.discord_connector import DiscordConnector
from connectors.telegram_connector import TelegramConnector
from connectors.telegram_connector.pacing import ChatPacer
from tests.fakes.discord_api import TOKEN as DISCORD_TOKEN
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.server_helpers import xml_reply

ROOT = Path(__file__).resolve().parent.parent
MARLOWE, QUILL = "Marlowe", "Quill"
MARLOWE_TOKEN = "111111111:AAMarloweTOKENabcdefghijklmnopqrstu"
QUILL_TOKEN = "222222222:AAQuillTOKENabcdefghijklmnopqrstuvwx"
GENERAL = 600
ALICE = FakeDiscord.user(160_000_000_000_000_042, "alice")


def voice(body: dict[str, Any]) -> str:
    """The fake model answers as whichever character its system prompt introduces."""
    system = " ".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "system")
    for name in (MARLOWE, QUILL):
        if f"You are {name}, " in system:
            return xml_reply(f"{name} speaking.")
    return xml_reply("nobody speaking.")


def write_character(directory: Path, name: str, **secrets: Any) -> Path:
    path = directory / f"{name.lower()}.json"
    path.write_text(json.dumps({"name": name, "system": f"You are {name}, a character in a test.",
                                "bio": [f"{name} is a test character."], "settings": {"secrets": secrets}}))
    return path


def process_settings(tmp_path: Path, model: FakeOpenAI, characters: list[Path], **overrides: Any) -> Settings:
    return Settings(_env_file=None, characters=characters, data_dir=tmp_path / "data", port=0, host="127.0.0.1",
                    openai_api_key="sk-test-characters-0123456789", openai_base_url=model.base_url,
                    model_providers=["openai"], model_max_retries=0, model_timeout=10, streaming="off",
                    shutdown_timeout=3, **overrides)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[App]:
    app = App(settings, agents=configure_agents(settings, load_characters(settings)))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest.fixture(autouse=True)
def quick_connectors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TelegramConnector, "poll_timeout", 1.0)
    monkeypatch.setattr(TelegramConnector, "pacer", ChatPacer(private_per_second=100, private_burst=10))
    monkeypatch.setattr(DiscordConnector, "guild_ready_timeout", 0.05)


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(reply=voice) as fake:
        yield fake


@pytest.fixture
async def marlowe_telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(MARLOWE_TOKEN, username="marlowe_bot", bot_id=7_000_001) as fake:
        yield fake


@pytest.fixture
async def quill_telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(QUILL_TOKEN, username="quill_bot", bot_id=7_000_002) as fake:
        yield fake


@pytest.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    fake.add_channel(GENERAL, "general")
    fake.members.append(fake.member(ALICE))
    await fake.start()
    yield fake
    await fake.stop()


async def dm(telegram: FakeTelegram, text: str, count: int) -> str:
    """Ada writes to this bot; returns the text of its `count`-th reply."""
    user = FakeTelegram.user()
    telegram.push({"message": telegram.message(user, FakeTelegram.private_chat(user), text)})
    replies = await telegram.wait_for("sendMessage", count=count, timeout=20)
    return replies[-1]["text"]


def on_own_bots(tmp_path: Path, marlowe_telegram: FakeTelegram, quill_telegram: FakeTelegram) -> tuple[Path, Path]:
    """Marlowe's and Quill's character files, each on its own Telegram bot."""
    return (write_character(tmp_path, MARLOWE, TELEGRAM_BOT_TOKEN=MARLOWE_TOKEN, TELEGRAM_API_ROOT=marlowe_telegram.root),
            write_character(tmp_path, QUILL, TELEGRAM_BOT_TOKEN=QUILL_TOKEN, TELEGRAM_API_ROOT=quill_telegram.root))


def prompts_of(model: FakeOpenAI, name: str) -> list[str]:
    """Every request body the model received while playing `name`."""
    texts = [json.dumps(r.body) for r in model.requests]
    return [text for text in texts if f"You are {name}, " in text]


# Two characters, two Telegram bots and one Discord bot ----------------------------------------------------
async def test_two_characters_answer_in_their_own_voices_and_keep_their_memories_apart(
    tmp_path: Path, model: FakeOpenAI, marlowe_telegram: FakeTelegram, quill_telegram: FakeTelegram,
    discord_fake: FakeDiscord,
) -> None:
    marlowe = write_character(tmp_path, MARLOWE, TELEGRAM_BOT_TOKEN=MARLOWE_TOKEN,
                              TELEGRAM_API_ROOT=marlowe_telegram.root, DISCORD_API_TOKEN=DISCORD_TOKEN,
                              DISCORD_API_BASE=discord_fake.api_base, DISCORD_GATEWAY_URL=discord_fake.gateway_url)
    quill = write_character(tmp_path, QUILL, TELEGRAM_BOT_TOKEN=QUILL_TOKEN, TELEGRAM_API_ROOT=quill_telegram.root)
    async with running(process_settings(tmp_path, model, [marlowe, quill])) as app:
        assert app.agents.status() == {MARLOWE: "running", QUILL: "running"}
        assert app.runtime is app.agents.get(MARLOWE).runtime, "the first character is the primary"
        assert await dm(marlowe_telegram, "my dog is called Rexford", 1) == "Marlowe speaking."
        assert await dm(quill_telegram, "what is my dog called?", 1) == "Quill speaking."
        await discord_fake.wait_connected()
        await discord_fake.dispatch("MESSAGE_CREATE", discord_fake.message(
            GENERAL, ALICE, f"<@{discord_fake.bot['id']}> hi", mentions=[discord_fake.bot]))
        [on_discord] = await discord_fake.wait_for_messages(1)
        assert on_discord["sent_body"]["content"] == "Marlowe speaking."

        store = app.store
        marlowe_id, quill_id = app.agents.get(MARLOWE).id, app.agents.get(QUILL).id
        assert marlowe_id != quill_id
        assert await store.search_memories_by_text("Rexford", agent_id=marlowe_id), "Marlowe remembers it"
        assert await store.search_memories_by_text("Rexford", agent_id=quill_id) == []
        for kind in MemoryType:
            quill_memories = await store.get_memories(agent_id=quill_id, type=kind, count=None)
            assert all("Rexford" not in (m.content.text or "") for m in quill_memories)
        assert any("Rexford" in text for text in prompts_of(model, MARLOWE))
        assert prompts_of(model, QUILL) and all("Rexford" not in text for text in prompts_of(model, QUILL))
    # Each bot spoke only for its own character.
    assert [c["text"] for c in marlowe_telegram.calls_to("sendMessage")] == ["Marlowe speaking."]
    assert [c["text"] for c in quill_telegram.calls_to("sendMessage")] == ["Quill speaking."]
    # The characters' tokens reached neither the database nor a prompt.
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    prompts = "".join(json.dumps(r.body) for r in model.requests).encode()
    for secret in (MARLOWE_TOKEN, QUILL_TOKEN, DISCORD_TOKEN):
        assert secret.encode() not in stored and secret.encode() not in prompts


async def test_a_rejected_token_keeps_one_character_down_and_the_other_answering(
    tmp_path: Path, model: FakeOpenAI, marlowe_telegram: FakeTelegram, quill_telegram: FakeTelegram,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = QUILL_TOKEN.replace("222222222", "333333333")
    marlowe = write_character(tmp_path, MARLOWE, TELEGRAM_BOT_TOKEN=MARLOWE_TOKEN,
                              TELEGRAM_API_ROOT=marlowe_telegram.root)
    quill = write_character(tmp_path, QUILL, TELEGRAM_BOT_TOKEN=wrong, TELEGRAM_API_ROOT=quill_telegram.root)
    caplog.set_level(logging.INFO)
    async with running(process_settings(tmp_path, model, [quill, marlowe])) as app:
        status = app.agents.status()
        assert status[MARLOWE] == "running"
        assert status[QUILL] == "failed: Telegram rejected TELEGRAM_BOT_TOKEN; check the token from @BotFather"
        assert app.agents.primary.name == QUILL, "the first character still serves the HTTP server"
        assert await dm(marlowe_telegram, "hello", 1) == "Marlowe speaking."
        again = await app.start_agent(QUILL)  # a failed primary may be started again (here it fails again)
        assert again.state == status[QUILL]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"agent {QUILL} ({quill}) stays down: Telegram rejected TELEGRAM_BOT_TOKEN; check the "
                      "token from @BotFather"] * 2
    # parley's own lines never carry the token (the HTTP clients' are masked by the process's log filter).
    assert all(wrong.split(":")[1] not in r.getMessage() for r in caplog.records if r.name.startswith("bot"))


async def test_a_rejected_discord_token_keeps_only_its_character_down(
    tmp_path: Path, model: FakeOpenAI, quill_telegram: FakeTelegram, discord_fake: FakeDiscord,
) -> None:
    marlowe = write_character(tmp_path, MARLOWE, DISCORD_API_TOKEN="not-the-fake-discord-token",
                              DISCORD_API_BASE=discord_fake.api_base, DISCORD_GATEWAY_URL=discord_fake.gateway_url)
    quill = write_character(tmp_path, QUILL, TELEGRAM_BOT_TOKEN=QUILL_TOKEN, TELEGRAM_API_ROOT=quill_telegram.root)
    async with running(process_settings(tmp_path, model, [marlowe, quill])) as app:
        assert app.agents.status() == {
            MARLOWE: "failed: Discord rejected DISCORD_API_TOKEN; copy the bot token again from the Developer Portal",
            QUILL: "running"}
        assert await dm(quill_telegram, "hello", 1) == "Quill speaking."


async def test_a_plugin_that_fails_to_load_keeps_only_its_character_down(
    tmp_path: Path, model: FakeOpenAI, marlowe_telegram: FakeTelegram,
) -> None:
    marlowe = write_character(tmp_path, MARLOWE, TELEGRAM_BOT_TOKEN=MARLOWE_TOKEN,
                              TELEGRAM_API_ROOT=marlowe_telegram.root)
    quill = tmp_path / "quill.json"
    quill.write_text(json.dumps({"name": QUILL, "bio": "b", "plugins": ["no_such_module_xyz:plugin"]}))
    async with running(process_settings(tmp_path, model, [quill, marlowe])) as app:
        assert app.agents.status()[QUILL].startswith("failed: character plugin 'no_such_module_xyz:plugin': "
                                                     "cannot load it")
        assert app.agents.primary.name == MARLOWE, "the first character that could be built is the primary"
        assert await dm(marlowe_telegram, "hello", 1) == "Marlowe speaking."


async def test_no_character_starting_is_a_start_up_error(
    tmp_path: Path, model: FakeOpenAI, marlowe_telegram: FakeTelegram,
) -> None:
    paths = [write_character(tmp_path, name, TELEGRAM_BOT_TOKEN=token, TELEGRAM_API_ROOT=marlowe_telegram.root)
             for name, token in ((MARLOWE, "444444444:AAwrongTOKENabcdefghijklmnopqrstuv"),
                                 (QUILL, "555555555:AAwrongTOKENabcdefghijklmnopqrstuv"))]
    settings = process_settings(tmp_path, model, paths)
    app = App(settings, agents=configure_agents(settings, load_characters(settings)))
    with pytest.raises(StartupError) as raised:
        await app.start()
    assert str(raised.value) == (
        f"no character could start: {MARLOWE} ({paths[0]}): failed: Telegram rejected TELEGRAM_BOT_TOKEN; check "
        f"the token from @BotFather; {QUILL} ({paths[1]}): failed: Telegram rejected TELEGRAM_BOT_TOKEN; check "
        "the token from @BotFather")


async def test_an_agent_stops_and_starts_at_run_time_while_the_others_run(
    tmp_path: Path, model: FakeOpenAI, marlowe_telegram: FakeTelegram, quill_telegram: FakeTelegram,
) -> None:
    marlowe, quill = on_own_bots(tmp_path, marlowe_telegram, quill_telegram)
    async with running(process_settings(tmp_path, model, [marlowe, quill])) as app:
        quill_id = str(app.agents.get(QUILL).id)
        with pytest.raises(AgentError, match="no agent 'nobody'; the agents are Marlowe, Quill"):
            await app.stop_agent("nobody")
        assert (await app.stop_agent(quill_id)).state == "stopped"
        assert app.agents.status() == {MARLOWE: "running", QUILL: "stopped"}
        user = FakeTelegram.user()
        quill_telegram.push({"message": quill_telegram.message(user, FakeTelegram.private_chat(user), "anyone?")})
        # Marlowe answering a later message shows the process kept working while Quill stayed silent.
        assert await dm(marlowe_telegram, "still there?", 1) == "Marlowe speaking."
        assert quill_telegram.calls_to("sendMessage") == []
        assert (await app.start_agent("quill")).state == "running"
        (reply,) = await quill_telegram.wait_for("sendMessage", timeout=20)
        assert reply["text"] == "Quill speaking.", "the message sent while it was down is answered"
        # The first character too, as elizaOS's server allows any agent.
        assert (await app.stop_agent(MARLOWE)).state == "stopped"
        assert app.agents.status() == {MARLOWE: "stopped", QUILL: "running"}
        assert (await app.start_agent(MARLOWE)).state == "running"
        assert await dm(marlowe_telegram, "back?", 2) == "Marlowe speaking."
        assert (await app.stop_agent(QUILL)).state == "stopped"
        with pytest.raises(AgentError, match="Marlowe is the last agent running; stop the process instead"):
            await app.stop_agent(MARLOWE)


async def test_the_only_character_runs_as_long_as_the_process(tmp_path: Path, model: FakeOpenAI) -> None:
    async with running(process_settings(tmp_path, model, [write_character(tmp_path, MARLOWE)])) as app:
        with pytest.raises(AgentError, match="Marlowe is the only agent"):
            await app.stop_agent(MARLOWE)


# Configuration -------------------------------------------------------------------------------------------
def test_character_secrets_overlay_the_process_settings(tmp_path: Path) -> None:
    base = Settings(_env_file=None, openai_api_key="sk-from-the-environment", telegram_bot_token=MARLOWE_TOKEN,
                    openai_large_model="gpt-4o")
    own = parse_character({"name": "A", "bio": "b", "settings": {"secrets": {
        "OPENAI_LARGE_MODEL": "gpt-own", "DISCORD_API_TOKEN": "discord-own", "PORT": "1", "SOME_PLUGIN_KEY": "x"}},
        "secrets": {"TELEGRAM_ALLOWED_CHATS": "5,6"}}).character
    alone = settings_for_character(base, own, source="a.json")
    assert alone.openai_large_model == "gpt-own" and alone.telegram_allowed_chats == [5, 6]
    assert alone.telegram_bot_token.get_secret_value() == MARLOWE_TOKEN, "a single character uses the env token"
    assert alone.port == base.port, "process settings are not the character's"
    several = settings_for_character(base, own, source="a.json", alone=False)
    assert several.telegram_bot_token is None, "with several characters each brings its own token"
    assert several.discord_api_token.get_secret_value() == "discord-own"
    assert several.openai_api_key.get_secret_value() == "sk-from-the-environment", "model keys are a fallback"
    plain = parse_character({"name": "B", "bio": "b"}).character
    assert settings_for_character(base, plain, source="b.json") is base


def test_a_bad_secret_is_one_line_naming_the_file_and_the_key(tmp_path: Path) -> None:
    bad = parse_character({"name": "A", "bio": "b",
                           "settings": {"secrets": {"MODEL_TIMEOUT": "soon", "OPENAI_API_KEY": "sk-x"}}}).character
    with pytest.raises(SettingsError) as raised:
        settings_for_character(Settings(_env_file=None), bad, source="chars/a.json")
    message = str(raised.value)
    assert message.startswith("chars/a.json: settings.secrets.MODEL_TIMEOUT: ")
    assert message.endswith("Fix: correct MODEL_TIMEOUT in the character's settings.secrets")
    assert "\n" not in message and "soon" not in message


def test_characters_list_errors(tmp_path: Path) -> None:
    a = write_character(tmp_path, "A")
    with pytest.raises(SettingsError, match=r"^CHARACTERS: .*'missing.json' is not a file"):
        load_settings(_env_file=None, characters=f"{a},missing.json")
    with pytest.raises(SettingsError, match=r"is listed twice; list each character file once"):
        load_settings(_env_file=None, characters=f"{a},{tmp_path}/../{tmp_path.name}/a.json")
    assert load_settings(_env_file=None, characters=f" {a} ").character_paths == [a]
    assert load_settings(_env_file=None, character_path=a).character_paths == [a]


def test_the_same_token_or_name_twice_is_a_start_up_error_naming_both_files(tmp_path: Path) -> None:
    a = write_character(tmp_path, "A", TELEGRAM_BOT_TOKEN=MARLOWE_TOKEN)
    b = write_character(tmp_path, "B", TELEGRAM_BOT_TOKEN=MARLOWE_TOKEN)
    settings = Settings(_env_file=None, characters=[a, b])
    with pytest.raises(StartupError) as raised:
        configure_agents(settings, load_characters(settings))
    assert str(raised.value) == (f"{a} and {b} have the same TELEGRAM_BOT_TOKEN: one bot cannot be two characters. "
                                 "Fix: give each character its own TELEGRAM_BOT_TOKEN in its settings.secrets")
    twin = tmp_path / "twin.json"
    twin.write_text(a.read_text().replace(MARLOWE_TOKEN, QUILL_TOKEN))
    settings = Settings(_env_file=None, characters=[a, twin])
    with pytest.raises(StartupError, match=f"^{a} and {twin} are the same agent \\(A\\)"):
        configure_agents(settings, load_characters(settings))


def test_only_the_first_character_may_take_telegram_webhooks(tmp_path: Path) -> None:
    a = write_character(tmp_path, "A", TELEGRAM_BOT_TOKEN=MARLOWE_TOKEN)
    b = write_character(tmp_path, "B", TELEGRAM_BOT_TOKEN=QUILL_TOKEN,
                        TELEGRAM_WEBHOOK_URL="https://example.com/telegram/webhook")
    settings = Settings(_env_file=None, characters=[a, b])
    with pytest.raises(StartupError, match=f"^{b}: TELEGRAM_WEBHOOK_URL: only the first character"):
        configure_agents(settings, load_characters(settings))
    settings = Settings(_env_file=None, characters=[b, a])
    assert [c.settings.telegram_webhook_url for c in configure_agents(settings, load_characters(settings))] == [
        "https://example.com/telegram/webhook", None]


async def test_python_m_bot_refuses_a_shared_token_without_printing_it(tmp_path: Path) -> None:
    a = write_character(tmp_path, "A", DISCORD_API_TOKEN=DISCORD_TOKEN)
    b = write_character(tmp_path, "B", DISCORD_API_TOKEN=DISCORD_TOKEN)
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "PORT": "0", "CHARACTERS": ""}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--character", str(a), "--character", str(b), cwd=ROOT, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert err.decode().strip().splitlines()[-1] == (
        f"parley: {a} and {b} have the same DISCORD_API_TOKEN: one bot cannot be two characters. Fix: give each "
        "character its own DISCORD_API_TOKEN in its settings.secrets")
    assert DISCORD_TOKEN.encode() not in out + err


async def test_python_m_bot_runs_two_characters_on_their_own_bots_without_logging_their_tokens(
    tmp_path: Path, model: FakeOpenAI, marlowe_telegram: FakeTelegram, quill_telegram: FakeTelegram,
) -> None:
    marlowe, quill = on_own_bots(tmp_path, marlowe_telegram, quill_telegram)
    quiet = write_character(tmp_path, "Silent")
    # TELEGRAM_BOT_TOKEN in the environment is ignored with several characters: were it Silent's, it
    # would be Marlowe's token twice and start-up would stop.
    env = {**os.environ, "CHARACTERS": f"{marlowe},{quill},{quiet}", "DATA_DIR": str(tmp_path / "data"),
           "PORT": "0", "HOST": "127.0.0.1", "OPENAI_API_KEY": "sk-test-characters-0123456789",
           "OPENAI_BASE_URL": model.base_url, "MODEL_PROVIDERS": "openai", "LOG_LEVEL": "DEBUG",
           "STREAMING": "off", "SHUTDOWN_TIMEOUT": "5", "TELEGRAM_BOT_TOKEN": MARLOWE_TOKEN}
    log_path = tmp_path / "bot.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file, stderr=log_file)
    try:
        assert await dm(marlowe_telegram, "hello", 1) == "Marlowe speaking."
        assert await dm(quill_telegram, "hello", 1) == "Quill speaking."
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 30)
    logs = log_path.read_bytes()
    assert code == 0, logs[-2000:]
    assert f"Silent ({quiet}) has no TELEGRAM_BOT_TOKEN or DISCORD_API_TOKEN".encode() in logs
    assert b"Quill is ready" in logs and b"Marlowe is ready" in logs and b"Silent is ready" in logs
    for secret in (MARLOWE_TOKEN, QUILL_TOKEN):
        assert secret.split(":")[1].encode() not in logs

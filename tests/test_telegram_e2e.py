"""`python -m bot` as a real process with the Telegram connector, against the fake Bot API and the
fake model API on 127.0.0.1; every byte it logs and stores is then scanned for the bot token."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from plugins.voice import to_ogg_opus
from tests.fakes.openai_server import FakeOpenAI, sine_wav
from tests.fakes.telegram_api import FakeTelegram
from tests.server_helpers import env_for, xml_reply

TOKEN = "987654321:AAEe2eTOKENzyxwvutsrqponmlkjihgfedcba"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TOKEN) as fake:
        yield fake


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(reply=xml_reply("Hi from the process."), transcript="tell me a joke")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def start_bot(tmp_path: Path, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, Path]:
    log_path = tmp_path / "bot.log"
    log_file = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=ROOT, env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
    )
    log_file.close()
    return process, log_path


def assert_no_token(*blobs: bytes) -> None:
    secret = TOKEN.encode()
    for blob in blobs:
        assert secret not in blob and TOKEN.split(":")[1].encode() not in blob


async def test_dm_and_voice_through_python_m_bot_never_leak_the_token(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    env = env_for(tmp_path, model.base_url, TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_ROOT=telegram.root,
                  LOG_LEVEL="DEBUG", SHUTDOWN_TIMEOUT="5")
    process, log_path = await start_bot(tmp_path, env)
    try:
        await telegram.wait_for("setMyCommands", timeout=30)
        user = FakeTelegram.user()
        chat = FakeTelegram.private_chat(user)
        incoming = telegram.push({"message": telegram.message(user, chat, "hello bot")})["message"]
        (reply,) = await telegram.wait_for("sendMessage", timeout=20)
        assert reply["text"] == "Hi from the process."
        assert reply["reply_parameters"]["message_id"] == incoming["message_id"]
        telegram.push({"message": telegram.voice_message(user, chat, await to_ogg_opus(sine_wav()))})
        (voice,) = await telegram.wait_for("sendVoice", timeout=20)
        assert voice["voice"][:4] == b"OggS"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 30)
    assert code == 0
    logs = log_path.read_bytes()
    assert b"telegram connector enabled" in logs, "the log was captured"
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert b"tell me a joke" in stored, "the database was captured"
    prompts = b"".join(repr(r.body).encode() for r in model.requests)
    assert_no_token(logs, stored, prompts)


async def test_a_rejected_token_stops_start_up_without_printing_it(
    tmp_path: Path, telegram: FakeTelegram, model: FakeOpenAI
) -> None:
    wrong = TOKEN.replace("987654321", "111111111")
    env = env_for(tmp_path, model.base_url, TELEGRAM_BOT_TOKEN=wrong, TELEGRAM_API_ROOT=telegram.root,
                  LOG_LEVEL="DEBUG")
    process, log_path = await start_bot(tmp_path, env)
    code = await asyncio.wait_for(process.wait(), 30)
    output = log_path.read_bytes()
    assert code == 2
    assert b"Telegram rejected TELEGRAM_BOT_TOKEN" in output
    assert wrong.encode() not in output and wrong.split(":")[1].encode() not in output

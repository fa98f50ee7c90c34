"""Discord start-up failures: one clear line from `python -m bot`, and no aiohttp leak noise after it."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.discord_api import FakeDiscord

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    yield fake
    await fake.stop()


def _closed_port() -> int:
    """A local port nothing listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _run_bot(tmp_path: Path, api_base: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "ANTHROPIC", "TELEGRAM", "DISCORD"))}
    env = {**clean, "PYTHONPATH": str(ROOT), "CHARACTER_PATH": str(ROOT / "characters" / "default.json"),
           "DATA_DIR": str(tmp_path / "data"), "PORT": "0", "CONSOLE": "off",
           "DISCORD_API_TOKEN": "garbage", "DISCORD_API_BASE": api_base}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


def _assert_one_clean_error(returncode: int, stderr: str, expected: str) -> None:
    assert returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("parley:")]
    assert len(errors) == 1 and expected in errors[0], stderr
    assert stderr.rstrip().endswith(errors[0]), f"output after the error line:\n{stderr}"
    assert "Unclosed" not in stderr and "Traceback" not in stderr, stderr


async def test_rejected_token_is_one_line_and_closes_the_session(tmp_path: Path, discord_fake: FakeDiscord) -> None:
    returncode, stderr = await _run_bot(tmp_path, discord_fake.api_base)
    _assert_one_clean_error(returncode, stderr, "Discord rejected DISCORD_API_TOKEN")


async def test_unreachable_discord_is_one_line_and_closes_the_session(tmp_path: Path) -> None:
    api_base = f"http://127.0.0.1:{_closed_port()}/api/v10"
    returncode, stderr = await _run_bot(tmp_path, api_base)
    _assert_one_clean_error(returncode, stderr, f"cannot reach Discord at {api_base}")

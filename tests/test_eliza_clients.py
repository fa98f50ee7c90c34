"""The official elizaOS clients, unmodified, against a real `python -m bot`: `@elizaos/api-client`
1.7.2 for agents, sessions, server and memory, and `socket.io-client` for a real-time round trip
with stream chunks (tests/node/eliza_clients.mjs says what each step checks).

The clients come from the npm registry: `npm ci --prefix tests/node` (.ci/run does it). Without
them the test is skipped, unless PARLEY_REQUIRE_NODE_CLIENTS=1 (CI) says they must be there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.cluster_helpers import ROOT, BotProcess, free_port
from tests.fakes.openai_server import FakeOpenAI
from tests.server_helpers import env_for, xml_reply

NODE_DIR = ROOT / "tests" / "node"
KEY = "node-clients-key-0123456789"


@pytest.fixture
def node() -> str:
    node = shutil.which("node")
    problem = None if node else "node is not installed"
    if problem is None and not (NODE_DIR / "node_modules" / "@elizaos" / "api-client").is_dir():
        problem = "the elizaOS clients are not installed: run `npm ci --prefix tests/node`"
    if problem is not None:
        if os.environ.get("PARLEY_REQUIRE_NODE_CLIENTS") == "1":
            pytest.fail(f"{problem} (PARLEY_REQUIRE_NODE_CLIENTS=1 makes it required)", pytrace=False)
        pytest.skip(problem)
    assert node is not None
    return node


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[BotProcess]:
    async with FakeOpenAI(reply=xml_reply("Once upon a time there was a small and very patient bot."),
                          stream_chunks=6, stream_seconds=0.3) as model:
        env = env_for(tmp_path, model.base_url, PORT=str(free_port()), API_KEY=KEY, CONSOLE="off",
                      STREAMING="all", RATE_LIMIT_PER_MINUTE="0")
        process = await BotProcess.start("bot", env, tmp_path / "bot.log")
        try:
            async with aiohttp.ClientSession() as http:
                await process.wait_ready(http)
            yield process
        finally:
            await process.stop()


async def test_the_official_elizaos_clients_work_unmodified(node: str, bot: BotProcess) -> None:
    run = await asyncio.create_subprocess_exec(
        node, "eliza_clients.mjs", cwd=NODE_DIR, env={**os.environ, "BASE_URL": bot.url, "API_KEY": KEY},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(run.communicate(), 180)
    report = output.decode(errors="replace")
    assert run.returncode == 0 and report.rstrip().endswith("ALL OK"), f"{report}\n--- bot log ---\n{bot.log_tail()}"
    assert KEY not in bot.log()  # the key never reaches the logs

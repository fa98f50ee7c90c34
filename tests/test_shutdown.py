"""SIGTERM during a burst, with `python -m bot` as a real subprocess (as a dyno runs it).

The process must stop taking work (503), finish the replies in flight, exit 0, and leave every
accepted message with a stored reply (or a stored error reply) in the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.fakes.openai_server import FakeOpenAI
from tests.server_helpers import env_for, xml_reply

ROOT = Path(__file__).resolve().parents[1]
MODEL_DELAY = 0.3
ROOMS, PER_ROOM = 6, 3


class SlowOpenAI(FakeOpenAI):
    """Every chat completion takes MODEL_DELAY seconds, so the burst is still in flight at SIGTERM."""

    async def start(self) -> str:
        self.busy = asyncio.Event()
        return await super().start()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if len(self.requests_to("/chat/completions")) >= ROOMS - 1:  # every room has a reply in flight
            self.busy.set()
        await asyncio.sleep(MODEL_DELAY)
        return await super()._chat(request)


@pytest.fixture
async def slow_model() -> AsyncIterator[SlowOpenAI]:
    fake = SlowOpenAI(reply=xml_reply("Done."))
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def _bound_port(stream: asyncio.StreamReader, log: list[str]) -> int:
    while True:
        line = (await stream.readline()).decode(errors="replace")
        if not line:
            raise AssertionError("the bot exited before listening:\n" + "".join(log))
        log.append(line)
        found = re.search(r"HTTP server listening on \S+:(\d+)", line)
        if found:
            return int(found.group(1))


async def _collect(stream: asyncio.StreamReader, log: list[str]) -> None:
    async for line in stream:
        log.append(line.decode(errors="replace"))


def _stored(db: Path) -> tuple[dict[str, str], dict[str, str]]:
    """User messages (id -> text) and replies (in_reply_to -> text) in the SQLite file."""
    with sqlite3.connect(db) as conn:
        agent = conn.execute("SELECT id FROM agents").fetchone()[0]
        rows = conn.execute("SELECT id, entity_id, content FROM memories WHERE type = 'messages'").fetchall()
    messages, replies = {}, {}
    for memory_id, entity_id, content in rows:
        data = json.loads(content)
        if entity_id == agent:
            replies[data["in_reply_to"]] = data["text"]
        else:
            messages[memory_id] = data["text"]
    return messages, replies


async def test_sigterm_during_a_burst_finishes_accepted_work_and_exits_0(tmp_path: Path,
                                                                        slow_model: SlowOpenAI) -> None:
    env = {**os.environ, **env_for(tmp_path, slow_model.base_url, RATE_LIMIT_PER_MINUTE="0",
                                   SHUTDOWN_TIMEOUT="20"), "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=tmp_path, env=env,
        stdin=asyncio.subprocess.PIPE,  # kept open: the console chat waits instead of finishing
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    log: list[str] = []
    try:
        port = await asyncio.wait_for(_bound_port(process.stderr, log), 30)
        collector = asyncio.create_task(_collect(process.stderr, log))
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            for _ in range(300):
                try:
                    async with http.get(url + "/ready") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("never ready:\n" + "".join(log))

            async def send(room: int, n: int) -> tuple[int, dict | None]:
                body = {"text": f"room {room} message {n}", "user_id": f"user{room}", "room_id": f"room{room}"}
                try:
                    async with http.post(url + "/api/messages", json=body) as response:
                        return response.status, await response.json()
                except aiohttp.ClientConnectionError:
                    return 0, None  # the server had already closed: not accepted

            burst = [asyncio.create_task(send(room, n)) for room in range(ROOMS) for n in range(PER_ROOM)]
            await asyncio.wait_for(slow_model.busy.wait(), 10)  # the burst is being worked on
            process.send_signal(signal.SIGTERM)
            process.stdin.close()  # the console chat's blocking readline thread would keep the process alive
            await asyncio.sleep(0.1)
            late = await send(99, 0)
            results = await asyncio.gather(*burst)
        code = await asyncio.wait_for(process.wait(), 30)
        await collector
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    report = "".join(log)
    assert code == 0, report
    assert late[0] in (0, 503), late
    accepted = [body for status, body in results if status == 200]
    refused = [status for status, _ in results if status != 200]
    assert set(refused) <= {0, 503}, results
    assert accepted, "the burst should have been in flight at SIGTERM"
    assert all(body["reply"]["text"] == "Done." for body in accepted)

    messages, replies = _stored(tmp_path / "data" / "parley.db")
    assert {body["message_id"] for body in accepted} <= set(messages)
    unanswered = {text for memory_id, text in messages.items() if memory_id not in replies}
    assert not unanswered, f"accepted but never answered: {unanswered}\n{report}"
    assert "room 99" not in " ".join(messages.values())
    assert "Traceback" not in report, report

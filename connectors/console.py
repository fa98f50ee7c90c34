"""A terminal chat with the character: the connector used when no platform token is set.

Interactive on a terminal (the character's name as the prompt, Ctrl-D quits). With stdin piped
it reads one message per line, prints each reply on one line of stdout and finishes after the last reply,
so a conversation can be scripted.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import threading
from collections.abc import Callable
from typing import TextIO

from bot.ids import create_unique_uuid
from bot.plugin import Connector, Plugin, Priority
from bot.sanitize import clean_text
from bot.settings import ConsoleMode, Settings
from bot.types import ChannelType, Content, Entity, Memory, Room

SOURCE = "console"


def console_wanted(settings: Settings, has_platform: bool, stdin: TextIO = sys.stdin) -> bool:
    """`CONSOLE=auto`: only without a platform and when stdin can carry input (not /dev/null)."""
    if settings.console is not ConsoleMode.AUTO:
        return settings.console is ConsoleMode.ON
    if has_platform:
        return False
    try:
        mode = os.fstat(stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stdin.isatty() or not stat.S_ISCHR(mode)


class LineReader:
    """Reads stdin on a daemon thread, so a pending read never keeps the process from exiting."""

    def __init__(self, stdin: TextIO) -> None:
        self._stdin = stdin
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, name="console-stdin", daemon=True).start()

    def _pump(self) -> None:
        while True:
            line = self._stdin.readline()
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line)
            if not line:
                return

    async def readline(self) -> str:
        """The next line, or "" at end of input."""
        return await self._queue.get()


class ConsoleConnector(Connector):
    service_type = "console"
    source = SOURCE
    stdin: TextIO = sys.stdin
    stdout: TextIO = sys.stdout
    on_finished: Callable[[], None] = staticmethod(lambda: None)

    def __init__(self, runtime) -> None:
        super().__init__(runtime)
        self._task: asyncio.Task[None] | None = None
        self._interactive = self.stdin.isatty()
        agent = runtime.agent_id
        self.user = Entity(id=create_unique_uuid(agent, "console:user"), agent_id=agent, names=["User"])
        self.room = Room(id=create_unique_uuid(agent, "console:room"), agent_id=agent, name="console",
                         source=SOURCE, type=ChannelType.DM, channel_id="console")

    @property
    def connected(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        await self.runtime.ensure_connection(self.user, self.room)
        self._task = asyncio.create_task(self._loop(), name="console")

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _print(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    async def _reply(self, content: Content) -> list[str]:
        name = self.runtime.character.name
        text = content.text
        if content.buttons:
            text += "\n" + "  ".join(f"[{b.label}]" for row in content.buttons for b in row)
        if self._interactive:
            self._print(f"{name}: {text}")
        else:  # piped: exactly one line per reply, so scripts can pair questions and answers
            self._print(" ".join(line.strip() for line in text.splitlines() if line.strip()))
        return []

    async def is_owner(self, message: Memory) -> bool:
        return True  # the person at the terminal is the one running the bot

    async def send_to_room(self, room: Room, content: Content) -> list[str]:
        return await self._reply(content)

    async def _loop(self) -> None:
        reader = LineReader(self.stdin)
        if self._interactive:
            self._print(f"Chatting with {self.runtime.character.name}. Ctrl-D to quit.")
        try:
            while True:
                if self._interactive:
                    self.stdout.write("You: ")
                    self.stdout.flush()
                line = await reader.readline()
                if not line:
                    break
                text = clean_text(line.rstrip("\n"))  # a C locale decodes bad bytes to lone surrogates
                if not text.strip():
                    continue
                message = Memory(
                    entity_id=self.user.id, agent_id=self.runtime.agent_id, room_id=self.room.id,
                    content=Content(text=text, source=SOURCE, channel_type=ChannelType.DM),
                )
                ticket = await self.runtime.receive_message(message, self._reply)
                await ticket.outcome
        finally:
            if self._interactive:
                self._print("")
            self.on_finished()


def console_plugin(on_finished: Callable[[], None] | None = None, stdin: TextIO | None = None,
                   stdout: TextIO | None = None) -> Plugin:
    attrs = {"on_finished": staticmethod(on_finished or (lambda: None))}
    if stdin is not None:
        attrs["stdin"] = stdin
    if stdout is not None:
        attrs["stdout"] = stdout
    connector = type("ConsoleConnector", (ConsoleConnector,), attrs)
    return Plugin(name="console", description="Terminal chat", priority=Priority.PLATFORM, services=[connector])

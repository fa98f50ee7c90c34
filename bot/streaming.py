"""Replies shown while the model writes them.

Three parts meet here. A model handler that can stream calls `params["stream"]` (a `TextListener`)
with each piece of text as it arrives, and still returns the whole output as before, so actions,
tool calls and storage do not change. The pipeline turns those pieces into the reply's text so far.
A connector shows that text through a `ReplyStream` it opens for the reply (a Telegram draft or an
edited message, a Discord edit, Server-Sent Events), and the reply's final text replaces it once.

Connectors offer streams by giving the pipeline a `StreamingCallback`: their ordinary reply
callback with an `open_stream()` beside it.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from bot.types import Content

log = logging.getLogger(__name__)

# What a streaming model handler calls with each new piece of text (a delta, not the text so far).
TextListener = Callable[[str], Awaitable[None]]


class TextSink(Protocol):
    """Where a model call's text goes while it is generated; the runtime asks for a fresh listener
    per attempt, so text from a provider that failed halfway is dropped before the next one starts."""

    def listener(self, structured: bool) -> TextListener: ...


class ReplyStream(ABC):
    """One reply shown while it is written. `update` gets the whole text so far (never less than
    before within one round of the model; `reset` starts over when a round ends in tool calls);
    `finish` delivers the final content in place of what was shown, exactly once."""

    @abstractmethod
    async def update(self, text: str) -> None: ...

    @abstractmethod
    async def reset(self) -> None:
        """The text shown so far will not be the reply (the model called a tool instead)."""

    @abstractmethod
    async def finish(self, content: Content) -> list[str] | None:
        """Deliver `content` as the reply, reusing what was shown; returns the platform keys of the
        messages that now hold it. None: nothing was shown (or it was withdrawn) and `content` is
        the connector callback's to send as usual."""

    @abstractmethod
    async def close(self) -> None:
        """The run is over: withdraw anything shown that no reply finished."""


@runtime_checkable
class StreamingCallback(Protocol):
    """A connector's reply callback that can also show a reply while it is written."""

    async def __call__(self, content: Content) -> list[str]: ...

    def open_stream(self) -> ReplyStream | None:
        """A stream for the next reply, or None where this chat does not stream (STREAMING)."""


class PacedStream(ReplyStream):
    """A stream that shows the newest text at most once per `interval`: the first text at once,
    then whatever arrived meanwhile in one request. Platforms count every edit, so pieces are
    never shown one by one. Subclasses say how to show text (`show`) and how to end (`finish`,
    after `stop()` has waited for a request in flight, so its result is known)."""

    interval: float = 1.0

    def __init__(self) -> None:
        self.text = ""  # the newest text
        self.shown = ""  # what the platform shows now
        self._changed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.finished = False

    @abstractmethod
    async def show(self, text: str) -> bool:
        """Make the platform show `text`; False when it was not shown now (no budget, rate-limited),
        so it is tried again after `interval`."""

    async def update(self, text: str) -> None:
        if self.finished or text == self.text:
            return
        self.text = text
        self._changed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="reply-stream")

    async def _run(self) -> None:
        while not self._stopped.is_set():
            await self._changed.wait()
            if self._stopped.is_set():
                return
            self._changed.clear()
            text = self.text
            if text != self.shown:
                try:
                    if await self.show(text):
                        self.shown = text
                    else:
                        self._changed.set()
                except Exception as error:  # the final delivery still comes; a preview is best effort
                    log.debug("showing a streamed reply failed: %s: %s", type(error).__name__, error)
                    self._changed.set()
            try:
                await asyncio.wait_for(self._stopped.wait(), self.interval)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """No more previews; returns once a request in flight has ended (never cancelled mid-way,
        or a message could reach the chat without us knowing its id — and be sent again)."""
        self.finished = True
        self._stopped.set()
        self._changed.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

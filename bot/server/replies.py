"""The reply to an accepted message as a sequence of events, for whatever carries it to a client
(Server-Sent Events in `sse`, Socket.IO in `eliza.realtime`): the text it gains while it is
written, then how the run ended. One place knows how a run's chunks and its end fit together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from .app import internal_error
from .conversation import Exchange, Pending, StreamingCollector
from .errors import ApiError
from .models import StreamChunk

log = logging.getLogger(__name__)

ReplyEvent = StreamChunk | Exchange | ApiError


def _settle(reply: asyncio.Task[Exchange]) -> None:
    """Read a finished reply's error, so one nobody took (the client had gone) is not logged as lost."""
    if not reply.cancelled():
        reply.exception()


async def reply_events(pending: Pending, timeout: float) -> AsyncIterator[ReplyEvent]:
    """Each `StreamChunk` of the reply as it is written (when `pending` streams), then exactly one
    end: the `Exchange`, or the `ApiError` a client gets for what ended the run otherwise (timeout,
    rate limit; INTERNAL for a failure of ours, logged here).

    Close it when done (`contextlib.aclosing`): closing stops the waiting only, never the run,
    whose future `Pending.reply` shields; the run goes on and its reply is stored."""
    reply = asyncio.create_task(pending.reply(timeout), name=f"reply-{pending.message.id}")
    reply.add_done_callback(_settle)
    try:
        collector = pending.collector
        if isinstance(collector, StreamingCollector):
            reply.add_done_callback(lambda _: collector.chunks.put_nowait(None))  # after every chunk of the run
            while (chunk := await collector.chunks.get()) is not None:
                yield chunk
        try:
            end: Exchange | ApiError = await reply
        except ApiError as error:
            end = error
        except Exception:
            log.exception("the reply to message %s could not be completed", pending.message.id)
            end = internal_error()
        yield end
    finally:
        reply.cancel()

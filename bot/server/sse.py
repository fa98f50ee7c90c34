"""Replies as Server-Sent Events, with elizaOS's event names, for a request that asked for them
(`Accept: text/event-stream`, or `"transport": "sse"` in the body).

Once the message is accepted (stored; anything refused before that is an ordinary JSON error), the
answer is `text/event-stream`, each event one JSON `data:` line:

- `user_message`: the stored message, as the room's history lists it;
- `chunk` (any number): `{"messageId", "chunk", "index", "reset"}`, the text a reply gained. A
  client appends the chunks of one `messageId`; `reset: true` means to clear that reply's text
  first (what was shown will not be the reply, e.g. the model called a tool instead);
- then exactly one of `done`: the same result the JSON answer carries (final replies, ids, status),
  or `error`: `{"success": false, "error": {"code", "message"}}`, as the JSON answer's error
  (RATE_LIMITED, REPLY_TIMEOUT…).

Comment lines (`: ping`) keep idle connections open. A client that hangs up changes nothing for the
run: it goes on and its reply is stored, to be read from the history.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp_sse import EventSourceResponse
from pydantic import BaseModel

from .conversation import Exchange, Pending, StreamingCollector
from .errors import ApiError
from .models import ErrorInfo, ErrorResponse

log = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}  # set before the body starts


def wants_stream(request: web.Request, transport: str | None) -> bool:
    """The body's `transport` decides; without one, an Accept header naming text/event-stream."""
    if transport is not None:
        return transport == "sse"
    accepted = (part.split(";", 1)[0].strip().lower() for header in request.headers.getall("Accept", [])
                for part in header.split(","))
    return EVENT_STREAM in accepted


def _error(code: str, message: str, details: list[dict[str, str]] | None = None) -> str:
    """The body the JSON answer has for this error (no `details` key when there are none)."""
    info = ErrorInfo.model_validate({"code": code, "message": message, "details": details})
    return ErrorResponse(error=info).model_dump_json(exclude_none=True)


def _last_event(reply: asyncio.Task[Exchange], result: Callable[[Exchange], BaseModel]) -> tuple[str, str]:
    try:
        return "done", _json(result(reply.result()))
    except ApiError as error:
        return "error", _error(error.code, error.message, error.details)
    except Exception:
        log.exception("a streamed reply could not be completed")
        return "error", _error("INTERNAL", "internal error; the operator can find details in the logs")


def _json(data: BaseModel) -> str:
    return data.model_dump_json(by_alias=True)


def _settle(reply: asyncio.Task[Exchange]) -> None:
    """Read a finished reply's error, so one nobody sent (the client had gone) is not logged as lost."""
    if not reply.cancelled():
        reply.exception()


async def stream_reply(request: web.Request, pending: Pending, *, timeout: float, user_message: BaseModel,
                       result: Callable[[Exchange], BaseModel]) -> web.StreamResponse:
    """Send the accepted message, its reply's chunks as they are written, then `done` or `error`."""
    collector = pending.collector
    assert isinstance(collector, StreamingCollector)
    reply = asyncio.create_task(pending.reply(timeout), name="api-stream-reply")
    reply.add_done_callback(_settle)
    reply.add_done_callback(lambda _: collector.chunks.put_nowait(None))  # after every chunk of the run
    response = EventSourceResponse(headers=_HEADERS, allow_all_methods=True)
    try:
        await response.prepare(request)
        async with response:
            await response.send(_json(user_message), event="user_message")
            while (chunk := await collector.chunks.get()) is not None:
                await response.send(_json(chunk), event="chunk")
            name, data = _last_event(reply, result)
            await response.send(data, event=name)
    except (ConnectionResetError, TimeoutError):  # the client left (or stalled): the run is not its to end
        log.debug("a client left the reply stream of message %s", pending.message.id)
    finally:
        reply.cancel()  # stops waiting only: the run's own future is shielded
    return response

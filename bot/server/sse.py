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

import logging
from collections.abc import Callable
from contextlib import aclosing

from aiohttp import web
from aiohttp_sse import EventSourceResponse
from pydantic import BaseModel

from .app import internal_error
from .conversation import Exchange, Pending, StreamingCollector
from .errors import ApiError
from .models import ErrorInfo, ErrorResponse, StreamChunk
from .replies import reply_events

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


def _last_event(end: Exchange | ApiError, result: Callable[[Exchange], BaseModel]) -> tuple[str, str]:
    """`done` with what the JSON answer carries, or `error` with the JSON answer's error."""
    if isinstance(end, Exchange):
        try:
            return "done", _json(result(end))
        except ApiError as error:
            end = error
        except Exception:
            log.exception("a streamed reply could not be completed")
            end = internal_error()
    return "error", _error(end.code, end.message, end.details)


def _json(data: BaseModel) -> str:
    return data.model_dump_json(by_alias=True)


async def stream_reply(request: web.Request, pending: Pending, *, timeout: float, user_message: BaseModel,
                       result: Callable[[Exchange], BaseModel]) -> web.StreamResponse:
    """Send the accepted message, its reply's chunks as they are written, then `done` or `error`."""
    assert isinstance(pending.collector, StreamingCollector)
    response = EventSourceResponse(headers=_HEADERS, allow_all_methods=True)
    try:
        await response.prepare(request)
        async with response, aclosing(reply_events(pending, timeout)) as events:
            await response.send(_json(user_message), event="user_message")
            async for event in events:
                if isinstance(event, StreamChunk):
                    await response.send(_json(event), event="chunk")
                else:
                    name, data = _last_event(event, result)
                    await response.send(data, event=name)
    except (ConnectionResetError, TimeoutError):  # the client left (or stalled): the run is not its to end
        log.debug("a client left the reply stream of message %s", pending.message.id)
    return response

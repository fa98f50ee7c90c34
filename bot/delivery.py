"""The moment a reply becomes visible: connectors say when, a run's owner records it.

With several processes, a run cut short (its process killed) is run again by another process —
unless its reply may already have gone out, which would make it twice. Only the connector knows
when that is: after any rate-limit wait, right before the request that shows the message. So a
connector awaits `before_send()` there, and whoever runs the message sets what that records
(`recording_sends`); outside such a run it does nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_before_send: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar("parley_before_send", default=None)


async def before_send() -> None:
    """Call right before the platform request that makes a reply (or a part of it) visible."""
    hook = _before_send.get()
    if hook is not None:
        await hook()


@contextmanager
def recording_sends(hook: Callable[[], Awaitable[None]]) -> Iterator[None]:
    """Run `hook` before each visible send made in this context (tasks started in it inherit it)."""
    token = _before_send.set(hook)
    try:
        yield
    finally:
        _before_send.reset(token)

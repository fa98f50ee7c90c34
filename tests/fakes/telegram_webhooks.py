"""Telegram's side of webhooks, in front of several processes: a load balancer for `FakeTelegram`.

Real Telegram POSTs each update to the bot's webhook URL with the secret token in a header and
waits for a 2xx; a non-2xx answer or a broken connection means "not delivered" and the update is
tried again a little later. Updates of one chat are delivered one after another (the next only
once the previous was accepted), different chats at the same time, at most `max_connections` at
once (Telegram's default is 40). Behind a platform's load balancer each attempt may reach a
different web process, so here every attempt goes to the next URL in round-robin order::

    deliverer = WebhookDeliverer(telegram, ["http://127.0.0.1:8001", "http://127.0.0.1:8002"])
    async with deliverer:
        update = deliverer.deliver({"message": telegram.message(user, chat, "hi")})
        await deliverer.wait_delivered(timeout=10)
    deliverer.deliveries    # every attempt: which process, what it answered, when

The secret token is the one the bot registered with setWebhook (`FakeTelegram.webhook`) unless
one is given.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.fakes.telegram_api import FakeTelegram

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


@dataclass
class Attempt:
    """One POST of an update to one process: its HTTP status, or the connection error it met."""

    update_id: int
    url: str
    started: float
    ended: float = 0.0
    status: int | None = None
    error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == 200


@dataclass
class Delivery:
    """An update and every attempt to deliver it; `posted` is the first attempt's start."""

    update: dict[str, Any]
    chat_id: int | None
    attempts: list[Attempt] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def update_id(self) -> int:
        return self.update["update_id"]

    @property
    def posted(self) -> float | None:
        return self.attempts[0].started if self.attempts else None

    @property
    def accepted_by(self) -> str | None:
        return next((a.url for a in self.attempts if a.accepted), None)


def chat_of(update: dict[str, Any]) -> int | None:
    """The chat an update belongs to (its ordering key), None for an update without one."""
    for key in ("message", "edited_message", "channel_post", "edited_channel_post"):
        if key in update:
            return update[key]["chat"]["id"]
    query = update.get("callback_query")
    if query and query.get("message"):
        return query["message"]["chat"]["id"]
    return None


class WebhookDeliverer:
    def __init__(self, telegram: FakeTelegram, urls: list[str], *, secret: str | None = None,
                 retry_delay: float = 0.2, timeout: float = 30.0, max_connections: int = 40) -> None:
        if not urls:
            raise ValueError("the deliverer needs at least one process URL")
        self.telegram = telegram
        self.urls = [url.rstrip("/") for url in urls]
        self.secret = secret
        self.retry_delay = retry_delay
        self.timeout = timeout
        self.deliveries: dict[int, Delivery] = {}  # by update_id, in the order they were handed over
        self._next_url = itertools.count()
        self._chats: dict[int | None, deque[Delivery]] = {}
        self._workers: dict[int | None, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WebhookDeliverer:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop delivering (updates not yet accepted stay undelivered) and close the connections."""
        workers = list(self._workers.values())
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._workers.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # Delivering -----------------------------------------------------------------------------------
    def deliver(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update (given an update_id if it has none) behind its chat's earlier ones; returns it."""
        if "update_id" not in update:
            update = self.telegram.new_update(update)
        delivery = Delivery(update, chat_of(update))
        self.deliveries[delivery.update_id] = delivery
        self._chats.setdefault(delivery.chat_id, deque()).append(delivery)
        if delivery.chat_id not in self._workers:
            self._workers[delivery.chat_id] = asyncio.create_task(self._deliver_chat(delivery.chat_id),
                                                                  name=f"webhook-chat-{delivery.chat_id}")
        return update

    async def _deliver_chat(self, chat_id: int | None) -> None:
        queue = self._chats[chat_id]
        try:
            while queue:
                delivery = queue[0]
                await self._until_accepted(delivery)
                queue.popleft()
                delivery.done.set()
        finally:
            self._workers.pop(chat_id, None)

    async def _until_accepted(self, delivery: Delivery) -> None:
        """Like Telegram: a refused or failed delivery is tried again after a pause (here on the next process)."""
        for attempt in itertools.count():
            if attempt:
                await asyncio.sleep(self.retry_delay)
            if await self._attempt(delivery):
                return

    async def _attempt(self, delivery: Delivery) -> bool:
        """POST the update to the next process; True when it answered 200."""
        assert self._http is not None, "use the deliverer as `async with`"
        url = self.urls[next(self._next_url) % len(self.urls)]
        async with self._slots:
            attempt = Attempt(delivery.update_id, url, time.monotonic())
            delivery.attempts.append(attempt)
            try:
                async with self._http.post(f"{url}{WEBHOOK_PATH}", json=delivery.update,
                                           headers={SECRET_HEADER: self._secret()}) as response:
                    await response.read()
                    attempt.status = response.status
            except (aiohttp.ClientError, TimeoutError) as error:
                attempt.error = f"{type(error).__name__}: {error}"
            attempt.ended = time.monotonic()
        return attempt.accepted

    def _secret(self) -> str:
        if self.secret is not None:
            return self.secret
        secret = self.telegram.webhook.get("secret_token")
        if not secret:
            raise RuntimeError("no secret token: pass one, or let the bot call setWebhook first")
        return str(secret)

    # Inspection -----------------------------------------------------------------------------------
    @property
    def pending(self) -> list[Delivery]:
        return [d for d in self.deliveries.values() if not d.done.is_set()]

    async def wait_delivered(self, timeout: float = 30.0) -> None:
        """Until every update handed over so far was accepted by some process."""
        waiting = [d.done.wait() for d in self.pending]
        try:
            await asyncio.wait_for(asyncio.gather(*waiting), timeout)
        except TimeoutError:
            raise AssertionError(f"{len(self.pending)} update(s) not accepted within {timeout}s: "
                                 f"{self.describe(self.pending[:5])}") from None

    def accepted_by(self, url: str) -> list[Delivery]:
        return [d for d in self.deliveries.values() if d.accepted_by == url.rstrip("/")]

    def failed_attempts(self) -> list[Attempt]:
        return [a for d in self.deliveries.values() for a in d.attempts if not a.accepted and a.ended]

    @staticmethod
    def describe(deliveries: list[Delivery]) -> str:
        """One line per update: its chat and what each attempt met."""
        lines = []
        for d in deliveries:
            tried = ", ".join(f"{a.url} → {a.status or a.error or 'in flight'}" for a in d.attempts) or "not tried"
            lines.append(f"update {d.update_id} (chat {d.chat_id}): {tried}")
        return "; ".join(lines)

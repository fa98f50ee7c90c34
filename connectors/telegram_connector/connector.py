"""The Telegram connector: python-telegram-bot's Application, run inside the agent's event loop.

The Application's lifecycle is driven by hand (initialize → start → polling or webhook, and the
reverse on stop) instead of `run_polling()`, which would own the loop the rest of the process
shares. Long polling is the default; with TELEGRAM_WEBHOOK_URL set, updates arrive through the
project's HTTP server (see `WebhookEndpoint`) and no Updater is created.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import ssl
from contextvars import ContextVar
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
from aiohttp import web
from telegram import Bot, BotCommand, Update
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest, RequestData

from bot.plugin import Connector
from bot.settings import Settings, VoiceReplies
from bot.store.budgets import send_budget
from bot.store.sql import UNAVAILABLE
from bot.types import Content, Memory, ModelType, Room

from .admins import ChatAdmins
from .formatting import html_to_plain, markdown_to_html
from .handlers import ChatOrderedProcessor, Inbound
from .intake import is_id
from .keyboards import DEFAULT_TTL, ButtonStore
from .outbox import TYPING_INTERVAL, Outbox, Target, Typing
from .pacing import ChatPacer, bot_budget_key, telegram_rate_limiter
from .streaming import TelegramStream
from .voice import SOURCE, speak

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = [Update.MESSAGE, Update.EDITED_MESSAGE, Update.CALLBACK_QUERY]
# Set while the webhook processes an update: the error hook notes here a handler that failed because
# the database was unavailable, so the request is answered 500 (Telegram retries) instead of 200
# (Telegram forgets the update). Any other failure is a bug a retry would only repeat: logged, 200.
HANDLER_FAILURES: ContextVar[list[BaseException] | None] = ContextVar("telegram_handler_failures", default=None)


@cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every bot's connections: httpx builds one per client otherwise, each
    holding its own parsed copy of the CA bundle (~0.75 MB), and each bot has two clients."""
    return httpx.create_ssl_context()


def parse_update(data: dict[str, Any], bot: Bot | None) -> Update | None:
    """The update in `data`, or None (logged) when python-telegram-bot cannot read it, or its chat or
    sender id is not an integer (the Application and the per-chat ordering key on them)."""
    try:
        update = Update.de_json(data, bot)
        chat, user = update.effective_chat, update.effective_user
    except Exception as error:  # de_json raises whatever a malformed field makes it raise
        log.warning("dropped Telegram update %s: it cannot be parsed (%s)", data.get("update_id"), type(error).__name__)
        return None
    if (chat is not None and not is_id(chat.id)) or (user is not None and not is_id(user.id)):
        log.warning("dropped Telegram update %s: a chat or user id is not an integer", data.get("update_id"))
        return None
    return update


def has_update_id(data: object) -> bool:
    return isinstance(data, dict) and type(data.get("update_id")) is int


class PollingRequest(HTTPXRequest):
    """The getUpdates connection: an update python-telegram-bot cannot parse would fail the whole
    batch, and the Updater would fetch it again at once, forever, never reaching the updates behind
    it. So each update is checked here first, and one that cannot be parsed is replaced by an empty
    update with its update_id: the offset moves past it and it is logged once."""

    async def do_request(self, url: str, method: str, request_data: RequestData | None = None,
                         *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        code, payload = await super().do_request(url, method, request_data, *args, **kwargs)
        if code != 200 or not url.endswith("/getUpdates"):
            return code, payload
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError):
            return code, payload  # python-telegram-bot reports an unreadable answer (and backs off)
        updates = body.get("result") if isinstance(body, dict) else None
        if not isinstance(updates, list):
            log.warning("getUpdates answered with something that is not a list of updates; retrying later")
            return 502, b'{"ok": false, "error_code": 502, "description": "Bad Gateway"}'  # retried with back-off
        kept = [update if parse_update(update, None) is not None else {"update_id": update["update_id"]}
                for update in updates if has_update_id(update)]
        if len(kept) < len(updates):
            log.warning("dropped %d Telegram update(s) without an update_id", len(updates) - len(kept))
            if not kept:  # the offset cannot move on: let the polling loop back off instead of spinning
                return 502, b'{"ok": false, "error_code": 502, "description": "Bad Gateway"}'
        return code, json.dumps({**body, "result": kept}).encode()


def webhook_secret(settings: Settings) -> str:
    """TELEGRAM_WEBHOOK_SECRET, or one derived from the token (never the token itself)."""
    if settings.telegram_webhook_secret is not None:
        return settings.telegram_webhook_secret.get_secret_value()
    token = settings.telegram_bot_token.get_secret_value() if settings.telegram_bot_token else ""
    return hashlib.sha256(b"parley telegram webhook\x00" + token.encode()).hexdigest()


class WebhookEndpoint:
    """`POST /telegram/webhook`: checks Telegram's secret header, then stores the update's message.

    The route exists before the connector has started (the HTTP server starts first), so until
    an Application is attached it answers 503 and Telegram retries later. A body that is not a
    JSON object with an integer update_id is not from Telegram: 400. An update python-telegram-bot
    cannot parse is dropped with one log line but answered 200, because Telegram would otherwise
    redeliver it for as long as it keeps failing and hold back the updates behind it.
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.application: Application | None = None

    async def handle(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.secret.encode()):
            log.warning("webhook call from %s without the right secret token: refused", request.remote)
            return web.json_response({"error": "forbidden"}, status=403)
        application = self.application
        if application is None or not application.running:
            return web.json_response({"error": "not ready"}, status=503)
        try:
            data = json.loads(await request.read())
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep to read
            data = None
        if not has_update_id(data):
            return web.json_response({"error": "the body is not a Telegram update"}, status=400)
        update = parse_update(data, application.bot)
        if update is not None:
            # Processed here rather than queued: the 200 then means "stored". Telegram forgets an
            # update it got 200 for, so a process killed after answering must have stored it
            # already (another process, or the next start, answers it); a chat's order holds too.
            failures: list[BaseException] = []
            token = HANDLER_FAILURES.set(failures)
            try:
                await application.update_processor.process_update(update, application.process_update(update))
            finally:
                HANDLER_FAILURES.reset(token)
            if failures:  # Telegram retries; a duplicate is never answered twice
                return web.json_response({"error": "the update could not be stored; retry"}, status=500)
        return web.json_response({"ok": True})


class TelegramConnector(Connector):
    service_type = "telegram"
    source = SOURCE
    webhook: ClassVar[WebhookEndpoint | None] = None  # set by create_plugin for its subclass
    poll_timeout: ClassVar[float] = 10.0
    typing_interval: ClassVar[float] = TYPING_INTERVAL
    button_ttl: ClassVar[float] = DEFAULT_TTL
    pacer: ClassVar[ChatPacer | None] = None  # None: a ChatPacer on the store's send budget per connector

    def __init__(self, runtime: AgentRuntime) -> None:
        super().__init__(runtime)
        settings = runtime.settings
        if settings.telegram_bot_token is None:
            raise ValueError("TELEGRAM_BOT_TOKEN is not set")
        root = settings.telegram_api_root.rstrip("/")
        budget = send_budget(runtime.store)  # shared by every process of this bot on a PostgreSQL store
        prefix = bot_budget_key(settings.telegram_bot_token.get_secret_value())
        builder = (
            ApplicationBuilder()
            .token(settings.telegram_bot_token.get_secret_value())
            .base_url(f"{root}/bot")
            .base_file_url(f"{root}/file/bot")
            .rate_limiter(telegram_rate_limiter(budget, prefix))
            .concurrent_updates(ChatOrderedProcessor())
            .request(HTTPXRequest(httpx_kwargs={"verify": tls_context()}))
            .get_updates_request(PollingRequest(connection_pool_size=1, httpx_kwargs={"verify": tls_context()}))
        )
        if settings.telegram_webhook_url:
            builder = builder.updater(None)
        self.application: Application = builder.build()
        self.buttons = ButtonStore(runtime.store, runtime.agent_id, self.button_ttl)
        pacer = self.pacer or ChatPacer(budget=budget, prefix=prefix)
        self.outbox = Outbox(self.application.bot, self.buttons, pacer)
        self.inbound = Inbound(self)
        self.admins = ChatAdmins(self.application.bot)

    @property
    def bot(self) -> Bot:
        return self.application.bot

    @property
    def connected(self) -> bool:
        return self.application.running

    async def start(self) -> None:
        try:
            await self.application.initialize()
        except TelegramError as error:
            # getMe failed after the HTTP clients opened: close them, since the process (and its
            # other characters) may run on.
            await self.bot.shutdown()
            if isinstance(error, InvalidToken):  # its message quotes the token
                raise RuntimeError("Telegram rejected TELEGRAM_BOT_TOKEN; check the token from @BotFather") from None
            raise RuntimeError(f"cannot reach the Telegram Bot API: {type(error).__name__}: {error}") from None
        self._add_handlers()
        await self._set_commands()
        await self.application.start()
        settings = self.runtime.settings
        if settings.telegram_webhook_url:
            await self.bot.set_webhook(settings.telegram_webhook_url, secret_token=webhook_secret(settings),
                                       allowed_updates=ALLOWED_UPDATES)
            if self.webhook is not None:
                self.webhook.application = self.application
            log.info("Telegram: @%s receives updates by webhook", self.bot.username)
        else:
            assert self.application.updater is not None
            await self.application.updater.start_polling(
                timeout=int(self.poll_timeout), allowed_updates=ALLOWED_UPDATES, error_callback=self._polling_error,
            )
            log.info("Telegram: @%s is polling for updates", self.bot.username)

    def _add_handlers(self) -> None:
        app, inbound = self.application, self.inbound
        app.add_handler(CommandHandler(["start", "help"], inbound.on_command))
        app.add_handler(MessageHandler(
            filters.UpdateType.MESSAGE & (filters.TEXT | filters.CAPTION | filters.VOICE | filters.AUDIO
                                          | filters.PHOTO | filters.Document.ALL),
            inbound.on_message,
        ))
        app.add_handler(MessageHandler(filters.UpdateType.EDITED_MESSAGE, inbound.on_edited))
        app.add_handler(CallbackQueryHandler(inbound.on_callback))
        app.add_error_handler(self._on_error)

    async def _set_commands(self) -> None:
        name = self.runtime.character.name
        try:
            await self.bot.set_my_commands([BotCommand("start", f"Say hello to {name}"),
                                            BotCommand("help", f"How to talk to {name}")])
        except TelegramError as error:
            log.warning("could not register the bot's commands: %s", error)

    def _polling_error(self, error: TelegramError) -> None:
        # python-telegram-bot retries with a growing back-off; only say what happened.
        log.warning("polling Telegram failed (%s: %s); retrying", type(error).__name__, error)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat = update.effective_chat.id if isinstance(update, Update) and update.effective_chat else None
        error = context.error
        failures = HANDLER_FAILURES.get()
        if failures is not None and isinstance(error, UNAVAILABLE):
            failures.append(error)
        log.error("handling a Telegram update in chat %s failed: %s", chat, error,
                  exc_info=(type(error), error, error.__traceback__) if error else None)

    async def stop_receiving(self) -> None:
        """Leave new updates with Telegram (polling stops; the webhook answers 503, so Telegram
        retries) while the replies in flight are finished."""
        try:
            if self.application.updater is not None and self.application.updater.running:
                await self.application.updater.stop()
        except Exception as error:
            log.warning("stopping Telegram polling: %s", error)
        if self.webhook is not None:
            self.webhook.application = None

    async def stop(self) -> None:
        """Stop taking updates first (polling, then the webhook route), then the Application."""
        await self.stop_receiving()
        try:
            if self.application.running:
                await self.application.stop()
            await self.application.shutdown()
        except Exception as error:
            log.warning("stopping the Telegram connector: %s", error)

    # Sending ------------------------------------------------------------------------------------
    def _wants_voice(self, target: Target) -> bool:
        mode = self.runtime.settings.voice_replies
        wants_voice = mode is VoiceReplies.ALWAYS or (mode is VoiceReplies.AUTO and target.voice)
        return wants_voice and self.runtime.has_model(ModelType.TEXT_TO_SPEECH)

    def open_stream(self, target: Target, typing: Typing | None) -> TelegramStream | None:
        """A streamed reply: a draft in a private chat, an edited message in a group or topic. A reply
        spoken as a voice note is not streamed (its caption arrives with the audio)."""
        if self._wants_voice(target):
            return None
        return TelegramStream(self.outbox, target, typing, draft=target.chat_id > 0,
                              edit_seconds=self.runtime.settings.stream_edit_seconds)

    async def send(self, target: Target, content: Content) -> list[str]:
        """Send a reply (and, when the user spoke or VOICE_REPLIES=always, a voice note)."""
        voice = None
        if self._wants_voice(target):
            voice = await speak(self.runtime, html_to_plain(markdown_to_html(content.text)))
        return await self.outbox.send(target, content, voice)

    def sender_id(self, message: Memory) -> str | None:
        user_id = message.metadata.get("telegram", {}).get("user_id")
        return str(user_id) if user_id is not None else None

    async def is_admin(self, message: Memory) -> bool:
        info = message.metadata.get("telegram", {})
        if info.get("chat_id") is None or info.get("user_id") is None:
            return False
        return await self.admins.is_admin(int(info["chat_id"]), int(info["user_id"]))

    async def send_to_room(self, room: Room, content: Content) -> list[str]:
        """Send to the room's chat; content answering a stored Telegram message replies to it (a
        message answered after a restart, when its original callback is gone)."""
        chat_id = room.metadata.get("chat_id") or room.channel_id
        if chat_id is None:
            raise LookupError(f"room {room.id} has no Telegram chat id")
        reply_to = None
        if content.in_reply_to is not None:
            self.inbound.typing_done(content.in_reply_to)
            original = await self.runtime.store.get_memory(content.in_reply_to)
            info = original.metadata.get("telegram", {}) if original is not None else {}
            if info.get("chat_id") == int(chat_id):
                reply_to = info.get("message_id")
        return await self.send(Target(int(chat_id), room.metadata.get("thread_id"), reply_to), content)

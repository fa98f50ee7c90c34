"""A fake Telegram Bot API for tests: the real python-telegram-bot talks to it through base_url.

Methods are served at `/bot<token>/<method>` and files at `/file/bot<token>/<path>`, taking
form-encoded, JSON and multipart parameters like the real API. Every call is recorded; tests push
updates (delivered to a long-polling getUpdates or posted to a webhook) and script errors::

    fake = FakeTelegram(TOKEN)
    root = await fake.start()                  # TELEGRAM_API_ROOT
    fake.push(fake.text_message(user, chat, "hi"))
    call = await fake.wait_for("sendMessage")
    fake.fail("sendMessage", retry_after(1))
    fake.fail("sendChatAction", THREAD_NOT_FOUND, after=1)  # one call goes through, the next fails

HTML messages are checked the way Telegram checks them (known tags, proper nesting, at most
4,096 characters after parsing), so a formatting bug shows up as the same 400 Telegram gives.

`chat_messages(chat_id)` is what a chat shows now (sends, then edits and deletions applied). With
`enforce_limits=True` the fake answers 429 like Telegram's flood control when a chat gets messages
(sends and edits alike) faster than about one a second (private) or twenty a minute (groups), or the
bot makes more than 30 requests to chats a second; `limited` lists the calls it refused.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import math
import re
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

# Parameters the Bot API takes as JSON-serialised objects inside form fields.
JSON_FIELDS = {"reply_markup", "reply_parameters", "entities", "caption_entities", "commands", "allowed_updates",
               "link_preview_options", "scope", "media"}
BOOL_FIELDS = {"show_alert", "disable_notification", "protect_content", "drop_pending_updates",
               "disable_web_page_preview", "has_spoiler"}
HTML_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "tg-emoji",
             "code", "pre", "blockquote"}
FILE_FIELDS = {"voice": "voice", "audio": "audio", "photo": "photo", "document": "document"}
# Requests that put or change a message in a chat: what Telegram's per-chat flood limits count.
CHAT_MESSAGES = {"sendMessage", "editMessageText", "editMessageReplyMarkup", "sendVoice", "sendPhoto",
                 "sendDocument"}
# (seconds per message, burst) per chat, and for the bot overall: a little above what the bot's pacer
# allows (1/s with 2 at once in private chats, 20 a minute in groups), so timing jitter is not a 429.
PRIVATE_LIMIT = (1.0, 3)
GROUP_LIMIT = (3.0, 21)
OVERALL_LIMIT = (1 / 30, 31)


@dataclass(frozen=True)
class ApiError:
    """A scripted Bot API error (the JSON body Telegram answers with)."""

    code: int
    description: str
    parameters: dict[str, Any] | None = None


def retry_after(seconds: int) -> ApiError:
    return ApiError(429, f"Too Many Requests: retry after {seconds}", {"retry_after": seconds})


BLOCKED = ApiError(403, "Forbidden: bot was blocked by the user")
KICKED = ApiError(403, "Forbidden: bot was kicked from the group chat")
CANT_PARSE = ApiError(400, "Bad Request: can't parse entities: Unsupported start tag \"x\" at byte offset 0")
BAD_GATEWAY = ApiError(502, "Bad Gateway")
THREAD_NOT_FOUND = ApiError(400, "Bad Request: message thread not found")


@dataclass
class Call:
    """One recorded API call: the method and its decoded parameters (files as bytes)."""

    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)
    result: Any = None  # what the fake answered (the sent Message for send* methods)

    def __getitem__(self, key: str) -> Any:
        return self.params[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)


class _TelegramHtml(HTMLParser):
    """Parses like Telegram: known tags only, closed in order; collects the visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.text: list[str] = []
        self.error: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in HTML_TAGS:
            self.error = self.error or f"Unsupported start tag \"{tag}\""
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.error = self.error or f"Unexpected end tag \"{tag}\""

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(text: str) -> tuple[str, str | None]:
    """(visible text, error) for a message sent with parse_mode=HTML."""
    if re.search(r"<(?![a-zA-Z/])", text) or re.search(r"&(?!#?\w+;)", text):
        return text, "Can't find end of the entity"
    parser = _TelegramHtml()
    parser.feed(text)
    parser.close()
    if parser.stack and not parser.error:
        parser.error = f"Can't find end tag corresponding to start tag \"{parser.stack[-1]}\""
    return "".join(parser.text), parser.error


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class FakeTelegram:
    def __init__(self, token: str, *, username: str = "parley_test_bot", bot_id: int = 7_000_001,
                 host: str = "127.0.0.1", enforce_limits: bool = False) -> None:
        self.token = token
        self.enforce_limits = enforce_limits
        self.limited: list[Call] = []  # calls refused with 429 by the enforced limits
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}  # (chat, message id) -> the message now
        self._tat: dict[str, float] = {}
        self.admins: dict[int, set[int]] = {}  # chat id -> user ids that administer it (getChatMember)
        self.host = host
        self.port = 0
        self.me = {"id": bot_id, "is_bot": True, "first_name": "Parley", "username": username,
                   "can_join_groups": True, "can_read_all_group_messages": True, "supports_inline_queries": False}
        self.calls: list[Call] = []
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, content)
        self.reported_sizes: dict[str, int] = {}  # file_id -> the file_size getFile claims, if not the real one
        self.webhook: dict[str, Any] = {}
        self.polls = 0  # getUpdates calls (not in `calls`: there are too many)
        self.fetches = 0  # getUpdates answers that handed over updates (the bot will confirm them)
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids: defaultdict[int, itertools.count[int]] = defaultdict(lambda: itertools.count(1000))
        self._failures: defaultdict[str, deque[ApiError | None]] = defaultdict(deque)  # None: succeed
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # Lifecycle ----------------------------------------------------------------------------------
    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> str:
        """Serve on a free port; returns the API root for TELEGRAM_API_ROOT."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.root

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # Scripting ----------------------------------------------------------------------------------
    def fail(self, method: str, *errors: ApiError, after: int = 0) -> None:
        """The next calls to `method` answer with these errors, in order, once `after` calls succeeded."""
        self._failures[method].extend([None] * after + list(errors))

    def add_file(self, file_id: str, content: bytes, path: str = "voice/file_0.oga") -> None:
        self.files[file_id] = (path, content)

    def push(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates; returns it with its update_id."""
        update = {"update_id": next(self._update_ids), **update}
        self._updates.append(update)
        asyncio.get_running_loop().create_task(self._notify())
        return update

    def new_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """An update with an id, not queued (for posting to a webhook)."""
        return {"update_id": next(self._update_ids), **update}

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # Inspection ---------------------------------------------------------------------------------
    def calls_to(self, method: str, ok: bool | None = None, **match: Any) -> list[Call]:
        """Recorded calls to `method` whose parameters equal `match` (`ok`: only answered / failed ones)."""
        return [c for c in self.calls if c.method == method and all(c.params.get(k) == v for k, v in match.items())
                and c.result is not None and (ok is None or ok != isinstance(c.result, ApiError))]

    async def wait_for(self, method: str, count: int = 1, timeout: float = 10.0, ok: bool | None = True,
                       **match: Any) -> list[Call]:
        """Wait until `count` answered calls to `method` (successful by default) were made; return them."""

        async def enough() -> list[Call]:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.calls_to(method, ok, **match)) >= count)
            return self.calls_to(method, ok, **match)

        try:
            return await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            seen = [c.method for c in self.calls]
            raise AssertionError(f"expected {count} {method} call(s) matching {match}; calls: {seen}") from None

    # Updates ------------------------------------------------------------------------------------
    @staticmethod
    def user(user_id: int = 42, first_name: str = "Ada", username: str | None = "ada", is_bot: bool = False,
             last_name: str | None = "Lovelace") -> dict[str, Any]:
        user: dict[str, Any] = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
        if last_name:
            user["last_name"] = last_name
        if username:
            user["username"] = username
        return user

    @staticmethod
    def private_chat(user: dict[str, Any]) -> dict[str, Any]:
        return {"id": user["id"], "type": "private", "first_name": user["first_name"],
                **({"username": user["username"]} if "username" in user else {})}

    @staticmethod
    def group_chat(chat_id: int = -100_500, title: str = "Friends", forum: bool = False) -> dict[str, Any]:
        chat = {"id": chat_id, "type": "supergroup", "title": title}
        if forum:
            chat["is_forum"] = True
        return chat

    def message(self, user: dict[str, Any], chat: dict[str, Any], text: str | None = None, *,
                message_id: int | None = None, reply_to: dict[str, Any] | None = None, topic: int | None = None,
                mention: bool = False, **extra: Any) -> dict[str, Any]:
        """A message dict; `mention` prefixes @bot with a mention entity; `topic` puts it in a forum topic."""
        message: dict[str, Any] = {
            "message_id": message_id or next(self._message_ids[chat["id"]]), "date": int(time.time()),
            "chat": chat, "from": user, **extra,
        }
        if text is not None:
            if mention:
                handle = f"@{self.me['username']}"
                text = f"{handle} {text}"
                message["entities"] = [{"type": "mention", "offset": 0, "length": len(handle)}]
            if text.startswith("/"):
                command = text.split()[0]
                message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
            message["text"] = text
        if topic is not None:
            message["message_thread_id"] = topic
            message["is_topic_message"] = True
            if reply_to is None:  # Telegram sets the topic's creation message as the reply
                reply_to = {"message_id": topic, "date": int(time.time()), "chat": chat, "from": user,
                            "message_thread_id": topic, "forum_topic_created": {"name": "Topic", "icon_color": 0}}
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        return message

    def bot_message(self, chat: dict[str, Any], message_id: int, text: str = "earlier reply") -> dict[str, Any]:
        return {"message_id": message_id, "date": int(time.time()), "chat": chat, "from": dict(self.me),
                "text": text}

    def voice_message(self, user: dict[str, Any], chat: dict[str, Any], audio: bytes, *,
                      file_id: str = "voice-file-1", duration: int = 1) -> dict[str, Any]:
        self.add_file(file_id, audio, f"voice/{file_id}.oga")
        return self.message(user, chat, voice={"file_id": file_id, "file_unique_id": f"u-{file_id}",
                                               "duration": duration, "mime_type": "audio/ogg",
                                               "file_size": len(audio)})

    def callback_query(self, user: dict[str, Any], message: dict[str, Any], data: str) -> dict[str, Any]:
        return {"callback_query": {"id": f"cq{next(self._update_ids)}", "from": user, "message": message,
                                   "chat_instance": "ci-1", "data": data}}

    # Bot API --------------------------------------------------------------------------------------
    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            raw = await request.read()
            params.update(json.loads(raw) if raw else {})
            return params
        if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            for name, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    params[name] = value.file.read()
                    params[f"{name}_filename"] = value.filename
                else:
                    params[name] = value
        for name in JSON_FIELDS & params.keys():
            if isinstance(params[name], str):
                params[name] = json.loads(params[name])
        for name in BOOL_FIELDS & params.keys():
            if isinstance(params[name], str):
                params[name] = params[name].lower() == "true"
        # Files sent as attach://name in multipart
        for name, value in list(params.items()):
            if isinstance(value, str) and value.startswith("attach://"):
                params[name] = params.get(value[len("attach://"):], value)
        return params

    async def _method(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        params = await self._params(request)
        call = Call(method, params)
        if method != "getUpdates":
            self.calls.append(call)
        try:
            failures = self._failures[method]
            failure = failures.popleft() if failures else None
            if failure is not None:
                raise ApiErrorRaised(failure)
            if self.enforce_limits:
                self._check_limits(call)
            handler = getattr(self, f"_api_{method}", None)
            if handler is None:
                raise ApiErrorRaised(ApiError(404, "Not Found: method not found"))
            call.result = await handler(params)
        except ApiErrorRaised as raised:
            error = raised.error
            call.result = error
            body: dict[str, Any] = {"ok": False, "error_code": error.code, "description": error.description}
            if error.parameters:
                body["parameters"] = error.parameters
            return web.json_response(body, status=error.code)
        finally:
            await self._notify()
        return web.json_response({"ok": True, "result": call.result})

    def _check_limits(self, call: Call) -> None:
        """Flood control as a generic cell rate: a request over a key's burst gets 429 and retry_after."""
        chat_id = call.params.get("chat_id")
        if chat_id is None:
            return
        keys = [("all", *OVERALL_LIMIT)]
        if call.method in CHAT_MESSAGES:
            keys.append((f"chat:{chat_id}", *(PRIVATE_LIMIT if int(chat_id) > 0 else GROUP_LIMIT)))
        now = time.monotonic()
        for key, interval, burst in keys:
            ahead = max(self._tat.get(key, now), now) - now
            if ahead > (burst - 1) * interval:
                self.limited.append(call)
                raise ApiErrorRaised(retry_after(max(1, math.ceil(ahead - (burst - 1) * interval))))
        for key, interval, _ in keys:
            self._tat[key] = max(self._tat.get(key, now), now) + interval

    def chat_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The messages the chat shows now, oldest first."""
        return [m for (chat, _), m in sorted(self.messages.items()) if chat == chat_id]

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        for file_path, content in self.files.values():
            if file_path == request.match_info["path"]:
                return web.Response(body=content, content_type="application/octet-stream")
        return web.Response(status=404)

    async def _api_getMe(self, params: dict[str, Any]) -> Any:
        return self.me

    async def _api_getChatMember(self, params: dict[str, Any]) -> Any:
        """A member's status: `admins` maps chat ids to the user ids that administer them."""
        chat_id, user_id = int(params["chat_id"]), int(params["user_id"])
        status = "administrator" if user_id in self.admins.get(chat_id, set()) else "member"
        member: dict[str, Any] = {"status": status, "user": self.user(user_id)}
        if status == "administrator":
            member.update({flag: True for flag in (
                "can_be_edited", "is_anonymous", "can_manage_chat", "can_delete_messages", "can_manage_video_chats",
                "can_restrict_members", "can_promote_members", "can_change_info", "can_invite_users",
                "can_post_stories", "can_edit_stories", "can_delete_stories")})
        return member

    async def _api_getUpdates(self, params: dict[str, Any]) -> Any:
        self.polls += 1
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]

        def ready() -> bool:
            return bool(self._updates)

        if not ready() and timeout > 0:
            try:
                async with self._changed:
                    await asyncio.wait_for(self._changed.wait_for(ready), timeout)
            except TimeoutError:
                pass
        if self._updates:
            self.fetches += 1
        return list(self._updates)

    async def _api_deleteWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = {}
        return True

    async def _api_setWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = params
        return True

    async def _api_setMyCommands(self, params: dict[str, Any]) -> Any:
        return True

    async def _api_sendChatAction(self, params: dict[str, Any]) -> Any:
        return True

    async def _api_answerCallbackQuery(self, params: dict[str, Any]) -> Any:
        return True

    async def _api_close(self, params: dict[str, Any]) -> Any:
        return True

    def _sent(self, params: dict[str, Any], **content: Any) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        chat = {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"}
        if chat_id > 0:
            chat["first_name"] = "User"
        else:
            chat["title"] = "Group"
        message: dict[str, Any] = {"message_id": next(self._message_ids[chat_id]), "date": int(time.time()),
                                   "chat": chat, "from": dict(self.me), **content}
        if params.get("message_thread_id"):
            message["message_thread_id"] = int(params["message_thread_id"])
            message["is_topic_message"] = True
        if params.get("reply_markup"):
            message["reply_markup"] = params["reply_markup"]
        self.messages[(chat_id, message["message_id"])] = message
        return message

    def _checked_text(self, params: dict[str, Any], key: str, limit: int) -> str:
        text = str(params.get(key) or "")
        visible = text
        if params.get("parse_mode") == "HTML":
            visible, error = parse_html(text)
            if error:
                raise ApiErrorRaised(ApiError(400, f"Bad Request: can't parse entities: {error}"))
            visible = html.unescape(visible)
        if utf16_len(visible) > limit:
            raise ApiErrorRaised(ApiError(400, "Bad Request: message is too long"))
        if key == "text" and not visible.strip():
            raise ApiErrorRaised(ApiError(400, "Bad Request: message text is empty"))
        return visible

    async def _api_sendMessage(self, params: dict[str, Any]) -> Any:
        return self._sent(params, text=self._checked_text(params, "text", 4096))

    async def _api_editMessageText(self, params: dict[str, Any]) -> Any:
        text = self._checked_text(params, "text", 4096)
        key = (int(params["chat_id"]), int(params["message_id"]))
        message = self.messages.get(key)
        if message is None:
            raise ApiErrorRaised(ApiError(400, "Bad Request: message to edit not found"))
        if message.get("text") == text and message.get("reply_markup") == params.get("reply_markup"):
            raise ApiErrorRaised(ApiError(400, "Bad Request: message is not modified: specified new message "
                                               "content and reply markup are exactly the same"))
        message = {**message, "text": text, "edit_date": int(time.time())}
        message.pop("reply_markup", None)
        if params.get("reply_markup"):
            message["reply_markup"] = params["reply_markup"]
        self.messages[key] = message
        return message

    async def _api_deleteMessage(self, params: dict[str, Any]) -> Any:
        if self.messages.pop((int(params["chat_id"]), int(params["message_id"])), None) is None:
            raise ApiErrorRaised(ApiError(400, "Bad Request: message to delete not found"))
        return True

    async def _api_sendMessageDraft(self, params: dict[str, Any]) -> Any:
        """Bot API 9.5: an animated preview in a private chat; not a message (nothing is stored)."""
        if int(params["chat_id"]) <= 0:
            raise ApiErrorRaised(ApiError(400, "Bad Request: drafts can be sent only to private chats"))
        if not int(params.get("draft_id") or 0):
            raise ApiErrorRaised(ApiError(400, "Bad Request: draft_id must be non-zero"))
        if params.get("text"):
            self._checked_text(params, "text", 4096)
        return True

    async def _api_sendVoice(self, params: dict[str, Any]) -> Any:
        caption = self._checked_text(params, "caption", 1024)
        file_id = f"sent-voice-{len(self.calls)}"
        voice = params.get("voice")
        size = len(voice) if isinstance(voice, bytes) else 0
        return self._sent(params, voice={"file_id": file_id, "file_unique_id": file_id, "duration": 1,
                                         "mime_type": "audio/ogg", "file_size": size},
                          **({"caption": caption} if caption else {}))

    async def _api_sendPhoto(self, params: dict[str, Any]) -> Any:
        caption = self._checked_text(params, "caption", 1024)
        return self._sent(params, photo=[{"file_id": "sent-photo", "file_unique_id": "sent-photo", "width": 4,
                                          "height": 4}], **({"caption": caption} if caption else {}))

    async def _api_sendDocument(self, params: dict[str, Any]) -> Any:
        caption = self._checked_text(params, "caption", 1024)
        return self._sent(params, document={"file_id": "sent-doc", "file_unique_id": "sent-doc"},
                          **({"caption": caption} if caption else {}))

    async def _api_getFile(self, params: dict[str, Any]) -> Any:
        file_id = params.get("file_id")
        if file_id not in self.files:
            raise ApiErrorRaised(ApiError(400, "Bad Request: invalid file_id"))
        path, content = self.files[file_id]
        size = self.reported_sizes.get(file_id, len(content))
        return {"file_id": file_id, "file_unique_id": f"u-{file_id}", "file_size": size, "file_path": path}


class ApiErrorRaised(Exception):
    def __init__(self, error: ApiError) -> None:
        super().__init__(error.description)
        self.error = error

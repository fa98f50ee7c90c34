"""A fake Discord (REST API + gateway) on 127.0.0.1 that the real discord.py talks to.

Point discord.py at it with DISCORD_API_BASE=`fake.api_base` and DISCORD_GATEWAY_URL=`fake.gateway_url`.
The gateway (tests/fakes/discord_gateway.py) speaks the real protocol, to several shards at once;
REST answers JSON with exactly `Content-Type: application/json`, as discord.py requires, and can be
scripted to fail (429 with `Via` and rate-limit headers, 403 Missing Permissions, 400 Invalid Form Body, ...).
The world has one guild, `guild_id`, unless a test adds more (`add_guild`); a channel belongs to one.
The bot's channel messages can be edited (PATCH, each version kept in `history`) and deleted, and
`enforce(...)` makes the fake hold the bot to Discord's limits as the real API does: a request over
them is refused with a 429 (counted in `rate_limited`) instead of being served.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes.discord_gateway import FakeGateway

TOKEN = "fake-discord-token.XYZ.abc"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(),
                        headers={"Content-Type": "application/json", **(headers or {})})


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Recorded:
    method: str
    path: str
    body: dict[str, Any] | None
    files: list[tuple[str, bytes]] = field(default_factory=list)
    at: float = field(default_factory=time.monotonic)  # when it reached the fake


@dataclass(frozen=True)
class Limits:
    """Discord's limits as the fake enforces them. A channel's messages (POST and PATCH) are one
    bucket of `channel_burst` that refills continuously at `channel_per_second` (Discord's buckets
    since its 2022 rework; 5 per 5 s); all of the bot's requests at most `global_per_second` in any
    second. `tolerance` forgives a request that arrives that much early: the client times its
    requests when it sends them, the fake when they arrive, and the two differ by the network."""

    channel_burst: int = 5
    channel_per_second: float = 1.0
    global_per_second: int = 50
    tolerance: float = 0.05


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    retry_after: float
    after: int = 0  # matching requests to let through before failing


ERRORS = {400: (50035, "Invalid Form Body"), 403: (50013, "Missing Permissions"), 404: (10003, "Unknown Channel"),
          500: (0, "500: Internal Server Error")}
UNKNOWN_MESSAGE = {"message": "Unknown Message", "code": 10008}
_CHANNEL_MESSAGES = re.compile(r"^/api/v10/channels/(\d+)/messages(?:/\d+)?$")


def _rate_limited(retry_after: float, *, is_global: bool = False) -> web.Response:
    """A 429 as Discord sends it: `Via` (discord.py takes a 429 without it for a Cloudflare ban),
    retry_after in the body and the rate-limit headers."""
    headers = {"Retry-After": str(retry_after), "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
               "X-RateLimit-Reset-After": str(retry_after), "X-RateLimit-Reset": str(time.time() + retry_after),
               "X-RateLimit-Bucket": "fakebucket", "X-RateLimit-Scope": "global" if is_global else "user",
               "Via": "1.1 google"}
    if is_global:
        headers["X-RateLimit-Global"] = "true"
    return _json({"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global},
                 429, headers)


class FakeDiscord(FakeGateway):
    def __init__(self, *, token: str = TOKEN, bot_id: int = 150_000_000_000_000_001,
                 app_id: int = 150_000_000_000_000_001, bot_name: str = "Parley", guild_id: int = 500,
                 recommended_shards: int = 1) -> None:
        super().__init__()
        self.token = token
        self.bot = self.user(bot_id, bot_name, bot=True)
        self.app_id = app_id
        self.guild_id = guild_id  # the default guild of channels, messages and interactions
        self.guilds: dict[int, str] = {guild_id: "Fake Guild"}
        self.recommended_shards = recommended_shards  # the `shards` of GET /gateway/bot
        self._ids = itertools.count(10**17)
        self.channels: dict[int, dict[str, Any]] = {}
        self.threads: list[dict[str, Any]] = []
        self.members: list[dict[str, Any]] = [self.member(self.bot)]
        self.messages: list[dict[str, Any]] = []  # messages the bot created and has not deleted, in order
        self.deleted: list[dict[str, Any]] = []  # messages the bot deleted
        self.history: dict[str, list[str]] = {}  # message id → every content it showed, in order
        self.requests: list[Recorded] = []
        self.interaction_responses: list[dict[str, Any]] = []
        self.commands: dict[str, list[dict[str, Any]]] = {}  # "global" or guild id → synced commands
        self.files: dict[str, tuple[bytes, str]] = {}
        self._interaction_channels: dict[str, int] = {}
        self.faults: list[Fault] = []
        self.limits: Limits | None = None  # None: no limits enforced (see `enforce`)
        self.rate_limited: list[Recorded] = []  # requests refused with a 429 by the enforced limits
        self._channel_tats: dict[str, float] = {}
        self._recent: collections.deque[float] = collections.deque()  # the bot's requests of the last second
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # Lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application(middlewares=[self._middleware], client_max_size=50 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/files/{name}", self._file)
        api = "/api/v10"
        for method, path, handler in (
            ("GET", "/users/@me", self._me),
            ("GET", "/oauth2/applications/@me", self._application),
            ("GET", "/gateway", self._gateway_info),
            ("GET", "/gateway/bot", self._gateway_info),
            ("PUT", "/applications/{app}/commands", self._sync_commands),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", self._sync_commands),
            ("POST", "/channels/{channel}/messages", self._create_message),
            ("PATCH", "/channels/{channel}/messages/{message}", self._edit_message),
            ("DELETE", "/channels/{channel}/messages/{message}", self._delete_message),
            ("POST", "/channels/{channel}/typing", self._typing),
            ("POST", "/interactions/{id}/{token}/callback", self._interaction_callback),
            ("POST", "/webhooks/{app}/{token}", self._followup),
            ("PATCH", "/webhooks/{app}/{token}/messages/@original", self._followup),
            ("DELETE", "/webhooks/{app}/{token}/messages/@original", self._delete_original),
        ):
            app.router.add_route(method, api + path, handler)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        await self.close_connections()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/gateway"

    # The world ---------------------------------------------------------------------------------------
    def snowflake(self) -> int:
        return next(self._ids)

    @staticmethod
    def user(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
        return {"id": str(user_id), "username": name, "global_name": name, "discriminator": "0",
                "avatar": None, "bot": bot}

    def member(self, user: dict[str, Any]) -> dict[str, Any]:
        return {"user": user, "roles": [], "joined_at": _now(), "deaf": False, "mute": False, "flags": 0,
                "permissions": str((1 << 41) - 1)}

    def add_guild(self, guild_id: int, name: str) -> None:
        """Another guild; its shard is `(guild_id >> 22) % shard_count`, so pick ids accordingly."""
        self.guilds[guild_id] = name

    def add_channel(self, channel_id: int, name: str, *, kind: int = 0, parent_id: int | None = None,
                    guild_id: int | None = None) -> dict:
        """kind: 0 text, 2 voice, 11 public thread (pass parent_id); in `guild_id` (default: `self.guild_id`)."""
        channel: dict[str, Any] = {"id": str(channel_id), "type": kind, "guild_id": str(guild_id or self.guild_id),
                                   "name": name, "position": len(self.channels), "permission_overwrites": [],
                                   "nsfw": False, "parent_id": str(parent_id) if parent_id else None,
                                   "rate_limit_per_user": 0, "bitrate": 64000, "user_limit": 0}
        if kind == 11:
            channel.update(owner_id=self.bot["id"], message_count=0, member_count=1, thread_metadata={
                "archived": False, "auto_archive_duration": 1440, "archive_timestamp": _now(), "locked": False})
            self.threads.append(channel)
        else:
            self.channels[channel_id] = channel
        return channel

    def guild_of(self, channel_id: int) -> int:
        """The guild a channel or thread belongs to (`self.guild_id` for one the fake does not know)."""
        channel = self.channels.get(channel_id) or next((t for t in self.threads if t["id"] == str(channel_id)), None)
        return int(channel["guild_id"]) if channel else self.guild_id

    def guild_payload(self, guild_id: int | None = None) -> dict[str, Any]:
        guild = str(guild_id or self.guild_id)
        everyone = {"id": guild, "name": "@everyone", "permissions": str((1 << 41) - 1),
                    "position": 0, "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}
        channels = [c for c in self.channels.values() if c["guild_id"] == guild]
        return {"id": guild, "name": self.guilds[int(guild)], "icon": None, "owner_id": "1",
                "roles": [everyone], "channels": channels, "threads": [t for t in self.threads if t["guild_id"] == guild],
                "members": self.members, "voice_states": [], "presences": [], "member_count": len(self.members),
                "features": [], "emojis": [], "stickers": [], "unavailable": False, "large": False,
                "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0,
                "mfa_level": 0, "premium_tier": 0, "preferred_locale": "en-US", "nsfw_level": 0,
                "joined_at": _now(), "system_channel_flags": 0}

    def add_file(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        """Serve `data` at /files/<name>; returns the attachment payload for a message."""
        self.files[name] = (data, content_type)
        return {"id": str(self.snowflake()), "filename": name, "size": len(data), "content_type": content_type,
                "url": f"{self.url}/files/{name}", "proxy_url": f"{self.url}/files/{name}"}

    def message(self, channel_id: int, author: dict[str, Any], content: str, *, guild: bool = True,
                mentions: list[dict[str, Any]] = (), reply_to: dict[str, Any] | None = None,
                attachments: list[dict[str, Any]] = (), message_id: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(message_id or self.snowflake()), "channel_id": str(channel_id), "author": author,
            "content": content, "timestamp": _now(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": list(mentions), "mention_roles": [],
            "attachments": list(attachments), "embeds": [], "pinned": False, "type": 0, "flags": 0,
            "components": [],
        }
        if guild:
            data["guild_id"] = str(self.guild_of(channel_id))
            data["member"] = {k: v for k, v in self.member(author).items() if k != "user"}
        if reply_to is not None:
            data["type"] = 19
            data["message_reference"] = {"message_id": reply_to["id"], "channel_id": reply_to["channel_id"],
                                         "guild_id": reply_to.get("guild_id"), "type": 0}
            data["referenced_message"] = reply_to
        return data

    def interaction(self, kind: int, user: dict[str, Any], channel_id: int, data: dict[str, Any], *,
                    message: dict[str, Any] | None = None) -> dict[str, Any]:
        """kind 2: slash command; kind 3: component (button) press on `message`."""
        payload: dict[str, Any] = {
            "id": str(self.snowflake()), "application_id": str(self.app_id), "type": kind, "data": data,
            "guild_id": str(self.guild_of(channel_id)), "channel_id": str(channel_id),
            "channel": {**self.channels.get(channel_id, {"id": str(channel_id), "type": 0})},
            "member": self.member(user), "token": f"itoken-{self.snowflake()}", "version": 1,
            "app_permissions": str((1 << 41) - 1), "locale": "en-US", "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_of(channel_id))}, "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if message is not None:
            payload["message"] = message
        self._interaction_channels[payload["token"]] = channel_id
        return payload

    # Waiting -----------------------------------------------------------------------------------------
    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until `predicate()` is truthy: re-checked whenever the fake records something, and
        every 20 ms for state outside the fake (such as the client becoming ready)."""
        async def check() -> Any:
            async with self._changed:
                while not (result := predicate()):
                    try:
                        await asyncio.wait_for(self._changed.wait(), 0.02)
                    except TimeoutError:
                        pass
                return result

        return await asyncio.wait_for(check(), timeout)

    async def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        await self.wait_for(lambda: len(self.messages) >= count, timeout)
        return list(self.messages)

    # Faults ----------------------------------------------------------------------------------------
    def fail(self, method: str, path: str, status: int, *, times: int = 1, retry_after: float = 0.05,
             after: int = 0) -> None:
        """The next `times` requests matching `method` and the `path` regex get `status` (429, 403, 400, ...),
        after letting `after` matching requests through (after=1: the second one fails)."""
        self.faults.append(Fault(method, re.compile(path), status, times, retry_after, after))

    def _fault_for(self, request: web.Request) -> web.Response | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and fault.path.search(request.path):
                if fault.after > 0:
                    fault.after -= 1
                    continue
                fault.times -= 1
                if fault.status == 429:
                    return _rate_limited(fault.retry_after)
                code, message = ERRORS.get(fault.status, (0, f"scripted status {fault.status}"))
                return _json({"message": message, "code": code}, fault.status)
        return None

    # Limits --------------------------------------------------------------------------------------
    def enforce(self, limits: Limits | None = None) -> None:
        """Refuse the bot's requests over `limits` (Discord's by default) with a 429, as Discord does."""
        self.limits = limits or Limits()

    async def _over_limits(self, request: web.Request) -> web.Response | None:
        """The 429 for a request over the enforced limits (nothing counted for it), else None."""
        limits = self.limits
        if limits is None:
            return None
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        refused: web.Response | None = None
        if len(self._recent) >= limits.global_per_second:
            refused = _rate_limited(round(self._recent[0] + 1.0 - now, 3), is_global=True)
        channel = _CHANNEL_MESSAGES.match(request.path)
        if refused is None and channel is not None and request.method in ("POST", "PATCH"):
            interval = 1 / limits.channel_per_second
            tat = max(self._channel_tats.get(channel.group(1), now), now) + interval
            early = tat - limits.channel_burst * interval - now
            if early > limits.tolerance:
                refused = _rate_limited(round(early, 3))
            else:
                self._channel_tats[channel.group(1)] = tat
        if refused is not None:
            self.rate_limited.append(Recorded(request.method, request.path, None))
            await self._notify()
            return refused
        self._recent.append(now)
        return None

    # REST --------------------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if not request.path.startswith("/api/") or request.path.startswith("/api/v10/interactions/") \
                or request.path.startswith("/api/v10/webhooks/"):
            return await handler(request)
        if request.headers.get("Authorization") != f"Bot {self.token}":
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        return await self._over_limits(request) or await handler(request)

    async def _record(self, request: web.Request) -> Recorded:
        body: dict[str, Any] | None = None
        files: list[tuple[str, bytes]] = []
        if request.content_type == "multipart/form-data":
            async for part in await request.multipart():
                data = await part.read()  # type: ignore[union-attr]
                if part.name == "payload_json":  # type: ignore[union-attr]
                    body = json.loads(data)
                else:
                    files.append((part.filename or "", bytes(data)))  # type: ignore[union-attr]
        elif request.can_read_body:
            body = await request.json()
        recorded = Recorded(request.method, request.path, body, files)
        self.requests.append(recorded)
        await self._notify()
        return recorded

    async def _me(self, request: web.Request) -> web.Response:
        return _json(self.bot)

    async def _application(self, request: web.Request) -> web.Response:
        return _json({"id": str(self.app_id), "name": self.bot["username"], "description": "", "icon": None,
                      "bot_public": True, "bot_require_code_grant": False, "verify_key": "0" * 64,
                      "owner": self.user(1, "owner"), "flags": 0})

    async def _gateway_info(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url, "shards": self.recommended_shards, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}})

    async def _sync_commands(self, request: web.Request) -> web.Response:
        fault = self._fault_for(request)
        recorded = await self._record(request)
        if fault is not None:
            return fault
        commands = [{**c, "id": str(self.snowflake()), "application_id": str(self.app_id), "version": "1",
                     "default_member_permissions": None, "type": c.get("type", 1)} for c in recorded.body or []]
        self.commands[request.match_info.get("guild", "global")] = commands
        return _json(commands)

    def _stored_message(self, channel_id: str, body: dict[str, Any], files: list[tuple[str, bytes]],
                        **extra: Any) -> dict[str, Any]:
        message = self.message(int(channel_id), self.bot, body.get("content") or "",
                               guild=int(channel_id) in self.channels or any(
                                   t["id"] == channel_id for t in self.threads))
        message["components"] = body.get("components", [])
        message["attachments"] = [{"id": str(self.snowflake()), "filename": name, "size": len(data),
                                   "url": f"{self.url}/files/{name}", "proxy_url": ""} for name, data in files]
        message.update(sent_body=body, sent_files=files, **extra)
        self.messages.append(message)
        self.history[message["id"]] = [message["content"]]
        return message

    def _own_message(self, request: web.Request) -> dict[str, Any] | None:
        channel, message_id = request.match_info["channel"], request.match_info["message"]
        return next((m for m in self.messages if m["id"] == message_id and m["channel_id"] == channel), None)

    async def _edit_message(self, request: web.Request) -> web.Response:
        """An edit of one of the bot's messages: the fields sent replace the message's (`content`
        None clears it), and the new content joins the message's `history`."""
        fault = self._fault_for(request)
        recorded = await self._record(request)
        if fault is not None:
            return fault
        message = self._own_message(request)
        if message is None:
            return _json(UNKNOWN_MESSAGE, 404)
        body = recorded.body or {}
        if "content" in body:
            message["content"] = body["content"] or ""
            self.history[message["id"]].append(message["content"])
        if "components" in body:
            message["components"] = body["components"]
        message["edited_timestamp"] = _now()
        await self._notify()
        return _json({k: v for k, v in message.items() if not k.startswith("sent_")})

    async def _delete_message(self, request: web.Request) -> web.Response:
        fault = self._fault_for(request)
        await self._record(request)
        if fault is not None:
            return fault
        message = self._own_message(request)
        if message is None:
            return _json(UNKNOWN_MESSAGE, 404)
        self.messages.remove(message)
        self.deleted.append(message)
        await self._notify()
        return web.Response(status=204)

    async def _create_message(self, request: web.Request) -> web.Response:
        fault = self._fault_for(request)
        recorded = await self._record(request)
        if fault is not None:
            return fault
        message = self._stored_message(request.match_info["channel"], recorded.body or {}, recorded.files)
        await self._notify()
        return _json({k: v for k, v in message.items() if not k.startswith("sent_")})

    async def _typing(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=204)

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        body = recorded.body or {}
        self.interaction_responses.append({"id": request.match_info["id"], **body})
        await self._notify()
        return _json({"interaction": {"id": request.match_info["id"], "type": 2,
                                      "response_message_loading": body.get("type") == 5,
                                      "response_message_ephemeral": False}})

    async def _followup(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        message = self._stored_message(str(self._interaction_channels.get(request.match_info["token"], 0)), recorded.body or {}, recorded.files,
                                       webhook_token=request.match_info["token"])
        await self._notify()
        return _json({k: v for k, v in message.items() if not k.startswith("sent_")})

    async def _delete_original(self, request: web.Request) -> web.Response:
        """Deleting a deferred "thinking…" response: recorded (see `requests`), nothing else to undo here."""
        await self._record(request)
        return web.Response(status=204)

    async def _file(self, request: web.Request) -> web.Response:
        data, content_type = self.files[request.match_info["name"]]
        return web.Response(body=data, headers={"Content-Type": content_type})

    async def _unknown(self, request: web.Request) -> web.Response:
        await self._record(request)
        return _json({"message": "Unknown route in the fake", "code": 0}, 404)

"""Chat sessions (the elizaOS Sessions API design): timeouts, auto-renew, a hard cap, persistence.

A session is a room of its own between one user and the agent. It expires `timeoutMinutes` after
its last activity; activity renews it when `autoRenew` is on, but never past `maxDurationMinutes`
from its creation. Sessions live in memory for speed and are written through to the store's cache
table, so a restart loses none; expired ones are removed by a periodic cleanup.

All times come from an injected clock (seconds), so the lifecycle is testable without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from bot.ids import create_unique_uuid

from .conversation import channel_room_key
from .errors import ApiError

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

CACHE_PREFIX = "session:"
MINUTE = 60.0


class _Camel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TimeoutConfig(_Camel):
    """Session timeouts in minutes; every field optional in a request (agent, then global defaults)."""

    timeout_minutes: float | None = Field(None, alias="timeoutMinutes", ge=1, le=10080)
    auto_renew: bool | None = Field(None, alias="autoRenew")
    max_duration_minutes: float | None = Field(None, alias="maxDurationMinutes", ge=1, le=43200)
    warning_threshold_minutes: float | None = Field(None, alias="warningThresholdMinutes", ge=0, le=10080)


class EffectiveConfig(_Camel):
    timeout_minutes: float = Field(alias="timeoutMinutes")
    auto_renew: bool = Field(alias="autoRenew")
    max_duration_minutes: float = Field(alias="maxDurationMinutes")
    warning_threshold_minutes: float = Field(alias="warningThresholdMinutes")


class Session(_Camel):
    """A session as persisted; times are seconds from the manager's clock."""

    id: str
    agent_id: uuid.UUID = Field(alias="agentId")
    user_id: str = Field(alias="userId")
    created_at: float = Field(alias="createdAt")
    last_activity: float = Field(alias="lastActivity")
    expires_at: float = Field(alias="expiresAt")
    renewal_count: int = Field(0, alias="renewalCount")
    config: EffectiveConfig
    metadata: dict[str, Any] = Field(default_factory=dict)
    owner: str | None = None  # None: an admin's; "visitor:<hash>": one web chat visitor's
    client: str | None = None  # a visitor's pseudonymised address, to cap sessions per client
    # The channel the session talks in (elizaOS's clients join it over Socket.IO). Its room outlives
    # the session: the channel still names the conversation afterwards. None: stored before channels.
    channel_id: uuid.UUID | None = Field(None, alias="channelId")

    @property
    def channel(self) -> uuid.UUID:
        return self.channel_id or create_unique_uuid(self.agent_id, f"api:session-channel:{self.id}")

    @property
    def room_key(self) -> str:
        return channel_room_key(self.channel_id) if self.channel_id else f"api:session:{self.id}"

    @property
    def hard_limit(self) -> float:
        return self.created_at + self.config.max_duration_minutes * MINUTE

    def remaining(self, now: float) -> float:
        return max(0.0, self.expires_at - now)

    def near_expiry(self, now: float) -> bool:
        return self.remaining(now) <= self.config.warning_threshold_minutes * MINUTE


class SessionNotFound(ApiError):
    def __init__(self, session_id: str) -> None:
        super().__init__(404, "SESSION_NOT_FOUND", f"no session {session_id!r}; create one with POST /api/sessions")


class SessionExpired(ApiError):
    def __init__(self, session_id: str) -> None:
        super().__init__(404, "SESSION_EXPIRED", f"session {session_id!r} has expired; create a new one with "
                         "POST /api/sessions")


_SETTINGS = {
    "timeout_minutes": ("SESSION_TIMEOUT_MINUTES", TypeAdapter(float)),
    "auto_renew": ("SESSION_AUTO_RENEW", TypeAdapter(bool)),
    "max_duration_minutes": ("SESSION_MAX_DURATION_MINUTES", TypeAdapter(float)),
    "warning_threshold_minutes": ("SESSION_WARNING_THRESHOLD_MINUTES", TypeAdapter(float)),
}


class SessionCensus:
    """Every agent's session manager in this process, so SESSION_MAX_CONCURRENT and the web chat's
    caps hold for the process, however many characters it runs. Sessions are counted as their
    managers hold them (an agent's stored sessions once it has been asked for one since start)."""

    def __init__(self) -> None:
        self._managers: dict[uuid.UUID, SessionManager] = {}
        self.lock = asyncio.Lock()  # a new session is checked against the caps and added under it

    def join(self, manager: SessionManager) -> None:
        """Count this manager's sessions (in place of an earlier manager of the same agent)."""
        self._managers[manager.runtime.agent_id] = manager

    def live(self, now: float) -> list[Session]:
        return [s for m in self._managers.values() for s in m.sessions() if s.expires_at > now]


class SessionManager:
    def __init__(self, runtime: AgentRuntime, *, clock: Callable[[], float] | None = None,
                 census: SessionCensus | None = None) -> None:
        self.runtime = runtime
        self.clock = clock or runtime.clock
        self._sessions: dict[str, Session] = {}
        self._channels: dict[uuid.UUID, str] = {}  # channel -> session id
        self._loaded = False
        self._lock = asyncio.Lock()
        self._census = census or SessionCensus()
        self._census.join(self)

    def sessions(self) -> list[Session]:
        """The sessions held in memory now, expired ones included until the cleanup."""
        return list(self._sessions.values())

    # Configuration ----------------------------------------------------------------------------
    def effective_config(self, requested: TimeoutConfig | None) -> EffectiveConfig:
        """The session's own config over the agent's (character settings) over the global defaults."""
        values: dict[str, Any] = {}
        for name, (setting, adapter) in _SETTINGS.items():
            chosen = getattr(requested, name) if requested is not None else None
            if chosen is None:
                raw = self.runtime.get_setting(setting)
                try:
                    chosen = adapter.validate_python(raw)
                except ValidationError:
                    log.warning("setting %s=%r is not valid; using the global default", setting, raw)
                    chosen = getattr(self.runtime.settings, setting.lower())
            values[name] = chosen
        return EffectiveConfig(**values)

    # Persistence --------------------------------------------------------------------------------
    async def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        stored = await self.runtime.store.list_cache(self.runtime.agent_id, CACHE_PREFIX)
        for key, value in stored.items():
            try:
                session = Session.model_validate(value)
            except ValidationError:
                log.warning("dropping unreadable stored session %s", key)
                await self.runtime.store.delete_cache(self.runtime.agent_id, key)
                continue
            self._sessions.setdefault(session.id, session)
            self._channels[session.channel] = session.id
        self._loaded = True

    async def _save(self, session: Session) -> None:
        await self.runtime.store.set_cache(self.runtime.agent_id, CACHE_PREFIX + session.id,
                                           session.model_dump(mode="json", by_alias=True))

    async def _forget(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            self._channels.pop(session.channel, None)
        return await self.runtime.store.delete_cache(self.runtime.agent_id, CACHE_PREFIX + session_id)

    # Lifecycle ----------------------------------------------------------------------------------
    def active_count(self) -> int:
        now = self.clock()
        return sum(1 for s in self._sessions.values() if s.expires_at > now)

    async def create(self, user_id: str, requested: TimeoutConfig | None = None,
                     metadata: dict[str, Any] | None = None, *, owner: str | None = None,
                     client: str | None = None) -> Session:
        """A new session; a visitor's (`owner` set) within the visitor caps and the default timeouts."""
        config = self.effective_config(requested)
        if owner is not None:
            self._check_visitor_config(config)
        async with self._lock:
            await self._ensure_loaded()
            await self._cleanup_locked()
            async with self._census.lock:  # the caps are the process's: every agent's sessions count
                now = self.clock()
                everyone = self._census.live(now)
                limit = self.runtime.settings.session_max_concurrent
                if len(everyone) >= limit:
                    raise ApiError(429, "TOO_MANY_SESSIONS", f"{limit} sessions are open, the most this server "
                                   "allows (SESSION_MAX_CONCURRENT); end one or try again later",
                                   headers={"Retry-After": "60"})
                if owner is not None:
                    self._check_visitor_room(client, everyone)
                session = Session(id=str(uuid.uuid4()), agent_id=self.runtime.agent_id, user_id=user_id,
                                  created_at=now, last_activity=now, expires_at=now, config=config,
                                  metadata=metadata or {}, owner=owner, client=client, channel_id=uuid.uuid4())
                session.expires_at = min(now + config.timeout_minutes * MINUTE, session.hard_limit)
                self._sessions[session.id] = session
                self._channels[session.channel] = session.id
            await self._save(session)
        return session

    def _check_visitor_config(self, config: EffectiveConfig) -> None:
        """Visitors may shorten the default timeouts, never lengthen them."""
        defaults = self.effective_config(None)
        for name, alias in (("timeout_minutes", "timeoutMinutes"), ("max_duration_minutes", "maxDurationMinutes")):
            if getattr(config, name) > getattr(defaults, name):
                message = f"at most {getattr(defaults, name):g} minutes for web chat visitors"
                raise ApiError(400, "INVALID_BODY", f"invalid body: timeoutConfig.{alias}: {message}",
                               details=[{"field": f"timeoutConfig.{alias}", "message": message}])

    def _check_visitor_room(self, client: str | None, everyone: list[Session]) -> None:
        settings = self.runtime.settings
        visitors = [s for s in everyone if s.owner is not None]
        per_client = settings.web_chat_sessions_per_ip
        if sum(1 for s in visitors if s.client == client) >= per_client:
            raise ApiError(429, "TOO_MANY_SESSIONS", f"your address already has {per_client} open chat "
                           "session(s) (WEB_CHAT_SESSIONS_PER_IP); end one or wait for one to expire",
                           headers={"Retry-After": "60"})
        if len(visitors) >= settings.web_chat_max_sessions:
            raise ApiError(429, "TOO_MANY_SESSIONS", "the web chat is full (WEB_CHAT_MAX_SESSIONS); try again "
                           "later", headers={"Retry-After": "60"})

    async def get(self, session_id: str, viewer: str | None = None) -> Session:
        """The live session, or 404: unknown, not the `viewer`'s (unless None: an admin), or expired
        (which also removes it)."""
        async with self._lock:
            await self._ensure_loaded()
            session = self._sessions.get(session_id)
            if session is None or (viewer is not None and session.owner != viewer):
                raise SessionNotFound(session_id)
            if session.expires_at <= self.clock():
                await self._forget(session_id)
                raise SessionExpired(session_id)
            return session

    async def touch(self, session_id: str, viewer: str | None = None) -> tuple[Session, bool]:
        """Record activity; with auto-renew on, extend the expiry (never past max duration)."""
        session = await self.get(session_id, viewer)
        now = self.clock()
        session.last_activity = now
        renewed = False
        if session.config.auto_renew:
            renewed = self._extend(session, now)
        await self._save(session)
        return session, renewed

    async def renew(self, session_id: str, viewer: str | None = None) -> Session:
        session = await self.get(session_id, viewer)
        now = self.clock()
        if not self._extend(session, now) and session.expires_at >= session.hard_limit:
            raise ApiError(422, "MAX_DURATION_REACHED", "the session has reached its maximum duration "
                           f"({session.config.max_duration_minutes:g} minutes) and cannot be renewed")
        session.last_activity = now
        await self._save(session)
        return session

    async def reconfigure(self, session_id: str, requested: TimeoutConfig, viewer: str | None = None) -> Session:
        """New timeouts for a live session; its expiry counts from its last activity under them."""
        session = await self.get(session_id, viewer)
        config = session.config.model_copy(update=requested.model_dump(exclude_none=True))
        if config.timeout_minutes > config.max_duration_minutes:
            message = (f"timeoutMinutes ({config.timeout_minutes:g}) is longer than maxDurationMinutes "
                       f"({config.max_duration_minutes:g})")
            raise ApiError(400, "INVALID_BODY", f"invalid body: {message}",
                           details=[{"field": "timeoutMinutes", "message": message}])
        session.config = config
        session.expires_at = min(session.last_activity + session.config.timeout_minutes * MINUTE, session.hard_limit)
        await self._save(session)
        return session

    @staticmethod
    def _extend(session: Session, now: float) -> bool:
        expires_at = min(now + session.config.timeout_minutes * MINUTE, session.hard_limit)
        if expires_at <= session.expires_at:
            return False
        session.expires_at = expires_at
        session.renewal_count += 1
        return True

    async def knows(self, session_id: str) -> bool:
        """Whether the session is this manager's (expired or not): a server of several agents asks
        each manager, so a session's requests reach the agent it was created with."""
        async with self._lock:
            await self._ensure_loaded()
            return session_id in self._sessions

    async def live(self) -> list[Session]:
        """Every session that has not expired, oldest first."""
        async with self._lock:
            await self._ensure_loaded()
            now = self.clock()
            return sorted((s for s in self._sessions.values() if s.expires_at > now), key=lambda s: s.created_at)

    async def by_channel(self, channel_id: uuid.UUID) -> Session | None:
        """The live session that talks in this channel."""
        async with self._lock:
            await self._ensure_loaded()
            session = self._sessions.get(self._channels.get(channel_id, ""))
        return session if session is not None and session.expires_at > self.clock() else None

    async def delete(self, session_id: str, viewer: str | None = None) -> None:
        await self.get(session_id, viewer)
        async with self._lock:
            await self._forget(session_id)

    async def cleanup(self) -> int:
        """Remove expired sessions; returns how many went."""
        async with self._lock:
            await self._ensure_loaded()
            return await self._cleanup_locked()

    async def _cleanup_locked(self) -> int:
        now = self.clock()
        expired = [s.id for s in self._sessions.values() if s.expires_at <= now]
        for session_id in expired:
            await self._forget(session_id)
        if expired:
            log.info("removed %d expired session(s)", len(expired))
        return len(expired)

"""Every setting parley reads, from the environment and `.env`.

One class, so a typo or a bad value is caught at start-up with one line naming the variable and
the fix, instead of surfacing later as a confusing failure deep inside a connector.
"""

from __future__ import annotations

import json
import logging
import re
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from bot.character import Character

log = logging.getLogger(__name__)


class ShouldRespondMode(StrEnum):
    AUTO = "auto"
    MENTIONS = "mentions"


class ConsoleMode(StrEnum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


class WebChatMode(StrEnum):
    OFF = "off"
    ADMIN = "admin"
    PUBLIC = "public"


class VoiceReplies(StrEnum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class Streaming(StrEnum):
    OFF = "off"
    DM = "dm"  # private chats (and the API) only
    ALL = "all"


class Embedding(StrEnum):
    AUTO = "auto"  # the model provider's embeddings (OpenAI), else the offline model
    OFFLINE = "offline"  # always the offline model shipped with the install
    OFF = "off"  # none: no search by meaning


class LatePolicy(StrEnum):
    REPORT = "report"  # fire it, saying how late it is
    DROP = "drop"  # skip it (a repeating task moves on to its next time)


def _split_list(value: Any) -> Any:
    """Accept a JSON array or a comma-separated string for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
StrList = Annotated[list[str], NoDecode]
IntList = Annotated[list[int], NoDecode]
PathList = Annotated[list[Path], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Core
    character_path: Path = Path("characters/default.json")
    characters: PathList = Field(default_factory=list)  # several characters in one process (CHARACTERS=a.json,b.json)
    data_dir: Path = Path("./data")
    database_url: str | None = None
    database_pool_size: int = Field(5, ge=1, le=100)  # connections per process (PostgreSQL), plus one for coordination
    log_level: str = "INFO"
    port: int = Field(3000, ge=0, le=65535)  # 0: any free port (tests)
    host: str = "0.0.0.0"
    console: ConsoleMode = ConsoleMode.AUTO

    # Pipeline
    should_respond_mode: ShouldRespondMode = ShouldRespondMode.AUTO
    conversation_length: int = Field(32, ge=1, le=500)
    reflection_interval: int = Field(8, ge=1)
    max_concurrent_rooms: int = Field(8, ge=1, le=1000)
    respond_to_bots: bool = False
    error_reply: str = "Sorry, I couldn't answer that just now. Please try again in a moment."
    streaming: Streaming = Streaming.ALL  # replies appear as the model writes them
    stream_edit_seconds: float = Field(1.0, ge=0.2, le=30)  # at most one edit of a streamed message this often

    # Tools (actions with parameters, MCP tools) and scheduled tasks
    max_tool_steps: int = Field(4, ge=1, le=16)  # model rounds that may call tools before the reply
    tool_timeout: float = Field(30, gt=0)  # seconds for one tool call
    tool_time_budget: float = Field(90, gt=0)  # seconds for all tool rounds of one message
    tool_result_chars: int = Field(4000, ge=200)  # a tool result is cut to this before the model reads it
    mcp_servers: Path | None = None  # a JSON file: {"name": {"type": "stdio", "command": ...}, ...}
    mcp_timeout: float = Field(30, gt=0)  # seconds to connect to an MCP server
    mcp_reconnect_seconds: float = Field(60, gt=0)  # wait before retrying a server that failed
    timezone: str = "UTC"  # IANA name: the default time zone for reminders and schedules
    task_grace_seconds: float = Field(3600, ge=0)  # a task missed while down still fires at start if this recent
    task_late_policy: LatePolicy = LatePolicy.REPORT  # older missed tasks: report them late, or drop them
    tasks_per_user: int = Field(20, ge=0)
    tasks_per_room: int = Field(100, ge=0)

    # Knowledge: documents the agent answers from (the character's `knowledge`, a folder, uploads)
    knowledge: bool = True  # on|off
    knowledge_path: Path | None = None  # a folder of documents for every character run from here
    knowledge_max_file_mb: float = Field(20, gt=0)  # bigger files are skipped with a warning
    knowledge_top_k: int = Field(5, ge=0, le=50)  # passages per prompt at most (0: none)
    knowledge_token_budget: int = Field(1500, ge=50)  # tokens all passages of one prompt may take
    knowledge_min_score: float = Field(0.3, ge=-1, le=1)  # cosine similarity a passage must reach

    # Models
    model_providers: StrList = Field(default_factory=list)
    openai_native_tools: bool = True  # false for an OpenAI-compatible server without tool calling
    model_timeout: float = Field(30.0, gt=0)
    model_max_retries: int = Field(2, ge=0, le=10)
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_small_model: str = "gpt-4o-mini"
    openai_large_model: str = "gpt-4o"
    openai_embedding_model: str = "text-embedding-3-small"
    openai_embedding_dimensions: int | None = Field(None, ge=1)
    embedding: Embedding = Embedding.AUTO  # where TEXT_EMBEDDING comes from
    openai_transcription_model: str = "whisper-1"
    openai_tts_model: str = "tts-1"
    openai_tts_voice: str = "alloy"
    openai_image_model: str = "dall-e-3"
    openai_image_description_model: str = "gpt-4o-mini"
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    anthropic_small_model: str = "claude-3-5-haiku-latest"
    anthropic_large_model: str = "claude-sonnet-4-5"
    local_model_path: Path | None = None
    local_context_size: int = Field(2048, ge=256)
    local_max_tokens: int = Field(128, ge=1)

    # Telegram
    telegram_bot_token: SecretStr | None = None
    telegram_api_root: str = "https://api.telegram.org"
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: SecretStr | None = None
    telegram_allowed_chats: IntList = Field(default_factory=list)
    voice_replies: VoiceReplies = VoiceReplies.AUTO
    voice_max_mb: float = Field(20, gt=0)  # api.telegram.org serves files of at most 20 MB
    voice_max_seconds: int = Field(300, ge=1)

    # Discord
    discord_api_token: SecretStr | None = None
    discord_application_id: int | None = None
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg"
    channel_ids: IntList = Field(default_factory=list)
    discord_ignore_bots: bool = True
    discord_guild_id: int | None = None
    discord_voice_channel_id: int | None = None
    # Sharding across processes: every process sets the same SHARD_COUNT and its own SHARD_IDS.
    shard_count: int | None = Field(None, ge=1, le=1000)
    shard_ids: IntList = Field(default_factory=list)

    # HTTP service
    api_key: SecretStr | None = None
    rate_limit_per_minute: int = Field(30, ge=0)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    session_timeout_minutes: float = Field(30, gt=0)
    session_auto_renew: bool = True
    session_max_duration_minutes: float = Field(720, gt=0)
    session_warning_threshold_minutes: float = Field(5, ge=0)
    session_max_concurrent: int = Field(1000, ge=1)
    session_cleanup_interval_seconds: float = Field(60, gt=0)
    session_max_metadata_bytes: int = Field(4096, ge=0, le=65536)
    web_chat: WebChatMode = WebChatMode.ADMIN
    web_chat_ip_per_minute: int = Field(30, ge=1)  # visitor requests per client IP
    web_chat_messages_per_minute: int = Field(6, ge=1)  # visitor messages per session
    web_chat_sessions_per_ip: int = Field(3, ge=1)  # live visitor sessions per client IP
    web_chat_max_sessions: int = Field(200, ge=1)  # live visitor sessions in all
    trusted_proxies: int = Field(0, ge=0, le=10)  # X-Forwarded-For hops to trust for visitor IPs
    # Platform user ids of the bot's owners: telegram:123,discord:456 (actions that reach other rooms).
    owner_ids: StrList = Field(default_factory=list)
    shutdown_timeout: float = Field(25, gt=0)
    # Messages stored but not answered (the process stopped first) are answered on the next start
    # when at most this many seconds old; older ones are marked expired, not answered out of context.
    resume_window: float = Field(300, ge=0)
    # PostgreSQL with several processes: how often each looks for rooms no live process is running
    # (one whose process died is taken over within this many seconds).
    cluster_sweep_seconds: float = Field(2, gt=0, le=300)

    @field_validator("model_providers", "telegram_allowed_chats", "channel_ids", "owner_ids", "shard_ids",
                     "characters", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("characters")
    @classmethod
    def _character_files(cls, value: list[Path]) -> list[Path]:
        seen: dict[Path, Path] = {}
        for path in value:
            if not path.is_file():
                raise ValueError(f"{str(path)!r} is not a file; list existing character files, e.g. "
                                 "characters/a.json,characters/b.json")
            first = seen.setdefault(path.resolve(), path)
            if first is not path:
                raise ValueError(f"{str(path)!r} is listed twice; list each character file once")
        return value

    @field_validator("owner_ids")
    @classmethod
    def _owner_ids(cls, value: list[str]) -> list[str]:
        for entry in value:
            platform, _, user_id = entry.partition(":")
            if platform not in {"telegram", "discord"} or not user_id.strip().isdigit():
                raise ValueError(f"{entry!r} is not platform:user_id; write e.g. telegram:123,discord:456")
        return [entry.replace(" ", "") for entry in value]

    @field_validator("model_providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        names = [v.lower() for v in value]
        unknown = [n for n in names if n not in {"openai", "anthropic", "local"}]
        if unknown:
            raise ValueError(f"unknown provider {unknown[0]!r}; use openai, anthropic or local")
        return names

    @field_validator(
        "openai_api_key", "anthropic_api_key", "telegram_bot_token", "discord_api_token", "api_key",
        "telegram_webhook_secret", mode="before",
    )
    @classmethod
    def _empty_secret_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "database_url", "openai_base_url", "anthropic_base_url", "telegram_webhook_url",
        "discord_application_id", "discord_guild_id", "discord_voice_channel_id", "local_model_path",
        "openai_embedding_dimensions", "mcp_servers", "shard_count", "knowledge_path", mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError("use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value.strip())
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError("use an IANA time zone name such as UTC or Europe/Berlin") from None
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(postgres|postgresql(\+asyncpg)?|sqlite(\+aiosqlite)?)://", value):
            raise ValueError("use a postgresql:// (or postgres://) URL, or leave it empty for SQLite")
        return value

    @model_validator(mode="after")
    def _shards(self) -> Settings:
        if self.shard_ids and self.shard_count is None:
            raise ValueError("SHARD_IDS needs SHARD_COUNT: set SHARD_COUNT to the total number of shards")
        bad = [i for i in self.shard_ids if not 0 <= i < (self.shard_count or 0)]
        if bad:
            raise ValueError(f"shard id {bad[0]} is not between 0 and SHARD_COUNT-1 ({(self.shard_count or 1) - 1})")
        return self

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "parley.db"

    @property
    def character_paths(self) -> list[Path]:
        """CHARACTERS when set, else the one CHARACTER_PATH."""
        return list(self.characters) or [self.character_path]


class SettingsError(Exception):
    """A bad setting, already phrased as one line for the operator."""


def describe_validation_error(error: ValidationError) -> str:
    """Turn pydantic's multi-line report into one line: variable, problem, fix."""
    first = error.errors()[0]
    more = len(error.errors()) - 1
    suffix = f" [and {more} more bad setting{'s' if more > 1 else ''}]" if more else ""
    if not first["loc"]:  # a check across settings already says what to set
        return f"{first['msg'].removeprefix('Value error, ')} (see .env.example).{suffix}"
    name = str(first["loc"][0]).upper()
    value = first.get("input")
    secret = any(word in name for word in ("TOKEN", "KEY", "SECRET", "PASSWORD", "DATABASE_URL"))
    shown = "" if secret or value is None or isinstance(value, dict) else f" (got {str(value)[:60]!r})"
    return (
        f"{name}: {first['msg']}{shown}. Fix: set {name} to a valid value in the environment or .env "
        f"(see .env.example).{suffix}"
    )


def load_settings(**overrides: Any) -> Settings:
    """Read settings; raise SettingsError with a one-line description when a value is bad."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None


# Settings of the process as a whole (its port, database, HTTP service): a character's secrets cannot change them.
PROCESS_SETTINGS = frozenset({
    "character_path", "characters", "data_dir", "database_url", "database_pool_size", "log_level", "port", "host",
    "console", "api_key", "max_body_bytes", "trusted_proxies", "shutdown_timeout", "resume_window",
    "cluster_sweep_seconds",
})
PROCESS_PREFIXES = ("session_", "web_chat")
# Settings that name one bot: taken from the environment only when a single character runs, since
# with several each character brings its own (one token cannot serve two characters).
BOT_SETTINGS = ("telegram_bot_token", "telegram_webhook_url", "telegram_webhook_secret", "discord_api_token",
                "discord_application_id")


def character_secrets(character: Character) -> dict[str, Any]:
    """elizaOS keeps keys in `settings.secrets` (1.x) or `secrets`; the top-level one wins, as for model keys."""
    nested = character.settings.get("secrets")
    return {**(nested if isinstance(nested, dict) else {}), **character.secrets}


def settings_for_character(settings: Settings, character: Character, *, source: str, alone: bool = True) -> Settings:
    """The process settings with this character's secrets on top, validated like the environment.

    Secret names are the environment's (TELEGRAM_BOT_TOKEN, OPENAI_API_KEY, OPENAI_LARGE_MODEL...).
    Model keys and every other setting from the environment stay a fallback for each character; the
    bot settings (BOT_SETTINGS) only when the character runs `alone`. Names parley does not know are
    left to plugins (`runtime.get_setting`); process settings are ignored with a warning.
    """
    overrides: dict[str, Any] = {}
    for key, value in character_secrets(character).items():
        name = str(key).strip().lower()
        if name not in Settings.model_fields:
            continue
        if name in PROCESS_SETTINGS or name.startswith(PROCESS_PREFIXES):
            log.warning("%s: settings.secrets.%s is a setting of the whole process, ignored here; set it in "
                        "the environment", source, key)
            continue
        overrides[name] = value
    if alone and not overrides:
        return settings
    values = dict(settings)  # every field given, so the environment is not read again
    if not alone:
        values.update(dict.fromkeys(BOT_SETTINGS))
    try:
        return Settings.model_validate({**values, **overrides})
    except ValidationError as error:
        raise SettingsError(_describe_secret_error(error, source)) from None


def _describe_secret_error(error: ValidationError, source: str) -> str:
    """One line naming the character file and the secret, never its value."""
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:
        return f"{source}: settings.secrets: {message}. Fix: correct the character's settings.secrets"
    name = str(first["loc"][0]).upper()
    return f"{source}: settings.secrets.{name}: {message}. Fix: correct {name} in the character's settings.secrets"

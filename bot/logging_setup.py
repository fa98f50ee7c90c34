"""Logging that can never print a secret.

Connector libraries log request URLs, and a Telegram URL carries the bot token. Rather than
trust every library, a filter on the root handler masks each configured secret and anything
shaped like a bot token, in the message and its arguments, before a record is written.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from urllib.parse import urlsplit

from bot.character import Character
from bot.settings import Settings

MASK = "***"
_TOKEN_SHAPES = [
    re.compile(r"\d{6,12}:[A-Za-z0-9_-]{30,}"),  # Telegram bot token
    re.compile(r"sk-[A-Za-z0-9_-]{16,}"),  # OpenAI / Anthropic style keys
    re.compile(r"[MNO][A-Za-z\d_-]{23,}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,}"),  # Discord bot token
    re.compile(r"aW50ZXJhY3Rpb246[A-Za-z\d_-]+"),  # Discord interaction token ("interaction:..." in base64)
]
# Secrets known only by where they sit: Discord interaction tokens in callback and webhook URLs (discord.py
# logs every request URL at DEBUG) and "token" fields in gateway payloads it logs as dicts.
_TOKEN_PLACES = re.compile(r"(/(?:interactions|webhooks)/\d+/|[\"']token[\"']\s*:\s*[\"'])[^/\s\"'?]+")


def secret_values(settings: Settings) -> list[str]:
    values = []
    for _name, value in settings:
        if hasattr(value, "get_secret_value"):
            secret = value.get_secret_value()
            if secret and len(secret) >= 4:
                values.append(secret)
    if settings.database_url:
        password = urlsplit(settings.database_url).password
        if password:
            values.append(password)
    return values


def character_secret_values(character: Character) -> list[str]:
    """Keys a character file carries (`secrets`, `settings.secrets`) are masked like env secrets."""
    nested = character.settings.get("secrets")
    sources = [character.secrets, nested if isinstance(nested, dict) else {}]
    return [str(v) for source in sources for v in source.values() if isinstance(v, str) and len(v) >= 4]


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def add(self, secret: str) -> None:
        if secret and secret not in self.secrets:
            self.secrets = sorted([*self.secrets, secret], key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        for shape in _TOKEN_SHAPES:
            text = shape.sub(MASK, text)
        return _TOKEN_PLACES.sub(rf"\g<1>{MASK}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def mask_secrets(secrets: Iterable[str]) -> None:
    """Mask secrets learned after start-up (an MCP server's env and headers) in every log line."""
    for handler in logging.getLogger().handlers:
        for found in handler.filters:
            if isinstance(found, RedactingFilter):
                for secret in secrets:
                    found.add(secret)


def configure_logging(settings: Settings) -> RedactingFilter:
    """Root logging to stderr with redaction; noisy HTTP client loggers kept at WARNING."""
    redactor = RedactingFilter(secret_values(settings))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)  # validated by Settings: DEBUG, INFO, WARNING, ERROR or CRITICAL
    # HTTP clients log each request URL at INFO (httpx2 is the MCP SDK's); a URL can carry a key.
    for noisy in ("httpx", "httpx2", "httpcore", "mcp", "discord.gateway", "discord.client", "telegram.ext",
                  "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redactor

"""Fields of incoming updates made safe to store and to prompt.

python-telegram-bot does not check types, so a malformed update can carry a number or a list where
Telegram sends a string; text may hold lone surrogates; names may hold line breaks. Intake reads
fields through these helpers only.
"""

from __future__ import annotations

from telegram import Message

from bot.sanitize import clean_text, one_line


def is_id(value: object) -> bool:
    return type(value) is int


def text_of(value: object) -> str:
    """Text as it may be stored and prompted: a string (lone surrogates replaced), else nothing."""
    return clean_text(value) if isinstance(value, str) else ""


def name_of(value: object) -> str:
    """A name or title flattened to one line, so it cannot carry a line break into a prompt."""
    return one_line(value) if isinstance(value, str) else ""


def message_text(message: Message) -> str:
    """The message's text, else its caption."""
    return text_of(message.text) or text_of(message.caption)

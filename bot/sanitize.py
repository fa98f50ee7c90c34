"""Text from outside (platforms, HTTP clients, files) made safe to store and to put in a prompt.

Every entry point calls these at intake, so nothing later has to ask whether a string can be
encoded or whether a name can smuggle a line break into a transcript.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE_BREAKS = re.compile(r"[\r\n\t\v\f\x85\u2028\u2029]+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
REPLACEMENT = "\ufffd"


def replace_surrogates(text: str) -> str:
    """Replace lone surrogates (which cannot be encoded as UTF-8) with U+FFFD."""
    return text if text.isascii() else _SURROGATE.sub(REPLACEMENT, text)


def clean_text(text: str) -> str:
    """Replace lone surrogates and NULs with U+FFFD."""
    return replace_surrogates(text).replace("\x00", REPLACEMENT)


def one_line(text: str, limit: int = 200) -> str:
    """A name (a file name, a title) flattened to one line of at most `limit` characters."""
    flat = _CONTROL.sub("", _LINE_BREAKS.sub(" ", clean_text(text))).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"

"""Fake model APIs on 127.0.0.1 that the real OpenAI and Anthropic SDKs talk to via base_url.

Names are re-exported lazily so that `python -m tests.fakes.openai_server` does not import the
module twice (once through this package, once as __main__).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.anthropic_server import FakeAnthropic, anthropic_error
    from tests.fakes.openai_server import (
        HANG,
        RATE_LIMITED,
        SERVER_ERROR,
        FakeOpenAI,
        FakeServer,
        Hang,
        Raw,
        RecordedRequest,
        Status,
        ToolCalls,
        fake_embedding,
        sine_wav,
        tiny_png,
    )

__all__ = [
    "HANG",
    "RATE_LIMITED",
    "SERVER_ERROR",
    "FakeAnthropic",
    "FakeOpenAI",
    "FakeServer",
    "Hang",
    "Raw",
    "RecordedRequest",
    "Status",
    "ToolCalls",
    "anthropic_error",
    "fake_embedding",
    "sine_wav",
    "tiny_png",
]
_FROM_ANTHROPIC = {"FakeAnthropic", "anthropic_error"}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = "tests.fakes.anthropic_server" if name in _FROM_ANTHROPIC else "tests.fakes.openai_server"
    return getattr(importlib.import_module(module), name)

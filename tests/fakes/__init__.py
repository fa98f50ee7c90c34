"""Fake model APIs on 127.0.0.1 that the real OpenAI and Anthropic SDKs talk to via base_url."""

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
    "anthropic_error",
    "fake_embedding",
    "sine_wav",
    "tiny_png",
]

"""Run the whole bot (App: runtime, real OpenAI provider, SQLite, HTTP server) against a fake model API.

Everything is real except the model API, which is `FakeOpenAI` on 127.0.0.1 (the process boundary).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bot.app import App
from bot.character import Character, parse_character
from bot.settings import Settings
from tests.fakes.openai_server import FakeOpenAI

API_KEY_FOR_MODEL = "sk-test-server-0123456789abcdef"
CHARACTER = {"name": "Test", "username": "testbot", "bio": ["Test is a patient character used in tests."],
             "secrets": {"SOME_TOKEN": "character-secret-value"}, "settings": {"model": "hidden-setting"}}


def xml_reply(text: str, actions: str = "REPLY") -> str:
    return f"<response><thought>ok</thought><actions>{actions}</actions><text>{text}</text></response>"


def write_character(directory: Path, **fields: Any) -> Path:
    path = directory / "character.json"
    path.write_text(json.dumps({**CHARACTER, **fields}), encoding="utf-8")
    return path


def character(**fields: Any) -> Character:
    return parse_character({**CHARACTER, **fields}).character


def settings_for(tmp_path: Path, model_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "character_path": write_character(tmp_path), "data_dir": tmp_path / "data", "port": 0, "host": "127.0.0.1",
        "openai_api_key": API_KEY_FOR_MODEL, "openai_base_url": model_url, "model_providers": ["openai"],
        "model_max_retries": 0, "model_timeout": 10, **overrides,
    }
    return Settings(_env_file=None, **values)


def env_for(tmp_path: Path, model_url: str, **overrides: str) -> dict[str, str]:
    """Environment for `python -m bot` in a subprocess."""
    return {
        "CHARACTER_PATH": str(write_character(tmp_path)), "DATA_DIR": str(tmp_path / "data"), "PORT": "0",
        "HOST": "127.0.0.1", "OPENAI_API_KEY": API_KEY_FOR_MODEL, "OPENAI_BASE_URL": model_url,
        "MODEL_PROVIDERS": "openai", "MODEL_MAX_RETRIES": "0", "LOG_LEVEL": "INFO", **overrides,
    }


@dataclass
class Running:
    app: App
    url: str
    http: aiohttp.ClientSession
    fake: FakeOpenAI

    @property
    def server(self):
        return self.app.server

    async def call(self, method: str, path: str, *, client: aiohttp.ClientSession | None = None,
                   **kwargs: Any) -> tuple[int, Any]:
        """One request (by default with the shared client) → (status, JSON body or text)."""
        async with (client or self.http).request(method, self.url + path, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text


@asynccontextmanager
async def running_app(tmp_path: Path, fake: FakeOpenAI, *, character_fields: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None, clock: Callable[[], float] | None = None,
                      **overrides: Any) -> AsyncIterator[Running]:
    """Start the App in this process on an ephemeral port; stop it (cleanly) afterwards.

    `clock` replaces the runtime's clock, which the session manager reads.
    """
    settings = settings_for(tmp_path, fake.base_url, **overrides)
    app = App(settings, character(**(character_fields or {})))
    if clock is not None:
        app.runtime.clock = clock
    await app.start()
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            yield Running(app, f"http://127.0.0.1:{app.server.port}", http, fake)
    finally:
        await app.stop()


@asynccontextmanager
async def browser_like(headers: dict[str, str] | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps cookies for 127.0.0.1 (aiohttp's default jar ignores IP hosts), like a browser."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers) as http:
        yield http


@asynccontextmanager
async def fake_model(reply: str = xml_reply("Hello from Test.")) -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(reply=reply)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()

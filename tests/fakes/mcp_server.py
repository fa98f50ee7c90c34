"""A real MCP server for tests, built with the SDK's MCPServer (v1's FastMCP), over stdio or HTTP.

    python tests/fakes/mcp_server.py stdio
    python tests/fakes/mcp_server.py http PORT        # streamable HTTP at http://127.0.0.1:PORT/mcp

With FAKE_MCP_KEY set, the HTTP server answers 401 unless the request's X-Api-Key matches it.
It offers tools that answer, fail, hang, report their pid and see their environment, and one
text resource.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("fake-weather", log_level="CRITICAL")  # tool errors are expected here


@server.tool()
def get_forecast(city: str, days: int = 1) -> str:
    """The weather forecast for a city."""
    return f"It is sunny in {city} for {days} day(s)."


@server.tool()
def fail(reason: str) -> str:
    """Always fails with the reason given."""
    raise ToolError(f"cannot do that: {reason}")


def _mark(event: str) -> None:
    marker = os.environ.get("FAKE_MCP_MARKER")
    if marker:
        with open(marker, "a", encoding="utf-8") as file:
            file.write(event + "\n")


@server.tool()
async def hang() -> str:
    """Never answers (for timeouts); records in FAKE_MCP_MARKER that it started and was cancelled."""
    _mark("started")
    try:
        await anyio.sleep_forever()
    finally:
        _mark("cancelled")
    return "never"


@server.tool()
def pid() -> str:
    """The server's process id."""
    return str(os.getpid())


@server.tool()
def has_env(name: str) -> str:
    """Whether an environment variable is set (never its value)."""
    return "yes" if os.environ.get(name) else "no"


@server.tool(structured_output=False)
def picture() -> list[Any]:
    """A caption and an image."""
    return ["a red dot", Image(data=b"\x89PNG\r\n\x1a\n", format="png")]


@server.resource("note://today", name="today", description="Today's note")
def today() -> str:
    return "Buy milk."


def _keyed(app: Any, key: str) -> Any:
    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or [])
        if scope["type"] == "http" and headers.get(b"x-api-key", b"").decode() != key:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await app(scope, receive, send)

    return guarded


def main() -> None:
    if sys.argv[1:2] in (["http"], ["sse"]):
        import uvicorn

        app = server.streamable_http_app() if sys.argv[1] == "http" else server.sse_app()
        key = os.environ.get("FAKE_MCP_KEY")
        uvicorn.run(_keyed(app, key) if key else app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                    lifespan="on")
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()

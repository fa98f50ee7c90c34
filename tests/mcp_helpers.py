"""Helpers for the MCP tests: real MCP servers (tests/fakes/mcp_server.py) over stdio and HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FAKE_SERVER = Path(__file__).parent / "fakes" / "mcp_server.py"


def stdio_entry(**extra: Any) -> dict[str, Any]:
    return {"type": "stdio", "command": sys.executable, "args": [str(FAKE_SERVER), "stdio"], **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def eventually(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Wait until `condition()` holds (polled), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class HttpMcpServer:
    """The fake server over streamable HTTP in a subprocess on a fixed port, so it can go and come back."""

    def __init__(self, port: int | None = None, key: str | None = None, transport: str = "http") -> None:
        self.port = port or free_port()
        self.key = key
        self.transport = transport  # "http" (streamable HTTP) or "sse"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{'mcp' if self.transport == 'http' else 'sse'}"

    def entry(self, **extra: Any) -> dict[str, Any]:
        headers = {"X-Api-Key": self.key} if self.key else {}
        kind = "streamable-http" if self.transport == "http" else "sse"
        return {"type": kind, "url": self.url, "headers": headers, **extra}

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, **({"FAKE_MCP_KEY": self.key} if self.key else {})}
        return subprocess.Popen([sys.executable, str(FAKE_SERVER), self.transport, str(self.port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def start(self) -> None:
        self.process = self._spawn()
        deadline = time.monotonic() + 20
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the fake MCP HTTP server did not start") from None
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

"""`ApiError`: what a handler or middleware raises for anything a client did wrong or cannot have now."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web


class ApiError(Exception):
    """An error for the client: HTTP status, a stable code, a human message and optional details.

    The body is elizaOS's error envelope, `{"success": false, "error": {"code", "message"}}`, which
    its official client turns into an ApiError with that code and message."""

    def __init__(self, status: int, code: str, message: str, *, details: list[dict[str, str]] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return web.json_response({"success": False, "error": body}, status=self.status, headers=self.headers)

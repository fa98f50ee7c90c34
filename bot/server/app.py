"""The aiohttp application: middlewares (errors as JSON, lifecycle, auth, body size) and body parsing.

Handlers raise `ApiError` for anything a client did wrong or cannot have right now; the error
middleware turns it (and aiohttp's own 404/405/413) into one JSON shape, and turns anything else
into a 500 that names nothing internal, so no stack trace, SQL or secret ever reaches a client.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from bot.sanitize import replace_surrogates

from .access import (
    API_PREFIX,
    POLICY,
    Access,
    AccessPolicy,
    auth_middleware,
    browser_guard_middleware,
    route_key,
)
from .errors import ApiError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Lifecycle(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


class ServerState:
    """Where the process is in its life; API work is only taken while RUNNING."""

    def __init__(self) -> None:
        self.lifecycle = Lifecycle.STARTING


@dataclass(frozen=True)
class BodyLimit:
    """The largest body a route takes, and what sets it (a setting, named by the 413)."""

    max_bytes: int
    reason: str = "MAX_BODY_BYTES"

    def refusal(self) -> ApiError:
        return ApiError(413, "BODY_TOO_LARGE", f"request body is larger than {self.max_bytes} bytes ({self.reason})")


STATE = web.AppKey("state", ServerState)
MAX_BODY = web.AppKey("max_body", BodyLimit)
# Routes with a limit of their own, by (method, canonical path); the rest are held to MAX_BODY.
BODY_LIMITS = web.AppKey("body_limits", dict[tuple[str, str], BodyLimit])
MAX_JSON_DEPTH = 32


def internal_error() -> ApiError:
    """What a client learns of a failure of ours (the details go to the log, never to the client)."""
    return ApiError(500, "INTERNAL", "internal error; the operator can find details in the logs")


_HTTP_CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        if error.status == 413:  # a body read whole (read, json, post) went past the route's limit
            return body_limit(request).refusal().response()
        code = _HTTP_CODES.get(error.status, "HTTP_ERROR")
        message = error.reason
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return ApiError(error.status, code, message, headers=headers).response()
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return internal_error().response()



@web.middleware
async def method_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A known path asked with a method it does not take is a 405 before any check of its body (whose
    type or size the route's other methods set): nothing runs for it either way."""
    error = request.match_info.http_exception
    if error is not None and error.status == 405:
        raise error
    return await handler(request)


def body_limit(request: web.Request) -> BodyLimit:
    """The route's own limit, else MAX_BODY_BYTES."""
    return request.app[BODY_LIMITS].get(route_key(request), request.app[MAX_BODY])


def limit_body(app: web.Application, method: str, path: str, limit: BodyLimit) -> None:
    """Hold one route to `limit` instead of MAX_BODY_BYTES (larger or smaller)."""
    app[BODY_LIMITS][(method.upper(), path)] = limit


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a declared oversize body before reading it; a body of unknown length is held to the same
    limit when read whole (aiohttp's client_max_size, set per route here). A handler that streams the
    body (an upload) counts what it keeps itself."""
    limit = body_limit(request)
    if request.content_length is not None and request.content_length > limit.max_bytes:
        raise limit.refusal()
    if request.client_max_size != limit.max_bytes:
        request = request.clone(client_max_size=limit.max_bytes)
    return await handler(request)


def check_running(state: ServerState) -> None:
    """API work needs a running runtime: 503 while starting up and once a shutdown has begun (for the
    HTTP API and the Socket.IO endpoint alike)."""
    if state.lifecycle is Lifecycle.STARTING:
        raise ApiError(503, "STARTING", "the agent is starting; try again in a moment", headers={"Retry-After": "2"})
    if state.lifecycle is Lifecycle.STOPPING:
        raise ApiError(503, "SHUTTING_DOWN", "the server is shutting down and takes no new work",
                       headers={"Retry-After": "10"})


@web.middleware
async def lifecycle_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.app[POLICY].access_of(request) is not Access.PUBLIC and request.path.startswith(API_PREFIX + "/"):
        check_running(request.app[STATE])
    return await handler(request)


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def build_application(*, state: ServerState, policy: AccessPolicy, max_body_bytes: int) -> web.Application:
    """An empty application with the middlewares in order: errors outermost, then 405s, limits, CSRF and auth."""
    app = web.Application(
        client_max_size=max_body_bytes,
        middlewares=[security_headers_middleware, error_middleware, method_middleware, body_limit_middleware,
                     browser_guard_middleware, auth_middleware, lifecycle_middleware],
    )
    app[STATE] = state
    app[POLICY] = policy
    app[MAX_BODY] = BodyLimit(max_body_bytes)
    app[BODY_LIMITS] = {}
    return app


def _field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(body)"


def validation_error(error: ValidationError, where: str) -> ApiError:
    """400 naming every bad field, e.g. `text: Field required`."""
    details = [{"field": _field_name(e["loc"]), "message": e["msg"]} for e in error.errors()]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return ApiError(400, "INVALID_" + where.upper(), f"invalid {where}: {summary}", details=details)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _too_deep(where: str) -> ApiError:
    return ApiError(400, "INVALID_JSON", f"the {where} nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")


def _depth(data: Any) -> int:
    """How deeply lists and dicts nest (iteratively, so no input can exhaust the stack)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value))
    return deepest


def _cleaned(value: Any, where: str) -> Any:
    """Lone surrogates replaced; a number that is not finite refused. (Recursion is safe: the depth is
    checked first.)"""
    if isinstance(value, str):
        return replace_surrogates(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(400, "INVALID_JSON", f"the {where} holds a number JSON does not have (NaN or Infinity)")
    if isinstance(value, dict):
        return {replace_surrogates(str(k)): _cleaned(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_cleaned(v, where) for v in value]
    return value


def checked_json(data: Any, where: str = "body") -> Any:
    """Decoded JSON from a client (an HTTP body, a Socket.IO payload) held to the rules of every
    intake: nested at most MAX_JSON_DEPTH deep, so validating and storing it cannot exhaust the
    stack; numbers finite (a decoder takes NaN, Infinity and 1e999, but JSON and the store have no
    such values); lone surrogates replaced, as they cannot be stored. NULs are left for the schema
    to refuse. A 400 `ApiError` naming `where` otherwise."""
    if _depth(data) > MAX_JSON_DEPTH:
        raise _too_deep(where)
    return _cleaned(data, where)


def check_metadata(metadata: dict[str, Any], limit: int, field: str = "metadata") -> None:
    """Client metadata is kept (in memory and in the store), so its size is capped."""
    size = len(json.dumps(metadata, separators=(",", ":")).encode())
    if size > limit:
        message = f"{size} bytes as JSON; at most {limit} (SESSION_MAX_METADATA_BYTES)"
        raise ApiError(400, "INVALID_BODY", f"invalid body: {field}: {message}",
                       details=[{"field": field, "message": message}])


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def parse_body(request: web.Request, model: type[M]) -> M:
    """The request's JSON body validated by `model`; 400 for bad JSON or bad fields, 413 when too big."""
    raw = await request.read()
    try:
        data = json.loads(raw, parse_constant=_no_constant) if raw.strip() else None
    except RecursionError:
        raise _too_deep("body") from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "INVALID_JSON", "the body is not valid JSON") from None
    data = checked_json(data)
    if not isinstance(data, dict):
        raise ApiError(400, "INVALID_BODY", "the body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw):  # the cleaned text is validated: its lone surrogates are replaced
        raw = json.dumps(data, ensure_ascii=False).encode()
    try:
        # strict: JSON types must match the schema (no false → 0.0); strings still parse to UUIDs and enums.
        return model.model_validate_json(raw, strict=True)
    except ValidationError as error:
        raise validation_error(error, "body") from None


def parse_query(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as error:
        raise validation_error(error, "query") from None


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(by_alias=True), status=status, content_type="application/json")

"""API operations as data, so one list both mounts the routes and produces `GET /api/openapi.json`.

The document is OpenAPI 3.1, whose schema dialect is JSON Schema 2020-12: pydantic's own output
drops in unchanged, so what the document promises is exactly what the handlers validate.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .access import STATE_CHANGING, VISITOR_COOKIE, Access
from .models import AGENT_DESCRIPTION, ErrorResponse

if TYPE_CHECKING:
    from bot.plugin import Route

REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"\{(\w+)\}")
_ERROR_TEXT = {
    400: "Bad input; the body names each bad field",
    401: "Missing or wrong API key (or, for a visitor, no session cookie)",
    403: "A browser request from another origin",
    404: "Not found",
    409: "Conflict, or NOT_SUPPORTED: an elizaOS operation parley does not do (the message says what to do)",
    413: "Body larger than MAX_BODY_BYTES",
    415: "The body is not application/json",
    422: "The request cannot be applied in the current state",
    429: "Too many requests; the body says what to do",
    503: "Starting up or shutting down; retry later",
    504: "The agent is still working; the reply will appear in the history",
}

_STREAM = ("Server-Sent Events, for a request with `Accept: text/event-stream` or `\"transport\": \"sse\"` once "
           "the message is accepted: `user_message` (the stored message), `chunk` events (`messageId`, `chunk`: "
           "text to append to that reply, `index`, `reset`: clear that reply's text first), then exactly one of "
           "`done` (the same result as the JSON answer) or `error` (the JSON answer's error body). Each event's "
           "data is one line of JSON, whose schema is its contentSchema here.")

_ADMIN = ("The server's API_KEY. Without API_KEY only direct loopback clients are served (not through a proxy).")
_ADMIN_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]


def _security(access: Access, visitors: bool) -> list[dict[str, list[str]]]:
    """Admin credentials; with visitors on, their cookie too, or nothing at all to start a session."""
    if not visitors or access is Access.ADMIN:
        return _ADMIN_SECURITY
    return [*_ADMIN_SECURITY, {"visitor": []} if access is Access.VISITOR else {}]


@dataclass
class Operation:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    tag: str
    responses: dict[int, type[BaseModel] | None]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: Sequence[int] = ()
    access: Access = Access.ADMIN
    description: str = ""
    path_params: dict[str, str] = field(default_factory=dict)
    # More JSON Schema for a path parameter: {"format": "uuid"}, or {"examples": ["default"]} for a value
    # that always names something, so a tester (schemathesis) can reach the operation.
    path_schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    # OpenAPI links from the success response: name -> (operationId, {parameter: runtime expression}).
    links: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    # The success response can also be Server-Sent Events: event name -> its data (`error` is implied).
    events: dict[str, type[BaseModel]] = field(default_factory=dict)
    # Body types taken instead of JSON (`body` is their schema), e.g. multipart/form-data for an upload, and
    # more of each one's OpenAPI media type object: an `example`, a multipart body's `encoding`.
    body_types: tuple[str, ...] = ()
    body_openapi: dict[str, Any] = field(default_factory=dict)
    # A body limit of its own instead of MAX_BODY_BYTES, and what sets it (named by the 413).
    max_body_bytes: int | None = None
    max_body_reason: str = ""
    name: str = ""  # the operationId, when the handler's name is not unique (a plugin's route)

    @property
    def route_path(self) -> str:
        """The path for aiohttp's router: a parameter with a `pattern` in `path_schemas` matches only it."""
        def parameter(found: re.Match[str]) -> str:
            pattern = self.path_schemas.get(found.group(1), {}).get("pattern")
            return f"{{{found.group(1)}:{pattern.strip('^$')}}}" if pattern else found.group(0)
        return _PATH_PARAM.sub(parameter, self.path)

    @property
    def takes_body(self) -> bool:
        return self.body is not None or bool(self.body_types)

    @property
    def operation_id(self) -> str:
        return self.name or self.handler.__name__.strip("_")

    def error_text(self, status: int) -> str:
        """What an error status means for this operation (its own body limit and body types)."""
        if status == 413 and self.max_body_bytes is not None:
            return f"Body larger than {self.max_body_bytes} bytes ({self.max_body_reason or 'this operation'})"
        if status == 415 and self.body_types:
            return "The body is none of: " + ", ".join(["application/json", *self.body_types])
        return _ERROR_TEXT.get(status, "Error")


def route_operation(route: Route, plugin: str) -> Operation:
    """A plugin's /api route as an operation, so it is mounted, guarded and documented like the server's
    own: tagged with the plugin's name, its operationId prefixed with it (handler names repeat across
    plugins), summarised by `route.summary` or else the first paragraph of the handler's docstring."""
    doc = inspect.getdoc(route.handler) or ""
    first, _, rest = doc.partition("\n\n")
    summary, description = (route.summary, doc) if route.summary else (" ".join(first.split()), rest)
    return Operation(route.method.upper(), route.path, route.handler, summary or f"{route.method} {route.path}",
                     plugin, route.responses or {200: None}, body=route.body, errors=route.errors,
                     access=Access.PUBLIC if route.public else Access.ADMIN, description=description,
                     path_schemas=route.path_schemas, body_types=route.body_types, body_openapi=route.body_openapi,
                     max_body_bytes=route.max_body_bytes, max_body_reason=route.max_body_reason,
                     name=f"{plugin}_{route.handler.__name__.strip('_')}")


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": REF.format(model=model.__name__)}


def _event_schema(events: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """The schema of one event: without OpenAPI 3.2's itemSchema, `schema` describes each event of a stream."""
    return {"type": "object", "required": ["event", "data"], "description": _STREAM, "oneOf": [
        {"properties": {"event": {"const": name}, "data": {
            "type": "string", "contentMediaType": "application/json", "contentSchema": _ref(model)}}}
        for name, model in {**events, "error": ErrorResponse}.items()]}


def _query_parameters(model: type[BaseModel], definitions: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    definitions.update(schema.get("$defs", {}))
    return params


def _agent_parameter(op: Operation) -> list[dict[str, Any]]:
    """`?agent=` for an operation addressed to one agent, unless its path names the agent (or the session,
    which has one) or its query model already has the field."""
    named = set(_PATH_PARAM.findall(op.path)) & {"agent_id", "session_id"}
    if named or (op.query is not None and "agent" in op.query.model_fields):
        return []
    return [{"name": "agent", "in": "query", "required": False, "description": AGENT_DESCRIPTION,
             "schema": {"type": "string", "minLength": 1}}]


def build_openapi(operations: Sequence[Operation], *, title: str, version: str, visitors: bool,
                  addressed: Collection[int] = (), several: bool = False) -> dict[str, Any]:
    """The document; the operations whose ids are in `addressed` serve one agent (an unknown agent is a
    404, one that does not run a 409; see `directory.Agents`), named by `?agent=` when there are
    `several` (a body's agent field is in its schema either way)."""
    models: set[type[BaseModel]] = {ErrorResponse}
    for op in operations:
        models.update(m for m in op.responses.values() if m is not None)
        models.update(op.events.values())
        if op.body is not None:
            models.add(op.body)
    ordered = sorted(models, key=lambda m: m.__name__)
    for one, other in zip(ordered, ordered[1:], strict=False):  # schemas are named by class name alone
        if one.__name__ == other.__name__:
            raise ValueError(f"two API models are named {one.__name__} ({one.__module__}, {other.__module__}); "
                             "rename one")
    _, top = models_json_schema([(m, "validation") for m in ordered], ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
        if op.description:
            item["description"] = op.description
        parameters = [
            {"name": name, "in": "path", "required": True, "description": op.path_params.get(name, ""),
             "schema": {"type": "string", "minLength": 1, **op.path_schemas.get(name, {})}}
            for name in _PATH_PARAM.findall(op.path)
        ]
        if op.query is not None:
            parameters += _query_parameters(op.query, schemas)
        if id(op) in addressed and several:
            parameters += _agent_parameter(op)
        if parameters:
            item["parameters"] = parameters
        if op.takes_body:
            schema = _ref(op.body) if op.body is not None else {}
            item["requestBody"] = {"required": True, "content": {
                kind: {"schema": schema, **op.body_openapi} for kind in op.body_types or ("application/json",)}}
        responses: dict[str, Any] = {}
        for status, model in op.responses.items():
            entry: dict[str, Any] = {"description": "OK" if status < 300 else "Result"}
            if model is not None:
                entry["content"] = {"application/json": {"schema": _ref(model)}}
            if status < 300 and op.links:
                entry["links"] = {name: {"operationId": target, "parameters": params}
                                  for name, (target, params) in op.links.items()}
            responses[str(status)] = entry
        if op.events:  # a stream is always a 200, whatever the JSON answer's status
            streamed = responses.setdefault("200", {"description": "OK"})
            streamed.setdefault("content", {})["text/event-stream"] = {"schema": _event_schema(op.events)}
        errors = set(op.errors) | ({400, 413} if op.takes_body else set()) | (
            {400} if op.query is not None else set()) | ({401, 503} if op.access is not Access.PUBLIC else set()) | (
            {429} if visitors and op.access in (Access.VISITOR, Access.VISITOR_START) else set()) | (
            {403, 415} if op.method in STATE_CHANGING else set()) | ({404, 409} if id(op) in addressed else set())
        for status in sorted(errors):
            responses[str(status)] = {"description": op.error_text(status), "content": {
                "application/json": {"schema": _ref(ErrorResponse)}}}
        responses["default"] = {"description": "Unexpected error", "content": {
            "application/json": {"schema": _ref(ErrorResponse)}}}
        item["responses"] = responses
        if op.access is not Access.PUBLIC:
            item["security"] = _security(op.access, visitors)
        paths.setdefault(op.path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Talk to the agent, read its history and memories, and run chat sessions."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": _ADMIN},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY", "description": _ADMIN},
                "visitor": {"type": "apiKey", "in": "cookie", "name": VISITOR_COOKIE,
                            "description": "Set by POST /api/sessions for a web chat visitor (WEB_CHAT=public); "
                                           "it reaches only that visitor's own sessions."},
            },
        },
    }

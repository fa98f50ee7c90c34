"""Who may do what over HTTP, and the browser guards.

Admins may do everything: they send API_KEY as `Authorization: Bearer <key>` or `X-API-KEY: <key>`.
Without API_KEY the admin is a direct loopback client only: a request carrying proxy headers came
through a proxy or tunnel on this host and counts as remote.
Web chat visitors (WEB_CHAT=public) hold no key: an HttpOnly cookie names each one, and they may only
create and use their own sessions (VISITOR routes), within per-IP and per-session rate limits.
State-changing requests must come from this origin, and /api bodies must be JSON, so a foreign page
cannot make a browser act on the API (CSRF).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from aiohttp import web

from bot.settings import Settings, WebChatMode

from .errors import ApiError
from .limits import KeyedLimiter

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_PREFIX = "/api"
SOCKET_IO_PREFIX = "/socket.io/"
VISITOR_COOKIE = "parley_visitor"
VISITOR_COOKIE_MAX_AGE = 30 * 24 * 3600
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-IP", "Via",
                 "CF-Connecting-IP", "True-Client-IP")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


class Access(StrEnum):
    PUBLIC = "public"  # anyone
    ADMIN = "admin"  # the key holder (or, without API_KEY, a direct loopback client)
    VISITOR = "visitor"  # admins, and web chat visitors (by their cookie) within their own sessions
    VISITOR_START = "visitor_start"  # admins, and any web chat visitor: a new one gets its cookie here


def _digest(value: str, size: int) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:size]


@dataclass(frozen=True)
class Caller:
    admin: bool
    ip: str
    visitor_token: str | None = None
    new_visitor: bool = False

    @property
    def owner(self) -> str | None:
        """The sessions this caller may use: None for an admin (any), else the visitor's own."""
        return None if self.admin or self.visitor_token is None else "visitor:" + _digest(self.visitor_token, 32)

    @property
    def client(self) -> str:
        """The client's address, pseudonymised, to count its sessions."""
        return _digest("parley:" + self.ip, 24)

    @property
    def user_id(self) -> str | None:
        """A visitor's user id is the server's choice, so it never names another user's entity."""
        return None if self.owner is None else "visitor-" + self.owner.removeprefix("visitor:")[:20]


CALLER = web.RequestKey("caller", Caller)


def route_key(request: web.Request) -> tuple[str, str]:
    resource = request.match_info.route.resource
    return request.method, resource.canonical if resource is not None else request.path


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """Whether a listen address (HOST) accepts only this machine's connections."""
    return host == "localhost" or _is_loopback(host)


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


def is_direct_loopback(request: web.Request) -> bool:
    """A loopback peer that no proxy relayed, asking for this machine by a loopback name: any
    proxy header makes the request remote, and any other Host (a DNS-rebinding page whose name
    resolves to 127.0.0.1 in the owner's browser) is not this machine's own client."""
    host = urlsplit(f"//{request.host}").hostname or ""
    return (_is_loopback(request.remote) and not any(name in request.headers for name in PROXY_HEADERS)
            and (host in LOOPBACK_HOSTS or host.startswith("127.")))


def presented_keys(request: web.Request) -> list[str]:
    """The keys a request carries: `X-API-KEY` and a Bearer token."""
    keys = [request.headers.get("X-API-KEY", "").strip()]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        keys.append(token.strip())
    return [key for key in keys if key]


def client_ip(request: web.Request, trusted_proxies: int) -> str:
    """The TCP peer, or with `trusted_proxies` hops the X-Forwarded-For entry the nearest trusted proxy added."""
    if trusted_proxies:
        hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", []) for hop in value.split(",")]
        if len(hops) >= trusted_proxies:
            try:
                return str(ipaddress.ip_address(hops[-trusted_proxies]))
            except ValueError:
                pass
    return request.remote or "unknown"


class AccessPolicy:
    """Route access, the caller's identity and the visitor limits of one server."""

    def __init__(self, settings: Settings) -> None:
        self.api_key = settings.api_key.get_secret_value() if settings.api_key else ""
        self.web_chat = settings.web_chat
        self.trusted_proxies = settings.trusted_proxies
        self.routes: dict[tuple[str, str], Access] = {}
        self.body_types: dict[tuple[str, str], frozenset[str]] = {}
        self.ip_limit = KeyedLimiter(settings.web_chat_ip_per_minute)
        self.message_limit = KeyedLimiter(settings.web_chat_messages_per_minute)

    def allow(self, method: str, path: str, access: Access, body_types: tuple[str, ...] = ()) -> None:
        self.routes[(method.upper(), path)] = access
        if body_types:
            self.body_types[(method.upper(), path)] = frozenset(body_types)

    def accepted_types(self, request: web.Request) -> list[str]:
        """The body types an /api route takes: JSON, and what the route declared besides."""
        return ["application/json", *sorted(self.body_types.get(route_key(request), ()))]

    @property
    def visitors(self) -> bool:
        return self.web_chat is WebChatMode.PUBLIC

    def access_of(self, request: web.Request) -> Access:
        """Listed routes as declared; anything else under /api (even a 404) is admin-only; the rest public.
        A known path asked with the wrong method is public: it only ever gets its 405."""
        error = request.match_info.http_exception
        if error is not None and error.status == 405:
            return Access.PUBLIC
        default = Access.ADMIN if request.path.startswith(API_PREFIX + "/") else Access.PUBLIC
        return self.routes.get(route_key(request), default)

    def key_matches(self, candidates: Iterable[object]) -> bool:
        """Whether one of the keys a client presented (anything, from anywhere: headers, a Socket.IO
        handshake) is API_KEY. Every string is compared in full (constant time); nothing matches
        without API_KEY."""
        key = self.api_key.encode()
        given = [c.strip().encode("utf-8", "replace") for c in candidates if isinstance(c, str) and c.strip()]
        return bool(key) and any([hmac.compare_digest(candidate, key) for candidate in given])

    def _is_admin(self, request: web.Request) -> bool:
        """With API_KEY: a key that matches, and a wrong one is refused (never demoted to a visitor)."""
        if not self.api_key:
            return is_direct_loopback(request)
        presented = presented_keys(request)
        if not presented:
            return False
        if self.key_matches(presented):
            return True
        raise self.unauthorized()

    def identify(self, request: web.Request, access: Access) -> Caller:
        """The admin, or a web chat visitor where `access` lets one in; else 401."""
        ip = client_ip(request, self.trusted_proxies)
        if self._is_admin(request):
            return Caller(admin=True, ip=ip)
        if not self.visitors or access not in (Access.VISITOR, Access.VISITOR_START):
            raise self.unauthorized()
        token = request.cookies.get(VISITOR_COOKIE, "")
        if _TOKEN.match(token):
            return Caller(admin=False, ip=ip, visitor_token=token)
        if access is Access.VISITOR:
            raise ApiError(401, "UNAUTHORIZED", "no web chat session cookie: start a session with POST "
                           "/api/sessions (or send the API key)", headers={"WWW-Authenticate": 'Bearer realm="parley"'})
        return Caller(admin=False, ip=ip, visitor_token=secrets.token_urlsafe(32), new_visitor=True)

    def unauthorized(self) -> ApiError:
        if self.api_key:
            message = ("missing or wrong API key: send 'Authorization: Bearer <API_KEY>' or 'X-API-KEY: <API_KEY>'")
        else:
            message = ("without API_KEY the API answers only direct local clients, not requests relayed by a proxy "
                       "or tunnel: set API_KEY on the server and send 'Authorization: Bearer <API_KEY>'")
        return ApiError(401, "UNAUTHORIZED", message, headers={"WWW-Authenticate": 'Bearer realm="parley"'})

    async def admit_visitor(self, caller: Caller) -> None:
        if not await self.ip_limit.allow(caller.ip):
            raise ApiError(429, "RATE_LIMITED", "too many requests from your address; slow down and try again "
                           "shortly", headers={"Retry-After": str(self.ip_limit.retry_after)})

    async def check_message(self, caller: Caller, session_id: str) -> None:
        """A visitor's messages per session are limited: each one spends the owner's model budget."""
        if caller.admin:
            return
        if not await self.message_limit.allow(session_id):
            raise ApiError(429, "RATE_LIMITED", "you are sending messages too fast; wait a moment and try again",
                           headers={"Retry-After": str(self.message_limit.retry_after)})


POLICY = web.AppKey("access_policy", AccessPolicy)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    policy = request.app[POLICY]
    access = policy.access_of(request)
    if access is Access.PUBLIC:
        return await handler(request)
    caller = policy.identify(request, access)
    if not caller.admin:
        await policy.admit_visitor(caller)
    request[CALLER] = caller
    response = await handler(request)
    if caller.new_visitor and response.status < 400:
        response.set_cookie(VISITOR_COOKIE, caller.visitor_token or "", max_age=VISITOR_COOKIE_MAX_AGE,
                            path=API_PREFIX + "/sessions", httponly=True, samesite="Strict",
                            secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https")
    return response


def _foreign_origin(request: web.Request) -> bool:
    if request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False  # not a browser's cross-origin request (browsers always send Origin on those)
    try:
        return urlsplit(origin).netloc.lower() != request.host.lower()
    except ValueError:
        return True


@web.middleware
async def browser_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CSRF: state-changing requests from another origin get 403; an /api body must be JSON (else 415),
    so no HTML form or `text/plain` fetch can post one, unless its route declares another type (an
    upload's multipart/form-data), which the origin check still guards. Socket.IO's long-polling posts are left to
    engine.io's own origin check: a socket is admitted by the key in its handshake, not by cookies."""
    if request.method in STATE_CHANGING and not request.path.startswith(SOCKET_IO_PREFIX):
        if _foreign_origin(request):
            raise ApiError(403, "FOREIGN_ORIGIN", "requests from another origin are refused; call the API from "
                           "this server's own pages or from a non-browser client")
        accepted = request.app[POLICY].accepted_types(request)
        if request.path.startswith(API_PREFIX + "/") and request.body_exists \
                and request.content_type not in accepted:
            raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send the body as JSON with 'Content-Type: "
                           "application/json'" + "".join(f" or as {kind}" for kind in accepted[1:]))
    return await handler(request)

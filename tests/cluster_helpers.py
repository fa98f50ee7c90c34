"""Real `python -m bot` processes for tests and benchmarks: one, or several sharing a PostgreSQL database.

`BotProcess` starts one process (its output in a log file), waits until it answers /ready, stops it
with SIGTERM or kills it with SIGKILL. `running_cluster` starts N of them on a fresh PostgreSQL
database behind a `FakeTelegram` that delivers webhook updates round-robin (`WebhookDeliverer`) and
a fake OpenAI model (`ClusterModel`) that takes a set time per call and says in its answer which
process asked::

    async with running_cluster(tmp_path, 3, admin_url) as cluster:
        cluster.deliverer.deliver({"message": cluster.telegram.message(user, chat, "hi")})
        await wait_until(lambda: len(cluster.telegram.calls_to("sendMessage")) == 1, 30, "a reply")

With `discord=FakeDiscord(recommended_shards=n)` (its world of guilds and channels set up, not yet
started), the cluster runs it too: p0 .. p{n-1} each run one shard of n (SHARD_COUNT, SHARD_IDS), the
other processes no Discord at all; the test dispatches gateway events with `cluster.discord.dispatch`.

`ReplyLedger` reads the fake's sendMessage calls back as "which message did each reply answer"
(the reply_parameters.message_id the outbox sends) and lists what was answered never, twice or out
of order; `DiscordLedger` does the same with the messages the bot created on the fake Discord (the
message_reference of each); `Cluster.report()` adds what each process did and the end of its log,
for failure messages.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from sqlalchemy.engine import make_url

from tests.fakes.discord_api import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_api import Call, FakeTelegram
from tests.fakes.telegram_webhooks import WebhookDeliverer
from tests.server_helpers import env_for, xml_reply

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "987654321:AAEe2eTOKENzyxwvutsrqponmlkjihgfedcba"
WEBHOOK_SECRET = "cluster-webhook-secret-0123456789"
# What the bot registers with setWebhook: the load balancer's address (the fake never calls it).
PUBLIC_WEBHOOK_URL = "https://parley.example.com/telegram/webhook"


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def wait_until(condition: Callable[[], bool], timeout: float, what: str,
                     details: Callable[[], str] | None = None, interval: float = 0.05) -> float:
    """Poll `condition` until it holds (returns the seconds it took) or fail after `timeout` naming `what`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f}s" + (f"\n{details()}" if details else ""))
        await asyncio.sleep(interval)
    return time.monotonic() - started


# --- one process ----------------------------------------------------------------------------------
@dataclass
class BotProcess:
    """One `python -m bot` subprocess; stdout and stderr go to `log_path`."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    port: int | None = None
    killed: bool = False

    @classmethod
    async def start(cls, name: str, env: dict[str, str], log_path: Path) -> BotProcess:
        """Spawn it (`env` on top of this process's environment) and return at once."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", cwd=ROOT, env={**os.environ, **env},
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            )
        port = int(env["PORT"]) if env.get("PORT", "0") != "0" else None
        return cls(name, process, log_path, port)

    @property
    def url(self) -> str:
        assert self.port is not None, "started with PORT=0: the port is unknown"
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 60.0) -> float:
        """Until GET /ready answers 200; fails with the end of the log if it exits or takes too long."""
        started = time.monotonic()
        while True:
            if not self.alive:
                raise AssertionError(f"{self.name} exited with {self.process.returncode} before it was ready:\n"
                                     f"{self.log_tail()}")
            try:
                async with http.get(f"{self.url}/ready", timeout=aiohttp.ClientTimeout(total=5)) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{self.name} not ready within {timeout:.0f}s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    async def metric(self, http: aiohttp.ClientSession, name: str) -> float | None:
        """A sample's value from /metrics (the first line named `name`), None if unreachable or absent."""
        try:
            async with http.get(f"{self.url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        found = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then its exit code (SIGKILL and an error if it has not exited within `timeout`)."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"{self.name} did not stop within {timeout:.0f}s of SIGTERM:\n"
                                 f"{self.log_tail()}") from None

    async def kill(self) -> None:
        """SIGKILL (kill -9): no clean-up at all, like a crashed or evicted dyno."""
        if self.alive:
            self.killed = True
            self.process.kill()
        await self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        tail = self.log().splitlines()[-lines:]
        return "\n".join(f"  [{self.name}] {line}" for line in tail) or f"  [{self.name}] (no output)"


# --- the model ------------------------------------------------------------------------------------
_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="?")
SHOULD_RESPOND_PROMPT = "Decide whether"  # plugins/bootstrap/templates.py SHOULD_RESPOND_TEMPLATE


def answer_text(process: str) -> str:
    return f"Answered by {process}."


def sender_of(reply: Reply) -> str:
    """The process that sent a reply, as its answer text says (see `answer_text`)."""
    found = re.fullmatch(r"Answered by (\S+)\.", reply.text)
    return found.group(1) if found else "?"


class ClusterModel(FakeOpenAI):
    """The fake OpenAI API for a cluster: each chat completion takes `delay` seconds, and the reply
    names the process that asked (known by its API key, see `key_for`), so a reply sent twice shows
    who sent each. Group messages that do not address the bot are declined (IGNORE), so only
    addressed messages get replies."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(reply=self._answer)
        self.delay = delay
        self.calls_by: Counter[str] = Counter()  # chat completions per process
        self.in_flight = 0
        self.most_in_flight = 0
        self._callers: dict[str, str] = {}

    def key_for(self, process: str) -> str:
        """The OPENAI_API_KEY to give `process`."""
        key = f"sk-cluster-{process}-{uuid.uuid4().hex[:16]}"
        self._callers[key] = process
        return key

    @staticmethod
    def _answer(body: dict[str, Any]) -> str:
        prompt = " ".join(str(m.get("content")) for m in body.get("messages", []))
        if SHOULD_RESPOND_PROMPT in prompt:
            return "IGNORE"
        return xml_reply(answer_text(_CALLER.get()))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        caller = self._callers.get(key, "?")
        _CALLER.set(caller)  # this request's own task: the reply callable reads it
        self.calls_by[caller] += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return await super()._chat(request)
        finally:
            self.in_flight -= 1


# --- the database ---------------------------------------------------------------------------------
@asynccontextmanager
async def fresh_database(admin_url: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database on the server of `admin_url` (dropped afterwards); yields its URL.

    A database of its own rather than a schema (as tests/conftest.py does for one store): several
    processes read DATABASE_URL alone, and advisory locks are per database.
    """
    admin = make_url(admin_url)
    name = f"parley_cluster_{uuid.uuid4().hex[:12]}"
    plain = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(plain)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        connection = await asyncpg.connect(plain)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


# --- the cluster ----------------------------------------------------------------------------------
@dataclass
class Cluster:
    telegram: FakeTelegram
    model: ClusterModel
    deliverer: WebhookDeliverer
    processes: list[BotProcess]
    http: aiohttp.ClientSession
    ready_after: dict[str, float] = field(default_factory=dict)  # seconds from spawn to ready, per process
    discord: FakeDiscord | None = None  # with its shards run by p0 .. p{SHARD_COUNT-1}
    database_url: str = ""

    async def left_sending(self) -> set[tuple[int, int]]:
        """Telegram messages (chat, message id) a process marked "sending" and never finished: it died
        with the reply on its way, and by design nobody sends it again (never twice, see docs/scaling.md)."""
        db = await asyncpg.connect(make_url(self.database_url).set(drivername="postgresql")
                                   .render_as_string(hide_password=False))
        try:
            rows = await db.fetch("SELECT meta FROM memories WHERE run_state = 'sending'")
        finally:
            await db.close()
        infos = [json.loads(row["meta"]).get("telegram", {}) for row in rows]
        return {(int(i["chat_id"]), int(i["message_id"])) for i in infos if "message_id" in i}

    @property
    def live(self) -> list[BotProcess]:
        return [p for p in self.processes if p.alive]

    async def queue_depths(self) -> dict[str, float | None]:
        """parley_queue_depth of each live process (None: /metrics did not answer)."""
        live = self.live
        values = await asyncio.gather(*(p.metric(self.http, "parley_queue_depth") for p in live))
        return {p.name: v for p, v in zip(live, values, strict=True)}

    def last_reply_at(self, default: float) -> float:
        """When the latest sendMessage (or Discord message) came, on the monotonic clock."""
        times = [c.at for c in self.telegram.calls_to("sendMessage")]
        if self.discord is not None:
            times += [r.at for r in discord_replies(self.discord)]
        return max(times, default=default)

    async def wait_idle(self, quiet: float, timeout: float = 30.0) -> None:
        """Until every update is delivered, every live process's queue is empty and no sendMessage
        (nor Discord message) came for `quiet` seconds (long enough for any process to pick up work
        left behind)."""
        started = time.monotonic()
        while True:
            last = self.last_reply_at(default=started)
            depths = await self.queue_depths()
            now = time.monotonic()
            if not self.deliverer.pending and all(v == 0 for v in depths.values()) and now - max(last, started) >= quiet:
                return
            if now - started > timeout:
                raise AssertionError(f"not idle within {timeout:.0f}s: queue depths {depths}, "
                                     f"{len(self.deliverer.pending)} update(s) undelivered, "
                                     f"last reply {now - last:.1f}s ago\n{self.report()}")
            await asyncio.sleep(0.1)

    def report(self, log_lines: int = 12) -> str:
        """Per process: state, updates it accepted, model calls it made, and the end of its log."""
        lines = []
        for p in self.processes:
            state = "killed" if p.killed else ("running" if p.alive else f"exited {p.process.returncode}")
            accepted = len(self.deliverer.accepted_by(p.url))
            lines.append(f"{p.name} ({p.url}, {state}): accepted {accepted} update(s), "
                         f"{self.model.calls_by[p.name]} model call(s); log {p.log_path}")
            lines.append(p.log_tail(log_lines))
        if self.discord is not None:
            sessions = {shard: s.connected for shard, s in sorted(self.discord.sessions.items())}
            senders = Counter(sender_of(r) for r in discord_replies(self.discord))
            lines.append(f"Discord: shard sockets up {sessions}; messages created by {dict(senders)}")
        failed = self.deliverer.failed_attempts()
        if failed:
            lines.append(f"{len(failed)} delivery attempt(s) refused or failed, e.g. "
                         + "; ".join(f"{a.url}: {a.status or a.error}" for a in failed[:3]))
        return "\n".join(lines)


def process_env(tmp_path: Path, name: str, model: ClusterModel, telegram: FakeTelegram, port: int,
                database_url: str | None, **overrides: str) -> dict[str, str]:
    """The environment of one cluster process: everything a web dyno would be given."""
    return env_for(
        tmp_path, model.base_url, OPENAI_API_KEY=model.key_for(name), DATA_DIR=str(tmp_path / name / "data"),
        PORT=str(port), CONSOLE="off", TELEGRAM_BOT_TOKEN=telegram.token, TELEGRAM_API_ROOT=telegram.root,
        TELEGRAM_WEBHOOK_URL=PUBLIC_WEBHOOK_URL, TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        RATE_LIMIT_PER_MINUTE="0", **({"DATABASE_URL": database_url} if database_url else {}),
        # The ledgers count what each send request carried; a streamed reply's first send is a preview.
        STREAMING="off", **overrides,
    )


def discord_env(discord: FakeDiscord | None, shard: int | None) -> dict[str, str]:
    """The Discord settings of one process: shard `shard` of the fake's `recommended_shards`, or none
    (no token, whatever this process's environment holds)."""
    if discord is None or shard is None:
        return {"DISCORD_API_TOKEN": ""}
    return {"DISCORD_API_TOKEN": discord.token, "DISCORD_API_BASE": discord.api_base,
            "DISCORD_GATEWAY_URL": discord.gateway_url, "SHARD_COUNT": str(discord.recommended_shards),
            "SHARD_IDS": str(shard)}


@asynccontextmanager
async def running_cluster(tmp_path: Path, count: int, admin_url: str, *, model_delay: float = 0.0,
                          ready_timeout: float = 90.0, discord: FakeDiscord | None = None,
                          **overrides: str) -> AsyncIterator[Cluster]:
    """`count` processes on a fresh database of `admin_url`'s server, all ready, with a deliverer in
    front; on exit the live ones get SIGTERM (a process that fails to stop cleanly fails the test).

    `discord`, not yet started: started here, its `recommended_shards` shards run one each by the first
    processes (all of them connected before this yields); the other processes run no Discord."""
    shards = discord.recommended_shards if discord is not None else 0
    assert shards <= count, f"{shards} Discord shards need at least as many processes, not {count}"
    async with AsyncExitStack() as stack:
        telegram = await stack.enter_async_context(FakeTelegram(TOKEN))
        model = ClusterModel(model_delay)
        await stack.enter_async_context(model)
        if discord is not None:
            await discord.start()
            stack.push_async_callback(discord.stop)  # after the processes have stopped
        database_url = await stack.enter_async_context(fresh_database(admin_url))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        processes: list[BotProcess] = []
        try:
            for index in range(count):
                name = f"p{index}"
                env = process_env(tmp_path, name, model, telegram, free_port(), database_url,
                                  **{**discord_env(discord, index if index < shards else None), **overrides})
                processes.append(await BotProcess.start(name, env, tmp_path / f"{name}.log"))
            # /ready includes each connector: a Discord process is ready once its client is.
            took = await asyncio.gather(*(p.wait_ready(http, ready_timeout) for p in processes))
            ready = {p.name: round(t, 1) for p, t in zip(processes, took, strict=True)}
            if discord is not None:
                await discord.wait_connected(ready_timeout, shards=range(shards))
            deliverer = WebhookDeliverer(telegram, [p.url for p in processes], secret=WEBHOOK_SECRET)
            async with deliverer:
                yield Cluster(telegram, model, deliverer, processes, http, ready, discord, database_url)
        finally:
            codes = await asyncio.gather(*(p.stop() for p in processes), return_exceptions=True)
        unclean = [(p, c) for p, c in zip(processes, codes, strict=True) if not p.killed and c != 0]
        if unclean:
            raise AssertionError("; ".join(f"{p.name} stopped with {c}:\n{p.log_tail()}" for p, c in unclean))


# --- what was answered ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    chat_id: int
    reply_to: int | None  # the message id it answers
    text: str
    at: float


def reply_of(call: Call) -> Reply:
    params = call.params
    reply_to = (params.get("reply_parameters") or {}).get("message_id") or params.get("reply_to_message_id")
    return Reply(int(params["chat_id"]), int(reply_to) if reply_to is not None else None,
                 str(params.get("text", "")), call.at)


def discord_replies(discord: FakeDiscord) -> list[Reply]:
    """The messages the bot created on the fake Discord, in the order it received them, as Replies:
    chat_id the channel, reply_to the message its message_reference names, `at` the fake's
    timestamp (wall clock) moved onto the monotonic clock, nudged so that it grows with that order."""
    to_monotonic = time.monotonic() - time.time()
    replies: list[Reply] = []
    for message in list(discord.messages):
        body = message.get("sent_body") or {}
        reply_to = (body.get("message_reference") or {}).get("message_id")
        at = datetime.fromisoformat(message["timestamp"]).timestamp() + to_monotonic
        at = max(at, replies[-1].at + 1e-6) if replies else at
        replies.append(Reply(int(message["channel_id"]), int(reply_to) if reply_to is not None else None,
                             str(body.get("content") or ""), at))
    return replies


class ReplyLedger:
    """The replies FakeTelegram was sent, keyed by (chat id, message id answered)."""

    def __init__(self, telegram: FakeTelegram) -> None:
        self._index([reply_of(c) for c in telegram.calls_to("sendMessage", ok=True)])

    def _index(self, replies: list[Reply]) -> None:
        self.replies = replies  # in the order they were sent
        self.by_message: defaultdict[tuple[int, int | None], list[Reply]] = defaultdict(list)
        for reply in self.replies:
            self.by_message[(reply.chat_id, reply.reply_to)].append(reply)

    def answered(self, messages: Iterable[tuple[int, int]]) -> int:
        return sum(1 for key in messages if self.by_message.get(key))

    def problems(self, addressed: list[tuple[int, int]], expected_text: str = "Answered by ",
                 reference: tuple[str, float] | None = None) -> list[str]:
        """Everything wrong: addressed messages answered never or more than once, replies not naming
        a message, replies that are not the model's answer (an apology), chats answered out of order.
        `reference` (name, monotonic time), e.g. ("the kill", t), dates the replies of a message
        answered twice relative to that moment."""
        problems = []
        never = [key for key in addressed if not self.by_message.get(key)]
        if never:
            problems.append(f"{len(never)} of {len(addressed)} addressed message(s) never answered: "
                            f"{_keys(never)}")
        twice = {key: self.by_message[key] for key in addressed if len(self.by_message.get(key, [])) > 1}
        if twice:
            def when(reply: Reply) -> str:
                if reference is None:
                    return ""
                offset = reply.at - reference[1]
                return f" {abs(offset):.3f}s {'after' if offset >= 0 else 'before'} {reference[0]}"

            shown = "; ".join(f"chat {c} message {m} by {', '.join(sender_of(r) + when(r) for r in rs)}"
                              for (c, m), rs in list(twice.items())[:8])
            problems.append(f"{len(twice)} message(s) answered more than once ({sum(map(len, twice.values()))} "
                            f"replies): {shown}")
        unanchored = [r for r in self.replies if r.reply_to is None]
        if unanchored:
            problems.append(f"{len(unanchored)} reply/replies answering no message: {[r.text for r in unanchored[:5]]}")
        odd = [r for r in self.replies if not r.text.startswith(expected_text)]
        if odd:
            problems.append(f"{len(odd)} reply/replies that are not the model's answer: "
                            f"{sorted({r.text for r in odd})[:3]}")
        wanted = set(addressed)
        for chat_id in sorted({c for c, _ in addressed}):
            order = {r.reply_to: r for r in reversed(self.replies) if r.chat_id == chat_id
                     and (chat_id, r.reply_to) in wanted}  # each message's first reply
            first = sorted(order.values(), key=lambda r: r.at)
            if [r.reply_to for r in first] != sorted(order):  # ids grow in the order the chat's messages were sent
                shown = ", ".join(f"{r.reply_to} ({sender_of(r)})" for r in first)
                problems.append(f"chat {chat_id} answered out of order: replies to {shown}")
        return problems


class DiscordLedger(ReplyLedger):
    """The messages the bot created on FakeDiscord, keyed by (channel id, message id answered: the
    message_reference discord.py sends with a reply's first chunk)."""

    def __init__(self, discord: FakeDiscord) -> None:
        self._index(discord_replies(discord))


def _keys(keys: list[tuple[int, int]], limit: int = 10) -> str:
    shown = ", ".join(f"{chat}/{message}" for chat, message in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")

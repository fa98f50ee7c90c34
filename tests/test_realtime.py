"""elizaOS's Socket.IO protocol at /socket.io/, with python-socketio's real client against the whole
running bot (a fake model API that streams): handshake auth, joining channels, sending, the user's
message to the channel's other sockets, the reply as chunks and as a broadcast, and errors."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import socketio

from bot.runtime import SLOW_DOWN
from bot.server.conversation import accept_message, channel_room_key, room_id_for, user_id_for
from tests.fakes.openai_server import FakeOpenAI
from tests.server_helpers import Running, running_app, xml_reply
from tests.test_server_sessions import Clock

KEY = "realtime-test-key"
ADMIN = {"X-API-KEY": KEY}
USER = str(uuid.uuid4())
REPLY = "Streaming along nicely, one piece after another, until the reply is whole."
SERVER = "00000000-0000-0000-0000-000000000000"


class Sock:
    """A real Socket.IO client that keeps every event it receives, to wait on them in order."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self.refused: Any = None
        self._changed = asyncio.Condition()
        self.client.on("*", self._record)
        self.client.on("connect_error", self._refused)
        self.client.on("disconnect", self._disconnected)

    async def _record(self, event: str, data: Any) -> None:
        async with self._changed:
            self.events.append((event, data))
            self._changed.notify_all()

    async def _refused(self, data: Any) -> None:
        self.refused = data

    async def _disconnected(self, reason: Any = None) -> None:
        await self._record("disconnect", None)

    async def connect(self, bot: Running, *, entity: str = USER, key: str | None = KEY,
                      transports: list[str] | None = None, headers: dict[str, str] | None = None,
                      **extra: Any) -> None:
        auth = {"entityId": entity, **({"apiKey": key} if key is not None else {}), **extra}
        await self.client.connect(bot.url, auth=auth, headers=headers or {},
                                  transports=transports or ["websocket"], wait_timeout=10)
        await self.wait("connection_established")

    async def wait(self, event: str, match: Callable[[Any], bool] = lambda _: True,
                   count: int = 1) -> list[Any]:
        """The first `count` payloads of `event` that `match`, once they have all come."""
        def found() -> list[Any]:
            return [data for name, data in self.events if name == event and match(data)]
        async with asyncio.timeout(20), self._changed:
            await self._changed.wait_for(lambda: len(found()) >= count)
        return found()[:count]

    def named(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    async def join(self, channel: str, **fields: Any) -> None:
        await self.client.emit("message", {"type": 1, "payload": {"channelId": channel, "roomId": channel,
                                                                  "entityId": USER, **fields}})
        await self.wait("room_joined", lambda d: d["channelId"] == channel)

    async def send(self, channel: str, text: str, *, event: str = "message", **fields: Any) -> str:
        """Send as the web UI does; returns the client's messageId."""
        payload = {"senderId": USER, "senderName": "Bob", "message": text, "channelId": channel,
                   "roomId": channel, "messageServerId": SERVER, "messageId": str(uuid.uuid4()),
                   "source": "client_chat", "metadata": {"isDm": True, "channelType": "DM"}, **fields}
        await self.client.emit(event, {"type": 2, "payload": payload} if event == "message" else payload)
        return payload["messageId"]

    async def reply(self, channel: str, count: int = 1) -> list[dict[str, Any]]:
        """The agent's broadcasts in `channel`, once `count` runs there have completed."""
        await self.wait("messageComplete", lambda d: d["channelId"] == channel, count)
        return [d for d in self.named("messageBroadcast")
                if d["source"] == "agent_response" and d["roomId"] == channel]


@asynccontextmanager
async def sockets(count: int) -> AsyncIterator[list[Sock]]:
    socks = [Sock() for _ in range(count)]
    try:
        yield socks
    finally:
        for sock in socks:
            await sock.client.disconnect()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(reply=xml_reply(REPLY), stream_chunks=6) as model:
        yield model


def agent_of(bot: Running) -> str:
    return str(bot.app.runtime.agent_id)


async def test_a_message_streams_its_reply_to_the_channel_and_nowhere_else(tmp_path: Path,
                                                                          fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot, \
            sockets(3) as (tab, other_tab, away):
        channel, elsewhere = str(uuid.uuid4()), str(uuid.uuid4())
        await tab.connect(bot)
        assert [name for name, _ in tab.events[:2]] == ["authenticated", "connection_established"]
        assert tab.events[0][1]["entityId"] == USER and isinstance(tab.events[0][1]["timestamp"], int)
        assert tab.events[1][1]["socketId"] == tab.client.get_sid()
        await other_tab.connect(bot)
        await away.connect(bot)
        await tab.join(channel, agentId=agent_of(bot))
        joined = tab.named("channel_joined")[0]
        assert joined == tab.named("room_joined")[0]
        assert joined["channelId"] == joined["roomId"] == channel and joined["agentId"] == agent_of(bot)
        await other_tab.join(channel)
        assert "agentId" not in other_tab.named("channel_joined")[0]
        await away.join(elsewhere)

        client_id = await tab.send(channel, "hello over the socket")
        (ack,) = await tab.wait("messageAck")
        # The message is stored when it is acknowledged, in the channel's room, as the socket's entity.
        runtime = bot.app.runtime
        stored = await runtime.store.get_memory(uuid.UUID(ack["messageId"]))
        assert stored is not None and stored.content.text == "hello over the socket"
        assert stored.room_id == room_id_for(runtime, channel_room_key(uuid.UUID(channel)))
        assert stored.entity_id == user_id_for(runtime, USER) and stored.metadata["channel_id"] == channel
        assert ack == {"clientMessageId": client_id, "messageId": ack["messageId"], "channelId": channel,
                       "roomId": channel, "status": "received_by_server_and_processing"}

        (reply,) = await tab.reply(channel)
        names = [name for name, _ in tab.events]
        echo_at = names.index("messageBroadcast")
        assert names[echo_at + 1] == "messageAck" and names.index("messageStreamChunk") > echo_at + 1
        echo = tab.named("messageBroadcast")[0]
        assert echo == {"id": ack["messageId"], "clientMessageId": client_id, "senderId": USER,
                        "senderName": "Bob", "text": "hello over the socket", "channelId": channel,
                        "roomId": channel, "messageServerId": SERVER, "createdAt": stored.created_at,
                        "source": "client_chat"}
        chunks = tab.named("messageStreamChunk")
        assert len(chunks) > 1 and [c["index"] for c in chunks] == list(range(len(chunks)))
        assert "".join(c["chunk"] for c in chunks) == reply["text"] == REPLY
        assert {c["messageId"] for c in chunks} == {reply["id"]}
        assert all(c["agentId"] == agent_of(bot) and c["channelId"] == c["roomId"] == channel for c in chunks)
        assert reply["senderId"] == agent_of(bot) and reply["senderName"] == "Test"
        assert reply["serverId"] == SERVER
        assert reply["channelId"] == channel and reply["actions"] == ["REPLY"] and reply["thought"] == "ok"
        stored_reply = await runtime.store.get_memory(uuid.UUID(reply["id"]))
        assert stored_reply is not None and reply["createdAt"] == stored_reply.created_at  # as history shows it
        assert names[-1] == "messageComplete" and tab.named("messageComplete") == [{"channelId": channel,
                                                                                  "roomId": channel}]

        # The second tab sees the user's message (without the sender's clientMessageId) and the reply.
        (mine,) = await other_tab.wait("messageBroadcast", lambda d: d["id"] == ack["messageId"])
        assert "clientMessageId" not in mine and mine["text"] == "hello over the socket"
        (theirs,) = await other_tab.reply(channel)
        assert theirs == reply

        # The socket in another channel gets only what happens there: its own reply comes, nothing else.
        await away.send(elsewhere, "and here")
        await away.reply(elsewhere)
        seen = {data.get("channelId") or data.get("roomId") for name, data in away.events
                if isinstance(data, dict) and name not in ("authenticated", "connection_established")}
        assert seen == {elsewhere}
        assert all(data["roomId"] == channel for data in tab.named("messageBroadcast"))


async def test_handshake_needs_the_key_and_an_entity_uuid(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot, sockets(5) as socks:
        wrong, missing, no_entity, bad_entity, by_header = socks
        for sock, key, entity in ((wrong, "not-the-key", USER), (missing, None, USER), (no_entity, KEY, ""),
                                  (bad_entity, KEY, "not-a-uuid")):
            with pytest.raises(socketio.exceptions.ConnectionError):
                await sock.connect(bot, key=key, entity=entity)
        assert wrong.refused == missing.refused == {"message": "Invalid or missing API Key"}
        assert no_entity.refused == bad_entity.refused == {"message": "Valid entityId required"}
        await by_header.connect(bot, key=None, headers=ADMIN)  # elizaOS also reads the x-api-key header
        assert by_header.named("authenticated")[0]["entityId"] == USER


async def test_without_api_key_only_this_machine_connects(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake) as bot, sockets(3) as (local, proxied, foreign):
        await local.connect(bot, key=None)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await proxied.connect(bot, key=None, headers={"X-Forwarded-For": "203.0.113.9"})
        assert proxied.refused == {"message": "Invalid or missing API Key"}
        # A page of another origin in the owner's browser is on this machine too: its handshake is refused.
        with pytest.raises(socketio.exceptions.ConnectionError):
            await foreign.connect(bot, key=None, headers={"Origin": "http://evil.example"})
        assert not foreign.client.connected


async def test_bad_sends_get_message_errors_and_no_reply(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot, sockets(1) as (sock,):
        channel = str(uuid.uuid4())
        await sock.connect(bot)
        await sock.client.emit("message", {"type": 1, "payload": {"entityId": USER}})
        (error,) = await sock.wait("messageError")
        assert error == {"error": "channelId is required for joining."}
        await sock.join(channel)
        bad = [{"senderId": str(uuid.uuid4())}, {"message": ""}, {"message": "x" * 8001},
               {"message": "a\x00b"}, {"channelId": "general", "roomId": "general"}, {"senderId": "me"},
               {"metadata": {"big": "y" * 5000}}]
        for fields in bad:
            await sock.send(channel, "hi", **fields)
        errors = await sock.wait("messageError", count=1 + len(bad))
        assert errors[1] == {"error": "senderId must be the entityId this socket authenticated with"}
        assert all(e["error"].startswith("invalid message: ") for e in errors[2:6])
        assert "channelId" in errors[5]["error"] and "senderId" in errors[6]["error"]
        assert "SESSION_MAX_METADATA_BYTES" in errors[7]["error"]
        await sock.client.emit("message", {"type": 9, "payload": {}})  # unknown types are ignored
        await sock.send(channel, "a good one", event="2")  # the bare event name works too
        await sock.reply(channel)
        assert len(sock.named("messageAck")) == 1 and len(sock.named("messageError")) == 1 + len(bad)


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth - 1):
        value = {"d": value}
    return value


class Polling:
    """A raw Engine.IO long-polling session: packets as the wire has them, whatever a client library
    would refuse to encode."""

    def __init__(self, bot: Running, headers: dict[str, str] | None = None) -> None:
        self.bot, self.headers, self.url = bot, headers or {}, ""

    async def open(self) -> None:
        async with self.bot.http.get(self.bot.url + "/socket.io/?EIO=4&transport=polling",
                                     headers=self.headers) as response:
            assert response.status == 200
            sid = (await response.text()).split('"sid":"', 1)[1].split('"', 1)[0]
        self.url = self.bot.url + f"/socket.io/?EIO=4&transport=polling&sid={sid}"

    async def post(self, packet: str) -> None:
        headers = {**self.headers, "Content-Type": "text/plain"}
        async with self.bot.http.post(self.url, data=packet, headers=headers) as response:
            assert response.status == 200, await response.text()

    async def poll_until(self, text: str) -> str:
        """Everything received until `text` has come (each poll returns what the server queued)."""
        received = ""
        async with asyncio.timeout(20):
            while text not in received:
                async with self.bot.http.get(self.url, headers=self.headers) as response:
                    assert response.status == 200
                    received += await response.text()
        return received


async def test_payloads_meet_the_http_intake_rules(tmp_path: Path, fake: FakeOpenAI,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """NaN, Infinity and deep nesting are refused as the HTTP API refuses them: a messageError on a
    send or a join, a refusal of a handshake, and nothing logged as an error."""
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot, sockets(2) as (sock, deep):
        channel = str(uuid.uuid4())
        await sock.connect(bot)
        await sock.join(channel)
        for metadata in ({"n": float("nan")}, {"n": [float("inf")]}, nested(33)):
            await sock.send(channel, "hi", metadata=metadata)
        # Deeper than python-socketio's client encodes: the raw event (600 levels exhausted the stack).
        payload = {"senderId": USER, "message": "hi", "channelId": channel, "metadata": nested(600)}
        await sock.client.eio.send("2" + json.dumps(["message", {"type": 2, "payload": payload}]))
        await sock.client.eio.send("2" + json.dumps(["message", {"type": 1, "payload": payload}]))
        errors = [e["error"] for e in await sock.wait("messageError", count=5)]
        assert all(e.startswith("the message holds a number JSON does not have") for e in errors[:2]), errors
        assert errors[2:] == [f"the {where} nests arrays and objects deeper than 32 levels"
                              for where in ("message", "message", "join")]

        with pytest.raises(socketio.exceptions.ConnectionError):
            await deep.connect(bot, extra=nested(100))
        assert deep.refused == {"message": "Authentication failed"}
        polling = Polling(bot)
        await polling.open()
        await polling.post("40" + json.dumps({"entityId": USER, "apiKey": KEY, "extra": nested(600)}))
        assert '44{"message":"Authentication failed"}' in await polling.poll_until("44")  # no wait for a timeout

        await sock.send(channel, "still fine")
        await sock.reply(channel)
        assert len(sock.named("messageAck")) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_undecodable_packets_log_no_traceback(tmp_path: Path, fake: FakeOpenAI,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Anyone may send a packet python-socketio cannot decode (here JSON nested past the recursion
    limit, before any key): it is dropped without an error in the log, and the server goes on."""
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot, sockets(1) as (sock,):
        polling = Polling(bot)
        await polling.open()
        for packet in ("40" + "[" * 5000 + "]" * 5000, "42" + "[" * 5000 + "]" * 5000, "9"):
            await polling.post(packet)
        await sock.connect(bot)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_sockets_messages_are_stored_and_answered_in_order(tmp_path: Path, fake: FakeOpenAI) -> None:
    """python-socketio runs each event in its own task; a burst from one socket is still accepted,
    stored and answered in the order it was sent: in a session's channel (a lookup and a write before
    each message is stored) and in a channel of its own."""
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN, rate_limit_per_minute=0) as bot, \
            sockets(1) as (sock,):
        runtime = bot.app.runtime
        status, session = await bot.call("POST", "/api/messaging/sessions",
                                         json={"agentId": agent_of(bot), "userId": USER})
        assert status == 201, session
        await sock.connect(bot)
        texts = [f"m{i:02d}" for i in range(30)]
        for channel in (session["channelId"], str(uuid.uuid4())):
            await sock.join(channel)
            sent = [await sock.send(channel, text) for text in texts]
            acks = await sock.wait("messageAck", lambda d, c=channel: d["channelId"] == c, count=len(texts))
            assert [ack["clientMessageId"] for ack in acks] == sent
            stored = [await runtime.store.get_memory(uuid.UUID(ack["messageId"])) for ack in acks]
            assert [m.content.text for m in stored if m is not None] == texts
            times = [m.created_at for m in stored if m is not None]
            assert times == sorted(times) and len({m.room_id for m in stored if m is not None}) == 1
            room = await runtime.store.get_memories(agent_id=runtime.agent_id, room_id=stored[0].room_id,
                                                    count=None)
            assert sorted(m.id for m in room if m.entity_id != runtime.agent_id) == sorted(m.id for m in stored)
            # Answered in order: each reply (in the order broadcast) is to the next message.
            replies = await sock.reply(channel, count=len(texts))
            answered = [await runtime.store.get_memory(uuid.UUID(reply["id"])) for reply in replies]
            assert [m.content.in_reply_to for m in answered if m is not None] == [m.id for m in stored]


async def test_a_repeated_message_id_gets_no_second_reply(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot, sockets(1) as (sock,):
        channel = str(uuid.uuid4())
        await sock.connect(bot)
        await sock.join(channel)
        message_id = await sock.send(channel, "once only")
        await sock.reply(channel)
        await sock.send(channel, "once only", messageId=message_id)
        (error,) = await sock.wait("messageError")
        assert error == {"error": "a message with this message_id was already received"}
        await sock.send(channel, "something new")
        assert len(await sock.reply(channel, count=2)) == 2
        assert len(sock.named("messageAck")) == 2


async def test_rate_limited_messages_get_a_message_error(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN, rate_limit_per_minute=1) as bot, \
            sockets(1) as (sock,):
        channel = str(uuid.uuid4())
        await sock.connect(bot)
        await sock.join(channel)
        await sock.send(channel, "first")
        await sock.reply(channel)
        await sock.send(channel, "second")
        (error,) = await sock.wait("messageError")
        assert error == {"error": SLOW_DOWN, "channelId": channel}
        assert len(sock.named("messageAck")) == 2 and len(sock.named("messageComplete")) == 1


async def test_a_session_channel_is_the_session_room(tmp_path: Path, fake: FakeOpenAI) -> None:
    sock, clock = Sock(), Clock()
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN, clock=clock) as bot:
        status, created = await bot.call("POST", "/api/sessions", json={"userId": "someone"})
        assert status == 201, created
        runtime, manager = bot.app.runtime, bot.server.sessions
        session = await manager.get(created["sessionId"])
        clock.advance(5)
        channel = str(session.channel)
        await sock.connect(bot, transports=["polling"])  # long-polling passes the HTTP middlewares too
        await sock.join(channel)
        await sock.send(channel, "into the session")
        (ack,) = await sock.wait("messageAck")
        (reply,) = await sock.reply(channel)
        stored = await runtime.store.get_memory(uuid.UUID(ack["messageId"]))
        assert stored is not None and stored.room_id == room_id_for(runtime, session.room_key)
        status, page = await bot.call("GET", f"/api/sessions/{session.id}/messages")
        assert status == 200, page
        assert {m["content"] for m in page["messages"]} >= {"into the session", reply["text"]}
        assert (await manager.get(session.id)).last_activity == clock.now  # the message was activity
    # Stopping ends a long-polling socket at once (its pending poll gets the disconnect).
    await sock.wait("disconnect")
    assert not sock.client.connected


async def test_relay_of_a_reply_that_does_not_stream(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot, sockets(1) as (sock,):
        channel = uuid.uuid4()
        await sock.connect(bot)
        await sock.join(str(channel))
        pending = await accept_message(bot.app.runtime, user="api-user", user_name=None, text="no stream",
                                       room_key=channel_room_key(channel), room_name="relayed")
        bot.server.realtime.relay(pending, channel)
        (reply,) = await sock.reply(str(channel))
        assert reply["text"] == REPLY and sock.named("messageStreamChunk") == []


async def test_stopping_the_server_disconnects_sockets(tmp_path: Path, fake: FakeOpenAI) -> None:
    sock = Sock()
    async with running_app(tmp_path, fake, api_key=KEY, headers=ADMIN) as bot:
        await sock.connect(bot)
        await sock.join(str(uuid.uuid4()))
    await sock.wait("disconnect")
    assert not sock.client.connected


async def test_a_page_of_another_origin_may_long_poll_with_the_key(tmp_path: Path) -> None:
    """The browser guard leaves Socket.IO's polling posts to engine.io: the key admits the socket."""
    async with FakeOpenAI(reply=xml_reply(REPLY)) as fake, running_app(tmp_path, fake, api_key=KEY) as bot:
        polling = Polling(bot, headers={"Origin": "https://dashboard.example"})
        await polling.open()
        await polling.post("40" + json.dumps({"entityId": USER, "apiKey": KEY}))
        assert '"authenticated"' in await polling.poll_until("connection_established")

"""Replies over HTTP as Server-Sent Events, against the whole running bot with a scripted model that
writes its reply in pieces: events in order, text while the model is still writing, the final reply
stored once, errors as the JSON API gives them, and a client that leaves changing nothing."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import App
from bot.runtime import SLOW_DOWN
from bot.types import EventType, ModelType
from tests.runtime_helpers import ScriptedModel, Streamed, make_character, make_settings, xml_reply

STREAM = {"Accept": "text/event-stream"}
LONG = ("Streaming lets a reader start on the first words while the rest is still being written, "
        "which feels much faster than waiting for the whole reply to arrive at once.")


@dataclass
class Event:
    name: str
    data: Any
    at: float  # loop time it was read


@dataclass
class Bot:
    app: App
    url: str
    http: aiohttp.ClientSession
    model: ScriptedModel

    async def stream(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None,
                     ) -> tuple[aiohttp.ClientResponse, list[Event]]:
        async with self.http.post(self.url + path, json=body, headers=STREAM if headers is None else headers) as r:
            return r, [event async for event in read_events(r)]


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """Parse text/event-stream as a browser does: `event:`/`data:` lines, a blank line ends an event."""
    name, data = "message", []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield Event(name, json.loads("\n".join(data)), asyncio.get_running_loop().time())
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def scripted() -> ScriptedModel:
    model = ScriptedModel()
    model.defaults[ModelType.TEXT_LARGE] = xml_reply("Hello from Ava.")
    model.defaults[ModelType.TEXT_SMALL] = "RESPOND"
    return model


@asynccontextmanager
async def running(tmp_path: Path, model: ScriptedModel, **overrides: Any) -> AsyncIterator[Bot]:
    settings = make_settings(tmp_path, host="127.0.0.1", model_max_retries=0, **overrides)
    app = App(settings, make_character(), model_plugins=[model.plugin()])
    await app.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Bot(app, f"http://127.0.0.1:{app.server.port}", http, model)
    finally:
        await app.stop()


@dataclass
class Writing:
    """A reply the scripted model streams, noting the loop time of each piece it writes."""

    reply: Streamed
    written: list[float] = field(default_factory=list)

    def __call__(self, params: dict[str, Any]) -> Streamed:
        listener = params["stream"]

        async def noted(piece: str) -> None:
            self.written.append(asyncio.get_running_loop().time())
            await listener(piece)

        params["stream"] = noted  # ScriptedModel writes the pieces to whatever params["stream"] is then
        return self.reply


def assembled(events: list[Event], reply_id: str) -> str:
    text = ""
    for event in events:
        if event.name == "chunk" and event.data["messageId"] == reply_id:
            text = (text if not event.data["reset"] else "") + event.data["chunk"]
    return text


def send(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"text": text, "user_id": "alice", "room_id": "lobby", **extra}


async def test_chunks_arrive_while_the_model_writes_then_done_with_the_stored_reply(tmp_path: Path) -> None:
    model = scripted()
    writing = Writing(Streamed(xml_reply(LONG), chunks=40, seconds=1.0))
    model.script(ModelType.TEXT_LARGE, writing)
    async with running(tmp_path, model) as bot:
        response, events = await bot.stream("/api/messages", send("tell me about streaming"))
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache" and response.headers["X-Accel-Buffering"] == "no"
        names = [e.name for e in events]
        assert names[0] == "user_message" and names[-1] == "done"
        assert set(names[1:-1]) == {"chunk"} and len(names) - 2 >= 3
        # Several chunks were in the client's hands before the model had written three quarters of its pieces.
        written = writing.written
        assert len(written) == len(writing.reply.pieces()) > 30
        assert sum(1 for e in events if e.name == "chunk" and e.at < written[len(written) * 3 // 4]) >= 5

        done = events[-1].data
        assert done["status"] == "completed" and done["reply"]["text"] == LONG
        reply_id = done["reply"]["id"]
        chunks = [e.data for e in events if e.name == "chunk"]
        assert {c["messageId"] for c in chunks} == {reply_id}
        assert [c["index"] for c in chunks] == list(range(len(chunks)))
        assert not any(c["reset"] for c in chunks) and "".join(c["chunk"] for c in chunks) == LONG

        page = (await (await bot.http.get(bot.url + "/api/messages", params={"room_id": "lobby"})).json())
        assert [(m["role"], m["text"]) for m in page["messages"]] == [("agent", LONG),
                                                                      ("user", "tell me about streaming")]
        stored_reply, stored_message = page["messages"]
        assert stored_reply["id"] == reply_id and events[0].data == stored_message
        assert done["message_id"] == stored_message["id"] and stored_reply["in_reply_to"] == stored_message["id"]



async def test_the_transport_field_chooses_and_is_validated(tmp_path: Path) -> None:
    async with running(tmp_path, scripted()) as bot:
        # "transport": "sse" streams without the header; a model that does not stream gives one chunk.
        response, events = await bot.stream("/api/messages", send("one", transport="sse"), headers={})
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert [e.name for e in events] == ["user_message", "chunk", "done"]
        assert events[1].data["chunk"] == events[2].data["reply"]["text"] == "Hello from Ava."
        # "http" wins over the header; no field and no header: JSON as always.
        for body, headers in ((send("two", transport="http"), STREAM), (send("three"), {})):
            async with bot.http.post(bot.url + "/api/messages", json=body, headers=headers) as r:
                assert r.content_type == "application/json" and (await r.json())["reply"]["text"] == "Hello from Ava."
        async with bot.http.post(bot.url + "/api/messages", json=send("four", transport="websocket"),
                                 headers=STREAM) as r:
            error = await r.json()
        assert r.status == 400 and r.content_type == "application/json"
        assert [d["field"] for d in error["error"]["details"]] == ["transport"]
        async with bot.http.post(bot.url + "/api/sessions", json={"userId": "bob"}) as r:
            session_id = (await r.json())["sessionId"]
        async with bot.http.post(f"{bot.url}/api/sessions/{session_id}/messages",
                                 json={"content": "hi", "transport": "SSE"}) as r:
            assert r.status == 400 and (await r.json())["error"]["details"][0]["field"] == "transport"
        # Refused before it is accepted: a plain JSON error, no stream.
        assert (await bot.stream("/api/messages", send("five", message_id="m-1")))[1][-1].name == "done"
        async with bot.http.post(bot.url + "/api/messages", json=send("five", message_id="m-1"), headers=STREAM) as r:
            assert r.status == 409 and (await r.json())["error"]["code"] == "DUPLICATE_MESSAGE"
        assert bot.model.count(ModelType.TEXT_LARGE) == 4  # the refused messages reached no model

        async with bot.http.get(bot.url + "/api/openapi.json") as r:
            paths = (await r.json())["paths"]
        for path in ("/api/messages", "/api/sessions/{session_id}/messages"):
            content = paths[path]["post"]["responses"]["200"]["content"]
            kinds = [k["properties"]["event"]["const"] for k in content["text/event-stream"]["schema"]["oneOf"]]
            assert "application/json" in content and kinds == ["user_message", "chunk", "done", "error"]


async def test_session_messages_stream_too(tmp_path: Path) -> None:
    text = "Sessions stream their replies as well, piece by piece."
    model = scripted()
    model.script(ModelType.TEXT_LARGE, Streamed(xml_reply(text), chunks=15, seconds=0.3))
    async with running(tmp_path, model) as bot:
        async with bot.http.post(bot.url + "/api/sessions", json={"userId": "bob"}) as r:
            session_id = (await r.json())["sessionId"]
        path = f"/api/sessions/{session_id}/messages"
        response, events = await bot.stream(path, {"content": "do sessions stream?"})
        assert response.status == 200 and events[0].name == "user_message" and events[-1].name == "done"
        done = events[-1].data
        assert done["status"] == "completed" and done["reply"]["text"] == text and "sessionStatus" in done
        assert sum(1 for e in events if e.name == "chunk") >= 2
        assert assembled(events, done["reply"]["id"]) == text
        async with bot.http.get(bot.url + path) as r:
            history = (await r.json())["messages"]
        assert [m["content"] for m in history] == [text, "do sessions stream?"]
        assert history[0]["id"] == done["reply"]["id"] and history[1] == events[0].data
        assert events[0].data["isAgent"] is False and done["id"] == events[0].data["id"]


async def test_over_the_rate_limit_the_stream_ends_with_the_apis_error(tmp_path: Path) -> None:
    async with running(tmp_path, scripted(), rate_limit_per_minute=1) as bot:
        assert (await bot.stream("/api/messages", send("first")))[1][-1].name == "done"
        response, events = await bot.stream("/api/messages", send("one too many"))
        assert response.status == 200 and [e.name for e in events] == ["user_message", "error"]
        assert events[-1].data == {"success": False, "error": {"code": "RATE_LIMITED", "message": SLOW_DOWN}}
        async with bot.http.get(bot.url + "/api/messages", params={"room_id": "lobby"}) as r:
            texts = [m["text"] for m in (await r.json())["messages"]]
        assert "one too many" in texts  # stored all the same, as without streaming
        assert bot.model.count(ModelType.TEXT_LARGE) == 1


async def test_a_model_failing_midway_ends_with_the_apology_the_json_api_gives(tmp_path: Path) -> None:
    model = scripted()

    async def fails_midway(params: dict[str, Any]) -> str:
        await params["stream"](xml_reply("I was just saying that").split("</text>")[0])
        raise RuntimeError("the model's connection dropped")

    model.script(ModelType.TEXT_LARGE, fails_midway, RuntimeError("down"))
    async with running(tmp_path, model) as bot:
        apology = bot.app.settings.error_reply
        response, events = await bot.stream("/api/messages", send("streamed"))
        assert [e.name for e in events][0] == "user_message" and events[-1].name == "done"
        chunks = [e.data for e in events if e.name == "chunk"]
        assert chunks[0]["chunk"] == "I was just saying that" and chunks[-1]["reset"] is True
        done = events[-1].data
        assert done["status"] == "error" and [r["text"] for r in done["replies"]] == [apology]
        assert assembled(events, done["reply"]["id"]) == apology  # the partial text was withdrawn
        async with bot.http.post(bot.url + "/api/messages", json=send("not streamed")) as r:
            plain = await r.json()
        assert plain["status"] == "error" and [r["text"] for r in plain["replies"]] == [apology]


async def test_a_client_that_leaves_mid_stream_leaves_the_reply_stored_and_nothing_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = scripted()
    halfway, go_on = asyncio.Event(), asyncio.Event()
    first, rest = "The first half is out, ", "and the second half follows after the reader has gone."

    async def writes_in_two_halves(params: dict[str, Any]) -> str:
        head, tail = xml_reply(first + rest).split(rest)
        await params["stream"](head)
        halfway.set()
        await go_on.wait()
        await params["stream"](rest + tail)
        return head + rest + tail

    model.script(ModelType.TEXT_LARGE, writes_in_two_halves)
    async with running(tmp_path, model) as bot:
        stored = asyncio.Event()

        async def on_sent(payload: dict[str, Any]) -> None:
            stored.set()

        bot.app.runtime.on(EventType.MESSAGE_SENT, on_sent)
        caplog.clear()
        caplog.set_level(logging.DEBUG)
        response = await bot.http.post(bot.url + "/api/messages", json=send("bye"), headers=STREAM)
        events = read_events(response)
        assert (await anext(events)).name == "user_message"
        chunk = await anext(events)
        assert chunk.name == "chunk" and chunk.data["chunk"] == first.strip()
        handlers = [task for task in asyncio.all_tasks() if _serving(task)]
        assert len(handlers) == 1
        response.close()  # hang up mid-reply
        server = bot.app.server._runner.server
        await until(lambda: all(c.transport is None for c in server.connections))  # the server saw it go
        go_on.set()  # only now the model writes on, to a reader who has gone
        await asyncio.wait_for(stored.wait(), 10)
        finished, _ = await asyncio.wait(handlers, timeout=10)
        assert finished == set(handlers)
        gc.collect()  # an unretrieved task error would be logged now

        async with bot.http.get(bot.url + "/api/messages", params={"room_id": "lobby"}) as r:
            page = (await r.json())["messages"]
        assert [(m["role"], m["text"]) for m in page] == [("agent", first + rest), ("user", "bye")]
        assert page[0]["id"] == chunk.data["messageId"]
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


def _serving(task: asyncio.Task[Any]) -> bool:
    return getattr(task.get_coro(), "__qualname__", "") == "RequestHandler._handle_request"


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait for `condition` to hold, failing after `timeout`: for state aiohttp changes without an event."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - nothing to await: aiohttp signals no disconnect
            await asyncio.sleep(0.01)

"""The web chat page in a real headless Chromium, driven over the DevTools protocol (no playwright).

A person opens `/`, sees the character's name, types a message, sees the typing indicator and then
the reply, shown while the model is still writing it; a reload keeps the conversation (the session
and its messages are stored). With WEB_CHAT=public a visitor does all that with no key, and the
page never holds the admin key.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import App
from bot.types import ModelType
from tests.fakes.openai_server import FakeOpenAI
from tests.runtime_helpers import ScriptedModel, make_character, make_settings
from tests.server_helpers import fake_model, running_app, xml_reply
from tests.test_characters import MARLOWE, QUILL, process_settings, running, voice, write_character

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian chromium is not installed")


class Page:
    """One tab, over its DevTools websocket: evaluate JavaScript and wait for conditions."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        await self.socket.send_json({"id": message_id, "method": method, "params": params})
        async for message in self.socket:
            data = json.loads(message.data)
            if data.get("id") == message_id:
                if "error" in data:
                    raise AssertionError(f"{method}: {data['error']}")
                return data["result"]
        raise AssertionError("DevTools connection closed")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15) -> Any:
        """Poll the page until `expression` is truthy (errors count as not yet: the page may be loading)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except AssertionError:
                value = None
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def chromium(user_data: Path, url: str) -> AsyncIterator[Page]:
    """Headless Chromium on `url`; its DevTools port is read from DevToolsActivePort."""
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--remote-debugging-port=0", f"--user-data-dir={user_data}", url,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port_file = user_data / "DevToolsActivePort"
        for _ in range(400):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                    pages = [t for t in await response.json() if t["type"] == "page"]
                if pages:
                    break
                await asyncio.sleep(0.05)
            async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                yield Page(socket)
    finally:
        process.kill()
        await process.wait()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with fake_model() as server:
        yield server


async def test_type_a_message_and_see_the_reply(tmp_path: Path, fake: FakeOpenAI) -> None:
    fake.script(xml_reply("Hello <b>friend</b>, nice to meet you."))
    async with running_app(tmp_path, fake) as bot, chromium(tmp_path / "chromium", bot.url + "/") as page:
        assert await page.wait_for("document.getElementById('agent-name').textContent === 'Test'")
        assert await page.evaluate("document.title") == "Chat with Test"
        assert await page.evaluate("document.getElementById('agent-picker').hidden") is True  # one agent: no choice
        await page.wait_for("localStorage.getItem('parley.sessionId')")
        # No API key on this server: the key form must not be on screen.
        assert await page.evaluate("getComputedStyle(document.getElementById('key-form')).display") == "none"
        # Watch for the typing indicator while the reply is on its way.
        await page.evaluate("""
            window.sawTyping = false;
            new MutationObserver(() => { if (!document.getElementById('typing').hidden) window.sawTyping = true; })
              .observe(document.getElementById('typing'), {attributes: true});
        """)
        await page.evaluate("""
            document.getElementById('input').value = 'Hi, I am Alice';
            document.getElementById('send').click();
        """)
        await page.wait_for("document.querySelectorAll('#messages li.agent').length === 1")
        bubbles = await page.evaluate(
            "[...document.querySelectorAll('#messages li')].map(li => [li.className, li.textContent])")
        assert bubbles == [["user", "Hi, I am Alice"], ["agent", "Hello <b>friend</b>, nice to meet you."]]
        assert await page.evaluate("document.querySelectorAll('#messages b').length") == 0  # text, not HTML
        assert await page.evaluate("window.sawTyping") is True
        assert await page.evaluate("document.getElementById('typing').hidden") is True
        chat = fake.requests_to("/chat/completions")
        assert "Hi, I am Alice" in json.dumps(chat[-1].body)

        await page.send("Page.reload")
        await page.wait_for("document.querySelectorAll('#messages li').length === 2")
        assert await page.evaluate("document.querySelector('#messages li.agent').textContent") == \
            "Hello <b>friend</b>, nice to meet you."


async def test_page_asks_for_the_api_key_when_the_server_has_one(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with running_app(tmp_path, fake, api_key="page-key") as bot, \
            chromium(tmp_path / "chromium", bot.url + "/") as page:
        await page.wait_for("!document.getElementById('key-form').hidden")
        await page.wait_for("document.getElementById('status').textContent.includes('API key')")
        await page.evaluate("""
            document.getElementById('api-key').value = 'page-key';
            document.querySelector('#key-form button').click();
        """)
        await page.wait_for("document.getElementById('agent-name').textContent === 'Test'")
        await page.wait_for("localStorage.getItem('parley.sessionId')")
        await page.evaluate("""
            document.getElementById('input').value = 'hello';
            document.getElementById('send').click();
        """)
        # The reply streams in: wait for its final text, not its first chunk.
        await page.wait_for("document.querySelector('#messages li.agent')?.textContent === 'Hello from Test.'")


async def test_public_web_chat_works_without_the_key_and_reaches_nothing_else(tmp_path: Path,
                                                                             fake: FakeOpenAI) -> None:
    admin_key = "admin-key-never-on-the-page"
    async with running_app(tmp_path, fake, api_key=admin_key, web_chat="public") as bot, \
            chromium(tmp_path / "chromium", bot.url + "/") as page:
        await page.wait_for("document.getElementById('agent-name').textContent === 'Test'")
        await page.wait_for("localStorage.getItem('parley.sessionId')")
        assert await page.evaluate("document.getElementById('key-form').hidden") is True
        await page.evaluate("""
            document.getElementById('input').value = 'hello from a visitor';
            document.getElementById('send').click();
        """)
        # The reply streams in: wait for its final text, not its first chunk.
        await page.wait_for("document.querySelector('#messages li.agent')?.textContent === 'Hello from Test.'")
        await page.send("Page.reload")
        await page.wait_for("document.querySelectorAll('#messages li').length === 2")

        # The key is nowhere in the page, its storage or its readable cookies (the visitor cookie is HttpOnly).
        seen = await page.evaluate("""(async () => [
            document.documentElement.outerHTML, JSON.stringify({...localStorage}), document.cookie,
            ...await Promise.all(['/', '/static/chat.js', '/api/web-chat'].map(u => fetch(u).then(r => r.text()))),
        ].join('\\n'))()""")
        assert admin_key not in seen and "parley_visitor" not in seen
        # What the visitor's browser can reach: its own session, nothing of the admin API.
        statuses = await page.evaluate("""(async () => {
            const get = (u) => fetch(u).then(r => r.status);
            const post = (u, body) => fetch(u, {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                body: JSON.stringify(body)}).then(r => r.status);
            const sid = localStorage.getItem('parley.sessionId');
            return [await get(`/api/sessions/${sid}/messages`), await get('/api/agents'),
                    await get('/api/memories?type=messages'), await post('/api/memories/search', {text: 'hello'}),
                    await post('/api/messages', {text: 'hi', user_id: 'u', room_id: 'r'})];
        })()""")
        assert statuses == [200, 401, 401, 401, 401]


async def test_the_reply_shows_while_the_model_is_still_writing_it(tmp_path: Path) -> None:
    first, rest = "The first part is on screen", " before the model has written the rest."
    on_screen = asyncio.Event()

    async def writes_in_two_parts(params: dict[str, Any]) -> str:
        head, tail = xml_reply(first + rest).split(rest)
        await params["stream"](head)
        await on_screen.wait()  # the rest comes only once the page has shown the first part
        await params["stream"](rest + tail)
        return head + rest + tail

    model = ScriptedModel()
    model.script(ModelType.TEXT_LARGE, writes_in_two_parts)
    model.defaults[ModelType.TEXT_LARGE] = xml_reply("Hello from Ava.")
    model.defaults[ModelType.TEXT_SMALL] = "RESPOND"
    app = App(make_settings(tmp_path, host="127.0.0.1", model_max_retries=0), make_character(),
              model_plugins=[model.plugin()])
    await app.start()
    try:
        async with chromium(tmp_path / "chromium", f"http://127.0.0.1:{app.server.port}/") as page:
            await page.wait_for("localStorage.getItem('parley.sessionId')")
            await page.evaluate("""
                document.getElementById('input').value = 'Tell me something slowly';
                document.getElementById('send').click();
            """)
            agent = "document.querySelector('#messages li.agent')"
            assert await page.wait_for(f"{agent}?.textContent === {json.dumps(first)}")
            # Still being written: the page waits for the rest, and the typing line gave way to the text.
            assert await page.evaluate("document.getElementById('send').disabled") is True
            assert await page.evaluate("document.getElementById('typing').hidden") is True
            on_screen.set()
            await page.wait_for("!document.getElementById('send').disabled")
            bubbles = await page.evaluate(
                "[...document.querySelectorAll('#messages li')].map(li => [li.className, li.textContent])")
            assert bubbles == [["user", "Tell me something slowly"], ["agent", first + rest]]
            await page.send("Page.reload")
            await page.wait_for("document.querySelectorAll('#messages li').length === 2")
            assert await page.evaluate(f"{agent}.textContent") == first + rest
    finally:
        await app.stop()


async def test_a_visitor_picks_the_character_to_chat_with(tmp_path: Path) -> None:
    """With several characters the page offers a picker; each one keeps its own conversation."""
    paths = [write_character(tmp_path, name) for name in (MARLOWE, QUILL)]
    async with FakeOpenAI(reply=voice) as model, running(process_settings(tmp_path, model, paths)) as app, \
            chromium(tmp_path / "chromium", f"http://127.0.0.1:{app.server.port}/") as page:
        await page.wait_for(f"document.getElementById('agent-name').textContent === '{MARLOWE}'")
        await page.wait_for("localStorage.getItem('parley.sessionId')")
        assert await page.evaluate("document.getElementById('agent-picker').hidden") is False
        assert await page.evaluate("[...document.querySelectorAll('#agent-picker option')].map(o => o.text)") == [
            MARLOWE, QUILL]

        async def chat(text: str, count: int) -> list[list[str]]:
            await page.evaluate(f"document.getElementById('input').value = {json.dumps(text)};"
                                "document.getElementById('send').click();")
            await page.wait_for(f"document.querySelectorAll('#messages li.agent').length === {count}")
            return await page.evaluate("[...document.querySelectorAll('#messages li')].map(li => li.textContent)")

        assert await chat("hello", 1) == ["hello", "Marlowe speaking."]
        quill_id = json.dumps(str(app.agents.get(QUILL).id))
        await page.evaluate(f"""const picker = document.getElementById('agent-picker');
            picker.value = {quill_id}; picker.dispatchEvent(new Event('change'));""")
        await page.wait_for(f"document.title === 'Chat with {QUILL}'")
        await page.wait_for(f"localStorage.getItem('parley.session.' + {quill_id})")  # its own session
        assert await page.evaluate("document.querySelectorAll('#messages li').length") == 0
        assert await chat("hi there", 1) == ["hi there", "Quill speaking."]
        # A reload comes back to the character picked last, with its own conversation.
        await page.send("Page.reload")
        await page.wait_for(f"document.getElementById('agent-name').textContent === '{QUILL}'")
        await page.wait_for("document.querySelectorAll('#messages li').length === 2")
        assert await page.evaluate("document.querySelector('#messages li.agent').textContent") == "Quill speaking."
        # A page that knows Marlowe's session by no key of its own (as one from before the picker) does not
        # take the current session, Quill's, for Marlowe's.
        marlowe_id = json.dumps(str(app.agents.get(MARLOWE).id))
        await page.evaluate(f"localStorage.removeItem('parley.session.' + {marlowe_id})")
        await page.evaluate(f"""const back = document.getElementById('agent-picker');
            back.value = {marlowe_id}; back.dispatchEvent(new Event('change'));""")
        await page.wait_for(f"localStorage.getItem('parley.session.' + {marlowe_id})")
        assert await page.evaluate("document.querySelectorAll('#messages li').length") == 0
        # Quill stopped by an admin: a page whose current session is Quill's still opens, with Marlowe.
        await page.evaluate(f"""const again = document.getElementById('agent-picker');
            again.value = {quill_id}; again.dispatchEvent(new Event('change'));""")
        await page.wait_for(f"document.title === 'Chat with {QUILL}'")
        await page.evaluate(f"localStorage.removeItem('parley.session.' + {marlowe_id})")
        await app.stop_agent(QUILL)
        await page.send("Page.reload")
        await page.wait_for(f"localStorage.getItem('parley.session.' + {marlowe_id})")
        assert await page.evaluate("document.getElementById('agent-name').textContent") == MARLOWE
        assert "stopped" not in await page.evaluate("document.getElementById('status').textContent")
    marlowe_prompts = [json.dumps(r.body) for r in model.requests if f"You are {MARLOWE}, " in json.dumps(r.body)]
    assert marlowe_prompts and not [p for p in marlowe_prompts if "hi there" in p], "the conversations stay apart"

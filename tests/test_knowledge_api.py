"""The knowledge API over HTTP (issue #13): the upload's own body limit (KNOWLEDGE_MAX_FILE_MB, not
MAX_BODY_BYTES), plugin routes in /api/openapi.json, and indexing progress on /ready.

Everything runs for real: the whole bot on SQLite against FakeOpenAI, or a runtime and its WebServer
on 127.0.0.1 with a gated embedding model, so /ready is read while the indexer waits on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.app import App
from bot.plugin import Plugin, Route
from bot.server import WebServer
from bot.store.base import Store
from bot.types import ModelType
from plugins.knowledge import create_plugin, knowledge_base
from plugins.knowledge.api import DOCUMENTS, MAX_FILES
from tests.runtime_helpers import ScriptedModel, make_settings, start_runtime
from tests.server_helpers import character, fake_model, running_app, settings_for

WAIT = 30


def files(*items: tuple[str, bytes]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, data in items:
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    return form


def markdown(size: int) -> bytes:
    """A Markdown manual of about `size` bytes: numbered sections of paragraphs, a fact at the end."""
    parts, total, n = [], 0, 0
    while total < size:
        n += 1
        section = (f"## Section {n}\n\nPart {n} of the manual explains how the Zorblax handles setting {n}. "
                   + "Turn the dial slowly and wait for the light to settle before you go on. " * 8 + "\n\n")
        parts.append(section)
        total += len(section)
    parts.append("## Last\n\nThe Zorblax serial plate sits under the jar.\n")
    return ("# Zorblax manual\n\n" + "".join(parts)).encode()


async def streamed(data: bytes, name: str) -> AsyncIterator[bytes]:
    """A multipart body sent chunked, with no Content-Length: only reading it shows its size."""
    yield (f'--b\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
           "Content-Type: text/markdown\r\n\r\n").encode()
    for start in range(0, len(data), 65536):
        yield data[start:start + 65536]
    yield b"\r\n--b--\r\n"


async def test_a_3_mb_markdown_upload_is_indexed_with_default_settings(tmp_path: Path) -> None:
    data = markdown(3_000_000)
    async with fake_model() as fake, running_app(tmp_path, fake) as app:
        assert app.app.settings.max_body_bytes == 1_000_000  # the default, which the upload is not held to
        started = time.monotonic()
        status, body = await app.call("POST", DOCUMENTS, data=files(("manual.md", data)))
        took = time.monotonic() - started
        assert status == 201, body
        document = body["documents"][0]
        assert document["source"] == "manual.md" and document["size"] == len(data)
        assert document["fragments"] > 3000
        listed = (await app.call("GET", DOCUMENTS))[1]["documents"]
        assert [(d["source"], d["fragments"]) for d in listed] == [("manual.md", document["fragments"])]
        print(f"3 MB upload ({len(data)} bytes, {document['fragments']} fragments) indexed in {took:.1f} s")


async def test_a_file_over_knowledge_max_file_mb_is_413_naming_the_setting(tmp_path: Path) -> None:
    async with fake_model() as fake, running_app(tmp_path, fake, knowledge_max_file_mb=2) as app:
        # Within the route's body limit (above MAX_BODY_BYTES) but over the per-file cap: refused while streaming.
        status, body = await app.call("POST", DOCUMENTS, data=files(("ok.md", b"# Ok\n\nFine."),
                                                                   ("big.md", markdown(2_100_000))))
        assert status == 413 and body["error"]["code"] == "FILE_TOO_LARGE"
        assert "big.md is larger than KNOWLEDGE_MAX_FILE_MB (2 MB)" in body["error"]["message"]
        assert body["error"]["message"].endswith("(indexed: ok.md)")
        # The same with no Content-Length: the file is counted as it streams in.
        status, body = await app.call("POST", DOCUMENTS, data=streamed(markdown(2_100_000), "chunked.md"),
                                      headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert status == 413 and "KNOWLEDGE_MAX_FILE_MB (2 MB)" in body["error"]["message"]
        status, body = await app.call("POST", DOCUMENTS, data=streamed(markdown(1_500_000), "fits.md"),
                                      headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert status == 201, body
        listed = {d["source"] for d in (await app.call("GET", DOCUMENTS))[1]["documents"]}
        assert listed == {"ok.md", "fits.md"}


async def test_a_body_over_the_routes_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    # 0.01 MB files: the upload route takes MAX_FILES of them (about 0.5 MB), less than MAX_BODY_BYTES.
    async with fake_model() as fake, running_app(tmp_path, fake, knowledge_max_file_mb=0.01) as app:
        many = [(f"f{n}.md", b"# F\n\n" + b"x" * 9000) for n in range(MAX_FILES + 40)]
        status, body = await app.call("POST", DOCUMENTS, data=files(*many))
        assert status == 413 and body["error"]["code"] == "BODY_TOO_LARGE"
        assert "KNOWLEDGE_MAX_FILE_MB: at most 20 files of 0.01 MB each" in body["error"]["message"]
        assert (await app.call("GET", DOCUMENTS))[1]["documents"] == []  # refused before any file was indexed


async def test_a_malformed_part_or_an_unknown_method_is_a_4xx_not_a_500(tmp_path: Path) -> None:
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    async with fake_model() as fake, running_app(tmp_path, fake) as app:
        bad_header = b'--b\r\nContent-Disposition: form-data; name="\x1c\xf1"\r\n\r\nx\r\n--b--\r\n'
        status, body = await app.call("POST", DOCUMENTS, data=bad_header, headers=multipart)
        assert status == 400 and body["error"]["code"] == "NOT_MULTIPART"
        assert body["error"]["message"].startswith("the multipart body cannot be read: Invalid HTTP header")
        # A method the path does not take is a 405 whatever the body (not a 415 for its type).
        status, body = await app.call("PUT", DOCUMENTS, data=b"--b--\r\n", headers=multipart)
        assert status == 405 and body["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_other_api_routes_still_refuse_bodies_over_max_body_bytes(tmp_path: Path) -> None:
    async with fake_model() as fake, running_app(tmp_path, fake) as app:
        message = {"text": "x" * 1_100_000, "user_id": "u", "room_id": "r"}
        status, body = await app.call("POST", "/api/messages", json=message)
        assert status == 413 and body["error"]["code"] == "BODY_TOO_LARGE"
        assert body["error"]["message"] == "request body is larger than 1000000 bytes (MAX_BODY_BYTES)"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
            yield b'{"text": "'
            for _ in range(20):
                yield b"y" * 60_000
            yield b'", "user_id": "u", "room_id": "r"}'

        status, body = await app.call("POST", "/api/memories", data=chunks(),
                                      headers={"Content-Type": "application/json"})
        assert status == 413 and "(MAX_BODY_BYTES)" in body["error"]["message"]
        assert not fake.requests_to("/chat/completions")


# OpenAPI ------------------------------------------------------------------------------------------
async def _hook(request: web.Request) -> web.Response:
    """Receive a ping from the test.

    Anything else said here goes into the description."""
    return web.json_response({"hooked": request.match_info.get("name", "")})


async def _webhook(request: web.Request) -> web.Response:
    return web.json_response({})


async def _echo(request: web.Request) -> web.Response:
    """Say how long the body was."""
    return web.json_response({"bytes": len(await request.read())})


async def chunked(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 50_000):
        yield b"z" * 50_000


async def test_a_plugin_routes_body_limit_holds_when_the_body_is_read_whole(tmp_path: Path) -> None:
    async with fake_model() as fake:
        app = App(settings_for(tmp_path, fake.base_url, api_key="k"), character())
        app.runtime.plugins.append(Plugin(name="hooks", routes=[
            Route("POST", "/api/hooks/big", _echo, public=True, max_body_bytes=2_000_000, max_body_reason="HOOK_MB"),
            Route("POST", "/hooks/small", _echo, public=True, max_body_bytes=100_000, max_body_reason="SMALL_KB")]))
        await app.start()
        url, json_type = f"http://127.0.0.1:{app.server.port}", {"Content-Type": "application/json"}
        try:
            async with aiohttp.ClientSession() as http:
                async def post(path: str, size: int) -> tuple[int, Any]:
                    async with http.post(url + path, data=chunked(size), headers=json_type) as response:
                        return response.status, await response.json()

                assert await post("/api/hooks/big", 1_500_000) == (200, {"bytes": 1_500_000})  # > MAX_BODY_BYTES
                status, body = await post("/api/hooks/big", 2_100_000)
                assert status == 413 and "2000000 bytes (HOOK_MB)" in body["error"]["message"]
                status, body = await post("/hooks/small", 150_000)  # smaller than MAX_BODY_BYTES, outside /api too
                assert status == 413 and "(SMALL_KB)" in body["error"]["message"]
        finally:
            await app.stop()


async def test_plugin_routes_are_in_the_openapi_document(tmp_path: Path) -> None:
    async with fake_model() as fake:
        app = App(settings_for(tmp_path, fake.base_url, api_key="k"), character())
        app.runtime.plugins.append(Plugin(name="hooks", routes=[
            Route("GET", "/api/hooks/{name}", _hook, public=True),
            Route("POST", "/hooks/telegram", _webhook, public=True)]))  # not under /api: not API
        await app.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{app.server.port}/api/openapi.json") as response:
                    paths = (await response.json())["paths"]
                async with http.get(f"http://127.0.0.1:{app.server.port}/api/hooks/x") as response:
                    assert response.status == 200 and await response.json() == {"hooked": "x"}
        finally:
            await app.stop()
    hook = paths["/api/hooks/{name}"]["get"]
    assert hook["operationId"] == "hooks_hook" and hook["tags"] == ["hooks"]
    assert hook["summary"] == "Receive a ping from the test."
    assert hook["description"] == "Anything else said here goes into the description."
    assert [p["name"] for p in hook["parameters"]] == ["name"] and "security" not in hook
    assert "/hooks/telegram" not in paths

    listing = paths[DOCUMENTS]["get"]
    assert listing["tags"] == ["knowledge"] and listing["summary"].startswith("The agent's documents")
    assert listing["security"] == [{"bearer": []}, {"apiKey": []}]  # admin only
    assert listing["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/DocumentList")
    upload = paths[DOCUMENTS]["post"]
    assert list(upload["requestBody"]["content"]) == ["multipart/form-data"]
    assert upload["summary"].startswith("Upload documents (multipart/form-data")
    assert "KNOWLEDGE_MAX_FILE_MB" in upload["responses"]["413"]["description"]
    assert {"201", "400", "401", "413", "415"} <= set(upload["responses"])
    delete = paths[DOCUMENTS + "/{document_id}"]["delete"]
    assert delete["parameters"][0]["schema"]["format"] == "uuid" and {"200", "400", "404"} <= set(delete["responses"])


# /ready -------------------------------------------------------------------------------------------
async def test_ready_shows_indexing_progress_and_stays_ready(sqlite_store: Store, tmp_path: Path) -> None:
    waiting, release = asyncio.Event(), asyncio.Event()  # the indexer is waiting; let it go on

    async def embed(params: dict[str, Any]) -> list[list[float]]:
        texts = params["texts"] if "texts" in params else [params["text"]]
        if any("setting" in text for text in texts):  # the big manual's batch: hold the indexer here
            waiting.set()
            await release.wait()
        return [[1.0, float(len(text) % 7)] for text in texts]

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nAlpha is first.")
    (folder / "b.md").write_bytes(markdown(120_000))  # over one embedding batch: it is embedded at once
    (folder / "c.md").write_text("# C\n\nGamma is last.")
    settings = make_settings(tmp_path, knowledge_path=folder, host="127.0.0.1")
    plugin = create_plugin(settings, character())
    assert plugin is not None
    runtime = await start_runtime(sqlite_store, settings, ScriptedModel(defaults={ModelType.TEXT_EMBEDDING: embed}),
                                  plugin, character=character(),
                                  model_types=(ModelType.TEXT_LARGE, ModelType.TEXT_EMBEDDING))
    server = WebServer(runtime, settings)
    await server.start()
    server.mark_started()
    try:
        async with aiohttp.ClientSession() as http:
            async def ready() -> tuple[int, dict[str, Any]]:
                async with http.get(f"http://127.0.0.1:{server.port}/ready") as response:
                    return response.status, await response.json()

            await asyncio.wait_for(waiting.wait(), WAIT)
            status, body = await ready()
            assert status == 200 and body["ready"] and body["failing"] == []
            assert body["checks"]["services"]["knowledge"] == {
                "indexing": True, "state": "indexing", "documents_done": 1, "documents_total": 3}
            release.set()
            base = knowledge_base(runtime)
            assert base is not None
            await asyncio.wait_for(base.indexed.wait(), WAIT)
            status, body = await ready()
            assert status == 200 and body["checks"]["services"]["knowledge"] == {
                "indexing": False, "state": "ready", "documents_done": 3, "documents_total": 3}
    finally:
        release.set()
        await server.stop()

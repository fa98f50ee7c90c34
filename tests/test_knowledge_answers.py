"""Issue #13's end-to-end check: the whole App answers questions whose answers are only in the
character's documents (a knowledge string, a Markdown file, a PDF, a folder), and the passage with
its source reaches the model's prompt: with an OpenAI key (the fake OpenAI server's recorded
requests show the prompt) and with no key at all (the bundled local model and the offline
embedder; the local model's calls are recorded on their way to the real handler).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from bot.app import App
from bot.character import load_character
from bot.plugin import ModelRegistration
from bot.settings import Settings
from bot.types import ModelType
from plugins.knowledge import knowledge_base
from tests.fakes.openai_server import FakeOpenAI, message_text
from tests.runtime_helpers import make_chat
from tests.server_helpers import settings_for
from tests.test_knowledge_indexing import WAIT, write_corpus

pytestmark = pytest.mark.usefixtures("no_model_environment")

# (question, what the passage holds, the source its label names)
QUESTIONS = [
    ("What is Ava's favourite colour?", "favourite colour is teal", "character knowledge 1"),
    ("How long does the Zorblax warranty last?", "warranty lasts seven years", "guide.md"),
    ("What is the secret pairing code?", "pairing code is 4711", "manual.pdf"),
    ("Who leads the support team?", "Marta leads the support team", "docs/team.txt"),
]


async def started(app: App) -> App:
    await app.start()
    base = knowledge_base(app.runtime)
    assert base is not None
    await asyncio.wait_for(base.indexed.wait(), WAIT)
    assert base.progress.state == "ready" and base.progress.indexed == base.progress.documents == 6
    return app


def assert_cited(prompt: str, holds: str, source: str) -> None:
    passage = next((line for line in prompt.splitlines() if holds in line), None)
    assert passage is not None, f"the passage with {holds!r} is not in the prompt"
    assert f"(from {source}" in passage, f"the passage does not name {source}: {passage}"


async def test_with_an_openai_key_the_answers_come_from_the_documents(tmp_path: Path) -> None:
    character = write_corpus(tmp_path / "ava")
    async with FakeOpenAI("From the documents.") as fake:
        app = await started(App(settings_for(tmp_path, fake.base_url, character_path=character),
                                load_character(character).character))
        try:
            chat = make_chat(app.runtime)
            for question, holds, source in QUESTIONS:
                before = len(fake.requests_to("/chat/completions"))
                assert (await chat.send(question)).status == "completed"
                asked = [r for r in fake.requests_to("/chat/completions")[before:]
                         if question in message_text(r.body["messages"])]
                assert asked, f"no model call answered {question!r}"
                assert_cited(message_text(asked[-1].body["messages"]), holds, source)
        finally:
            await app.stop()


async def test_with_no_key_the_local_model_gets_the_passages(tmp_path: Path) -> None:
    character_path = write_corpus(tmp_path / "ava")
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", character_path=character_path, port=0,
                        host="127.0.0.1", local_context_size=1024, local_max_tokens=16)
    app = App(settings, load_character(character_path).character)
    providers = [r.provider for p in app.selection.plugins for r in p.models if r.model_type is ModelType.TEXT_LARGE]
    embedders = [r.provider for p in app.selection.plugins for r in p.models
                 if r.model_type is ModelType.TEXT_EMBEDDING]
    assert providers == ["local"] and embedders == ["offline-embedding"], "no key: the bundled model and offline embeddings"
    calls: list[dict[str, Any]] = []

    def recorded(registration: ModelRegistration) -> ModelRegistration:
        async def handler(runtime: Any, params: dict[str, Any]) -> Any:
            calls.append(params)
            return await registration.handler(runtime, params)
        return dataclasses.replace(registration, handler=handler)

    for plugin in app.selection.plugins:
        plugin.models = [recorded(r) if r.model_type is ModelType.TEXT_LARGE else r for r in plugin.models]
    await started(app)
    try:
        chat = make_chat(app.runtime)
        for question, holds, source in QUESTIONS:
            calls.clear()
            outcome = await chat.send(question)
            assert outcome.status == "completed" and outcome.responses, "the local model answered"
            assert_cited(calls[-1]["system"], holds, source)
    finally:
        await app.stop()

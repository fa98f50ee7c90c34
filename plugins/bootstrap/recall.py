"""Recall for small local models: what the speaker said earlier that bears on the new message.

A 135M-parameter model does not find "my dog is called Rex" forty turns back, but it reads a fact
placed right before the question well (measured by bench/offline_chat.py). So for plain models the
pipeline looks up the speaker's own earlier statements that share content words with the new
message (full-text search in the store, so it also works after a restart) and hands the best
ones over with the question. When no words match, statements close in meaning are the fallback
("what did I eat?" finds "I had pasta for dinner"), with any embedding model — the offline one
too, so this works with no key.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bot.runtime import ModelError
from bot.store.base import ScoredMemory
from bot.types import Memory, MemoryType, ModelType

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

STOPWORDS = frozenset("""
a about am an and any are as at be been but by can could did do does doing for from had has have
he her hers him his how i i'm if in into is it its just know me mine my myself no not of on or our
please she so some tell than that the their them then there these they this those to too up us
was we were what when where which who whom why will with would you your yours called name named
again remember recall said say told still think thing things really very much many
""".split())
_WORD = re.compile(r"[a-z][a-z']+")
# Cosine a statement must reach to be recalled by meaning alone: related sentences score 0.35 and
# more with the offline model and OpenAI's, unrelated ones mostly below 0.25.
MIN_SIMILARITY = 0.3


def _forms(word: str) -> tuple[str, ...]:
    """A word and its common English inflections ("live" → lives, lived, living)."""
    stem = re.sub(r"(ing|ed|es|s)$", "", word) if len(word) > 4 else word
    if stem.endswith("e"):
        return (word, stem, stem + "s", stem + "d", stem[:-1] + "ing")
    return (word, stem, stem + "s", stem + "ed", stem + "ing")


def keywords(text: str) -> list[str]:
    """Content words of a message with their inflections, so "where do I live" finds "I live in"."""
    words: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        word = word.removesuffix("'s")
        if len(word) >= 3 and word not in STOPWORDS:
            words.update(dict.fromkeys(_forms(word)))
    return list(words)


async def recall_statements(runtime: AgentRuntime, message: Memory, limit: int = 2) -> list[str]:
    """The speaker's earlier statements (not questions) in this room that match the message best:
    by shared words, else by meaning."""
    words = keywords(message.content.text)
    if not words:  # a question with no content words ("who are you?") is about nothing said before
        return []
    scope = {"agent_id": runtime.agent_id, "room_id": message.room_id, "entity_id": message.entity_id,
             "type": MemoryType.MESSAGE, "count": limit * 4}
    statements = _statements(await runtime.store.search_memories_by_text(" ".join(words), **scope), message, limit)
    if statements or not runtime.has_model(ModelType.TEXT_EMBEDDING):
        return statements
    try:
        vector = await runtime.embed(message.content.text, room_id=message.room_id, entity_id=message.entity_id)
    except ModelError:  # the embedding API is down: answer without, as with no model at all
        return []
    hits = await runtime.store.search_memories_by_embedding(vector, min_score=MIN_SIMILARITY, **scope)
    return _statements(hits, message, limit)


def _statements(hits: list[ScoredMemory], message: Memory, limit: int) -> list[str]:
    statements: list[str] = []
    for hit in hits:
        text = hit.memory.content.text.strip()
        if hit.memory.id == message.id or not text or text.endswith("?") or text in statements:
            continue
        statements.append(text)
    return statements[:limit]

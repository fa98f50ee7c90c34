"""The KNOWLEDGE provider: the passages of the agent's documents that bear on the message.

Hybrid search over the agent's FRAGMENT memories: full-text (BM25 / ts_rank, which finds exact
names and numbers) and vector similarity (which finds paraphrases), fused by reciprocal rank, since
the two scores are on scales that cannot be compared. A fragment must clear an absolute bar in at
least one of them (cosine ≥ KNOWLEDGE_MIN_SCORE, or holding half the message's content words), so
small talk brings no documents into the prompt. Each passage is labelled with its document (and
heading) so the model can say where an answer comes from.

It runs only when the prompt is composed, i.e. for messages the agent answers (should-respond asks
for RECENT_MESSAGES alone). An agent with no fragments costs nothing per message: the count is
cached, and rechecked only when knowledge changes or, while empty, every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.plugin import Provider, ProviderResult, State
from bot.runtime import ModelError
from bot.store.base import ScoredMemory
from bot.types import Memory, MemoryType, ModelType
from plugins.bootstrap.recall import STOPWORDS

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

RRF_K = 60  # the usual reciprocal-rank-fusion constant: rank 1 scores 1/61, rank 10 1/70
CANDIDATES = 4  # each search returns this many times top-k candidates for the fusion
WORD_COVERAGE = 0.5  # a full-text hit counts when it holds at least this share of the content words
EMPTY_RECHECK_SECONDS = 10.0  # an agent without fragments is counted again after this long
MAX_QUERY_WORDS = 32  # the store's own cap on full-text query words
CHARS_PER_TOKEN = 4
PLAIN_CONTEXT_SHARE = 4  # a small local model's passages take at most 1/4 of LOCAL_CONTEXT_SIZE
HEADER = ("# Knowledge\nPassages from your documents that may answer the message. When you use one, "
          "say which document it comes from.")
_WORD = re.compile(r"\w+")
_SUFFIX = re.compile(r"(ing|ed|es|s)$")


@dataclass(frozen=True, slots=True)
class Passage:
    """One fragment chosen for the prompt, with what it needs to be cited."""

    memory: Memory
    score: float  # the fused rank score (higher is better)
    similarity: float | None  # cosine to the message, when the vector search found it
    coverage: float | None  # share of the message's content words it holds, when full-text found it

    @property
    def source(self) -> str:
        return str(self._meta.get("source") or "unknown document")

    @property
    def heading(self) -> str | None:
        return self._meta.get("heading") or None

    @property
    def document_id(self) -> str | None:
        return self._meta.get("document_id")

    @property
    def _meta(self) -> dict[str, Any]:
        return self.memory.metadata.get("knowledge") or {}

    @property
    def label(self) -> str:
        return f"{self.source} > {self.heading}" if self.heading else self.source


@dataclass(frozen=True, slots=True)
class Limits:
    top_k: int
    token_budget: int
    min_score: float

    @classmethod
    def of(cls, runtime: AgentRuntime) -> Limits:
        """The settings; with a small local model answering, at most a quarter of its context window."""
        settings = runtime.settings
        budget = settings.knowledge_token_budget
        if runtime.has_model(ModelType.TEXT_LARGE) and not runtime.follows_formats(ModelType.TEXT_LARGE):
            budget = min(budget, settings.local_context_size // PLAIN_CONTEXT_SHARE)
        return cls(settings.knowledge_top_k, budget, settings.knowledge_min_score)


class FragmentCounts:
    """Whether each runtime's agent has any fragments, without a query per message.

    A known non-empty count stays true until `changed` (a search that finds nothing then costs one
    query, no harm); an empty one is trusted for EMPTY_RECHECK_SECONDS, so fragments indexed by
    another path still show up soon.
    """

    def __init__(self) -> None:
        self._known: weakref.WeakKeyDictionary[AgentRuntime, tuple[bool, float]] = weakref.WeakKeyDictionary()

    async def any(self, runtime: AgentRuntime) -> bool:
        known = self._known.get(runtime)
        if known is not None and (known[0] or time.monotonic() - known[1] < EMPTY_RECHECK_SECONDS):
            return known[0]
        count = await runtime.store.count_memories(agent_id=runtime.agent_id, room_id=runtime.agent_id,
                                                   type=MemoryType.FRAGMENT)
        self._known[runtime] = (count > 0, time.monotonic())
        return count > 0

    def changed(self, runtime: AgentRuntime) -> None:
        self._known.pop(runtime, None)


COUNTS = FragmentCounts()


def knowledge_changed(runtime: AgentRuntime) -> None:
    """Tell retrieval that the agent's fragments were added or removed (indexing, upload, delete)."""
    COUNTS.changed(runtime)


def content_words(text: str) -> list[str]:
    """The words of a message that can identify a passage: no stopwords; short ones only with a digit
    (model codes like "Q7", versions, numbers)."""
    words = _WORD.findall(text.lower())
    return list(dict.fromkeys(w for w in words
                              if w not in STOPWORDS and (len(w) >= 3 or any(c.isdigit() for c in w))))


def forms(word: str) -> list[str]:
    """A word and its regular English inflections, so "charging" finds "charge" and "charges"
    (full-text search matches whole words only). Forms that are not words match nothing."""
    if len(word) <= 4 or not word.isalpha():
        return [word]
    stem = _SUFFIX.sub("", word)
    found = [word, *(stem + ending for ending in ("", "e", "s", "es", "d", "ed", "ing"))]
    if stem.endswith("e"):
        found.append(stem[:-1] + "ing")
    return list(dict.fromkeys(found))


def _text_query(words: list[str]) -> str:
    """The words themselves first (they survive the store's cap), then their inflections."""
    forms_ = [form for word in words for form in forms(word)]
    return " ".join(list(dict.fromkeys([*words, *forms_]))[:MAX_QUERY_WORDS])


def coverage(words: Sequence[str], text: str) -> float:
    """Share of `words` the text holds, an inflection counting as the word ("installs" for "install")."""
    if not words:
        return 0.0
    present = set(_WORD.findall(text.lower()))
    held = sum(1 for w in words if any(form in present for form in forms(w)))
    return held / len(words)


async def _query_vector(runtime: AgentRuntime, message: Memory) -> list[float] | None:
    """The message's embedding: the stored one when the pipeline already made it, else one call."""
    if message.embedding:
        return list(message.embedding)
    if not runtime.has_model(ModelType.TEXT_EMBEDDING):
        return None
    try:
        vector = await runtime.use_model(ModelType.TEXT_EMBEDDING, {
            "text": message.content.text, "room_id": message.room_id, "entity_id": message.entity_id,
        })
    except ModelError as error:  # knowledge still comes by full text
        log.warning("embedding the message for knowledge search failed (full-text search only): %s", error)
        return None
    return list(vector) if vector is not None and len(vector) else None


async def _vector_hits(runtime: AgentRuntime, message: Memory, count: int,
                       min_score: float) -> list[ScoredMemory]:
    vector = await _query_vector(runtime, message)
    if vector is None:
        return []
    return await runtime.store.search_memories_by_embedding(
        vector, agent_id=runtime.agent_id, type=MemoryType.FRAGMENT, count=count, min_score=min_score)


async def _text_hits(runtime: AgentRuntime, words: list[str], count: int) -> list[tuple[ScoredMemory, float]]:
    """Full-text hits that hold enough of the message's words, each with its coverage."""
    if not words:
        return []
    hits = await runtime.store.search_memories_by_text(
        _text_query(words), agent_id=runtime.agent_id, type=MemoryType.FRAGMENT, count=count)
    scored = ((hit, coverage(words, hit.memory.content.text)) for hit in hits)
    return [(hit, share) for hit, share in scored if share >= WORD_COVERAGE]


def fuse(vector: list[ScoredMemory], text: list[tuple[ScoredMemory, float]]) -> list[Passage]:
    """Reciprocal rank fusion: a fragment both searches rank well beats one only a single search found."""
    scores: dict[Any, float] = {}
    memories: dict[Any, Memory] = {}
    similarity: dict[Any, float] = {}
    shares: dict[Any, float] = {}
    for rank, hit in enumerate(vector, start=1):
        memories[hit.memory.id] = hit.memory
        similarity[hit.memory.id] = hit.score
        scores[hit.memory.id] = scores.get(hit.memory.id, 0.0) + 1 / (RRF_K + rank)
    for rank, (hit, share) in enumerate(text, start=1):
        memories.setdefault(hit.memory.id, hit.memory)
        shares[hit.memory.id] = share
        scores[hit.memory.id] = scores.get(hit.memory.id, 0.0) + 1 / (RRF_K + rank)
    ordered = sorted(scores, key=lambda key: scores[key], reverse=True)
    return [Passage(memories[key], scores[key], similarity.get(key), shares.get(key)) for key in ordered]


def tokens(text: str) -> int:
    """A model-independent estimate (about four characters a token): budgets need only be close."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _entry(number: int, passage: Passage, text: str) -> str:
    return f"[{number}] (from {passage.label}) {text}"


def within_budget(passages: list[Passage], top_k: int, budget: int) -> list[tuple[Passage, str]]:
    """The best passages, at most `top_k`, whose entries fit `budget` tokens together.

    A passage that does not fit is passed over for a shorter one further down; the best passage
    alone longer than the budget is cut to it rather than dropped, since it is the likeliest answer.
    """
    chosen: list[tuple[Passage, str]] = []
    used = tokens(HEADER)
    for passage in passages:
        if len(chosen) == top_k:
            break
        text = passage.memory.content.text.strip()
        cost = tokens(_entry(len(chosen) + 1, passage, text)) + 1
        if used + cost > budget:
            if chosen:
                continue
            room = (budget - used - tokens(_entry(1, passage, ""))) * CHARS_PER_TOKEN - 2
            if room < 20:
                break
            text = text[:room].rsplit(" ", 1)[0] + " …"
            cost = tokens(_entry(1, passage, text)) + 1
        chosen.append((passage, text))
        used += cost
    return chosen


async def search_knowledge(runtime: AgentRuntime, message: Memory,
                           limits: Limits | None = None) -> list[tuple[Passage, str]]:
    """The passages for a message with the text each goes into the prompt with, best first."""
    limits = limits or Limits.of(runtime)
    if limits.top_k <= 0 or not message.content.text.strip() or not await COUNTS.any(runtime):
        return []
    words = content_words(message.content.text)
    count = limits.top_k * CANDIDATES
    vector, text = await asyncio.gather(_vector_hits(runtime, message, count, limits.min_score),
                                        _text_hits(runtime, words, count))
    return within_budget(fuse(vector, text), limits.top_k, limits.token_budget)


def render(chosen: list[tuple[Passage, str]]) -> str:
    if not chosen:
        return ""
    return "\n".join([HEADER, *(_entry(i, passage, text) for i, (passage, text) in enumerate(chosen, start=1))])


async def knowledge_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    chosen = await search_knowledge(runtime, message)
    if not chosen:
        return ProviderResult()
    text = render(chosen)
    return ProviderResult(text=text, values={"knowledge": text}, data={"fragments": [
        {"id": str(p.memory.id), "document_id": p.document_id, "source": p.source, "heading": p.heading,
         "score": round(p.score, 5), "similarity": p.similarity, "coverage": p.coverage}
        for p, _ in chosen
    ]})


KNOWLEDGE_PROVIDER = Provider("KNOWLEDGE", knowledge_provider, "passages from the agent's documents that bear on "
                              "the message, each with its source", position=45)

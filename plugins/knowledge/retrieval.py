"""The KNOWLEDGE provider: the passages of the agent's documents that bear on the message.

Hybrid search over the agent's FRAGMENT memories: full-text (BM25 / ts_rank, which finds exact
names and numbers) and vector similarity (which finds paraphrases), fused by reciprocal rank, since
the two scores are on scales that cannot be compared. A fragment must clear an absolute bar in at
least one of them (cosine ≥ KNOWLEDGE_MIN_SCORE, or holding half the message's content words), so
small talk brings no documents into the prompt. Each passage is labelled with its document (and
heading) so the model can say where an answer comes from.

It runs only when the prompt is composed, i.e. for messages the agent answers (should-respond asks
for RECENT_MESSAGES alone). An agent with no fragments costs nothing per message: the count is
cached, and rechecked only when knowledge changes or, while empty, every few seconds. Words that
many fragments hold are left out of the full-text query (terms.py): they would make it slow and
hardly change its ranking.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.plugin import Provider, ProviderResult, State
from bot.runtime import ModelError
from bot.store.base import ScoredMemory
from bot.types import Memory, MemoryType, ModelType
from plugins.bootstrap.recall import STOPWORDS

from .terms import CommonWords, sample_common_words, worth_sampling

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


@dataclass
class _Stats:
    count: int | None = None  # the agent's fragments; None: count them on the next search
    counted_at: float = 0.0
    common: CommonWords = field(default_factory=lambda: CommonWords.none(0))
    sampled: bool = False  # whether `common` describes the fragments as they are now
    generation: int = 0  # bumped by every change, so a sample taken across one is not trusted
    sampling: asyncio.Task[None] | None = None


class KnowledgeStats:
    """Per runtime, what searches need to know without a query per message: how many fragments
    the agent has, and which words are too common among them to search for (terms.py).

    A count is kept until the knowledge changes; a zero only for EMPTY_RECHECK_SECONDS, so
    fragments written by another path still show up soon. Common words are sampled in the
    background after a change, the old ones serving meanwhile.
    """

    def __init__(self) -> None:
        self._stats: weakref.WeakKeyDictionary[AgentRuntime, _Stats] = weakref.WeakKeyDictionary()

    def _of(self, runtime: AgentRuntime) -> _Stats:
        return self._stats.setdefault(runtime, _Stats())

    async def fragments(self, runtime: AgentRuntime) -> int:
        stats = self._of(runtime)
        stale_zero = stats.count == 0 and time.monotonic() - stats.counted_at >= EMPTY_RECHECK_SECONDS
        if stats.count is None or stale_zero:
            stats.count = await runtime.store.count_memories(agent_id=runtime.agent_id, room_id=runtime.agent_id,
                                                             type=MemoryType.FRAGMENT)
            stats.counted_at = time.monotonic()
        return stats.count

    def common_words(self, runtime: AgentRuntime) -> CommonWords:
        stats = self._of(runtime)
        if not worth_sampling(stats.count or 0):
            return CommonWords.none(stats.count or 0)
        if not stats.sampled and stats.sampling is None:
            stats.sampling = runtime.run_in_background(self._sample(runtime, stats), "knowledge-common-words")
        return stats.common

    async def settled(self, runtime: AgentRuntime) -> None:
        """Until a sample of common words under way has been taken (benchmarks, tests)."""
        task = self._of(runtime).sampling
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    @staticmethod
    async def _sample(runtime: AgentRuntime, stats: _Stats) -> None:
        generation = stats.generation
        try:
            stats.common = await sample_common_words(runtime)
            stats.sampled = stats.generation == generation
        except Exception as error:  # searches go on with the words they had; the next change tries again
            stats.sampled = True
            log.warning("knowledge: could not sample the fragments' common words (%s: %s); full-text searches "
                        "keep the previous ones", type(error).__name__, error)
        finally:
            stats.sampling = None

    def changed(self, runtime: AgentRuntime) -> None:
        stats = self._of(runtime)
        stats.count, stats.sampled = None, False
        stats.generation += 1


STATS = KnowledgeStats()


def knowledge_changed(runtime: AgentRuntime) -> None:
    """Tell retrieval that the agent's fragments were added or removed (indexing, upload, delete)."""
    STATS.changed(runtime)


def content_words(text: str) -> list[str]:
    """The words of a message that can identify a passage: no stopwords; short ones only with a digit
    (model codes like "Q7", versions, numbers)."""
    words = _WORD.findall(text.lower())
    return list(dict.fromkeys(w for w in words
                              if w not in STOPWORDS and (len(w) >= 3 or any(c.isdigit() for c in w))))


def forms(word: str) -> list[str]:
    """A word and its regular English inflections, so "charging" finds "charge" and "charges"
    (full-text search matches whole words only). A guess that is not a word matches nothing."""
    if not word.isalpha():
        return [word]
    if len(word) <= 4:  # last: lasts; code: codes
        return [word, word + "s"]
    suffix = _SUFFIX.search(word)
    stem = word[:suffix.start()] if suffix else word
    if stem.endswith("e"):  # phone: phones, phoned, phoning; guaranteed: guarantee
        found = [word, stem, stem + "s", stem + "d", stem[:-1] + "ing", stem + "e", stem + "es"]
    else:  # hour: hours, houred, houring
        found = [word, stem, stem + "s", stem + "ed", stem + "ing"]
        if suffix and suffix.group() != "s":  # charging, charged: the "e" the suffix dropped
            found += [stem + "e", stem + "es"]
        if stem.endswith(("s", "x", "z", "ch", "sh")):  # box: boxes
            found.append(stem + "es")
    return list(dict.fromkeys(found))


def text_query(words: list[str], common: CommonWords) -> str:
    """The words themselves first (they survive the store's cap), then their inflections; none
    that many fragments hold ("" when only such words are left: the search would be slow and
    rank by noise)."""
    terms = [*words, *(form for word in words for form in forms(word))]
    return " ".join(list(dict.fromkeys(t for t in terms if not common.is_common(t)))[:MAX_QUERY_WORDS])


def coverage(words: Sequence[str], text: str) -> float:
    """Share of `words` the text holds, an inflection counting as the word ("installs" for "install")."""
    if not words:
        return 0.0
    present = set(_WORD.findall(text.lower()))
    held = sum(1 for w in words if any(form in present for form in forms(w)))
    return held / len(words)


async def _query_vector(runtime: AgentRuntime, message: Memory) -> list[float] | None:
    """The message's embedding: the stored one, else the runtime's (made once per text)."""
    if message.embedding:
        return list(message.embedding)
    if not runtime.has_model(ModelType.TEXT_EMBEDDING):
        return None
    try:
        vector = await runtime.embed(message.content.text, room_id=message.room_id, entity_id=message.entity_id)
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
    """Full-text hits that hold enough of the message's words (common ones too), each with its coverage."""
    query = text_query(words, STATS.common_words(runtime))
    if not query:
        return []
    hits = await runtime.store.search_memories_by_text(
        query, agent_id=runtime.agent_id, type=MemoryType.FRAGMENT, count=count)
    scored = ((hit, coverage(words, f"{_heading(hit.memory)}\n{hit.memory.content.text}")) for hit in hits)
    return [(hit, share) for hit, share in scored if share >= WORD_COVERAGE]


def _heading(fragment: Memory) -> str:
    """The fragment's heading path ("Zorblax 3000 > Warranty"): it says what the passage is about."""
    return (fragment.metadata.get("knowledge") or {}).get("heading") or ""


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
    if limits.top_k <= 0 or not message.content.text.strip() or not await STATS.fragments(runtime):
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

"""Which words are too common among the agent's fragments to be worth a full-text search.

SQLite FTS5 and PostgreSQL score every row an OR query matches before they keep the best few
(about 3 µs a row in SQLite, 90 µs in PostgreSQL, which derives each row's tsvector again), so a
word that thousands of fragments hold ("hours" in a shelf of product manuals) makes one search
over 100k fragments take hundreds of milliseconds, while it weighs little in the ranking (its
inverse document frequency is low). On bench/knowledge.py's corpora, leaving out words in more
than MAX_ROWS fragments kept recall@5 as it was with no limit (0.962 at 8k fragments, 0.805 at
100k, where the search's p95 fell from 320 ms to 30-50 ms); a limit of 500 cost 0.015 at 100k.

A uniform sample of the fragments says which words those are: a word in a share s of the sample
is in about s of all fragments. It is drawn by id, using the documents' metadata (a fragment's id
derives from its document, its position and the document's hash), so it costs SAMPLE_SIZE point
reads, made in the background once per change of the knowledge. Knowledge of at most MAX_ROWS
fragments has no common words by definition, and is never sampled.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

from bot.types import MemoryType

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

SAMPLE_SIZE = 1000
MAX_ROWS = 1000  # a word estimated to be in more fragments than this is left out of full-text queries
_WORD = re.compile(r"\w+")


def worth_sampling(total: int) -> bool:
    """Whether `total` fragments can have common words at all."""
    return total > MAX_ROWS


@dataclass(frozen=True, slots=True)
class CommonWords:
    """Word → share of the sampled fragments holding it, for `total` fragments in all."""

    total: int
    shares: dict[str, float]

    def is_common(self, word: str) -> bool:
        return self.shares.get(word, 0.0) * self.total > MAX_ROWS

    @classmethod
    def none(cls, total: int) -> CommonWords:
        return cls(total, {})

    @classmethod
    def of_sample(cls, total: int, texts: list[str]) -> CommonWords:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(set(_WORD.findall(text.lower())))
        size = max(1, len(texts))
        return cls(total, {word: count / size for word, count in counts.items() if count / size * total > MAX_ROWS})


async def sample_common_words(runtime: AgentRuntime, seed: int | None = None) -> CommonWords:
    """The common words of the agent's fragments, from SAMPLE_SIZE fragments drawn uniformly."""
    # The indexer imports this package's retrieval, which imports this module: import it late.
    from .indexer import fragment_id

    agent_id = runtime.agent_id
    documents = await runtime.store.get_memories(agent_id=agent_id, room_id=agent_id, type=MemoryType.DOCUMENT,
                                                 count=None)
    parts = [(doc.id, int(meta["fragments"]), str(meta["hash"])) for doc in documents
             if isinstance(meta := doc.metadata.get("knowledge"), dict) and meta.get("fragments")]
    ends = list(accumulate(count for _, count, _ in parts))
    total = ends[-1] if ends else 0
    if not worth_sampling(total):
        return CommonWords.none(total)
    texts: list[str] = []
    for index in random.Random(seed).sample(range(total), min(SAMPLE_SIZE, total)):
        at = bisect_right(ends, index)
        document_id, _, digest = parts[at]
        position = index - (ends[at - 1] if at else 0)
        fragment = await runtime.store.get_memory(fragment_id(agent_id, document_id, position, digest))
        if fragment is not None:
            texts.append(fragment.content.text)
    return CommonWords.of_sample(total, texts)

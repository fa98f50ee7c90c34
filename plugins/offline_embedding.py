"""TEXT_EMBEDDING with no key and no download: the WordLlama model that the `wordllama` wheel ships.

WordLlama (MIT) is a table of 32,000 token vectors (256 dimensions, float16, 16 MB) distilled from
large language models; a text's embedding is the mean of its tokens' vectors. It was trained
matryoshka-style, so the first dimensions carry most of the meaning: we keep the first 128, which
halves the vector index's memory and its scan (the knowledge search at 100k fragments) and kept
bench/knowledge.py's recall@5 at 0.962 (vectors alone: 0.886 -> 0.838). That is cheap enough
to run in-process on a small dyno (over 20,000 short texts a second on one core, ~30 MB of
memory: bench/embedding.py) and good enough to find a fact or a passage by meaning — it is a bag
of words with learned synonyms, not a sentence model, so hybrid search with full text helps it.

Only the wheel's two data files are used — its tokenizer and its weights, read with `tokenizers`
and `safetensors` — never the package's code: that code fetches a missing tokenizer from the
Hugging Face hub and configures the root logger when imported. We pin the pure-Python 0.2.2
wheel, the newest that installs on arm64 as well as x86_64; its model files are the same bytes as
in later releases.

The offline model is the embedding model whenever no API embedding is configured (EMBEDDING=auto),
or always (EMBEDDING=offline). It is never a fallback for an API's: vectors of two sizes in one
store would split it into two searches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bot.plugin import ModelOutput, ModelRegistration, Plugin, Priority
from bot.settings import Embedding, Settings, SettingsError
from bot.types import ModelType

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)

NAME = "offline-embedding"
MODEL = "wordllama-l2-supercat-128"
# A prefix of the model's 256. Vectors stored at 256 by earlier releases are another size: the knowledge
# indexer re-embeds its fragments, messages and facts keep theirs (plugins/bootstrap/embeddings.py).
DIMENSIONS = 128
PACKAGE = "wordllama"
TOKENIZER_FILE = "wordllama/tokenizers/l2_supercat_tokenizer_config.json"
WEIGHTS_FILE = "wordllama/weights/l2_supercat_256.safetensors"
# A bag of tokens needs no more than its first pages to say what a text is about, and the
# token matrix of a whole book would take gigabytes.
MAX_CHARS = 32_000


def model_files() -> tuple[Path, Path] | None:
    """The tokenizer and weights inside the installed wheel, found without importing its code."""
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    files = Path(str(distribution.locate_file(TOKENIZER_FILE))), Path(str(distribution.locate_file(WEIGHTS_FILE)))
    return files if all(path.is_file() for path in files) else None


class WordLlama:
    """The loaded model: text in, unit vectors out (a text with no tokens gives a zero vector)."""

    def __init__(self, tokenizer: Tokenizer, weights: np.ndarray) -> None:
        self.tokenizer = tokenizer
        self.weights = weights

    @classmethod
    def load(cls, tokenizer_path: Path, weights_path: Path) -> WordLlama:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        weights = load_file(str(weights_path))["embedding.weight"]
        # A copy of the prefix, so the full table is freed rather than kept behind a view.
        return cls(Tokenizer.from_file(str(tokenizer_path)), np.ascontiguousarray(weights[:, :DIMENSIONS]))

    def embed(self, texts: list[str]) -> np.ndarray:
        """Mean token vector per text, scaled to unit length, as float32 rows.

        Texts are encoded one by one: the batch encoder would start a thread pool of its own,
        and it is no faster for short texts."""
        ids = [self.tokenizer.encode(text[:MAX_CHARS], add_special_tokens=False).ids for text in texts]
        lengths = np.array([len(row) for row in ids])
        vectors = np.zeros((len(texts), self.weights.shape[1]), dtype=np.float32)
        present = lengths > 0
        if present.any():
            flat = np.fromiter((token for row in ids for token in row), dtype=np.int64, count=int(lengths.sum()))
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[present]
            sums = np.add.reduceat(self.weights[flat].astype(np.float32), starts, axis=0)
            vectors[present] = sums / lengths[present, None]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1, norms)


class OfflineEmbedding:
    """The TEXT_EMBEDDING handler: loads the model on first use, embeds off the event loop."""

    def __init__(self, tokenizer_path: Path, weights_path: Path) -> None:
        self._paths = tokenizer_path, weights_path
        self._model: WordLlama | None = None
        self._lock = threading.Lock()

    def model(self) -> WordLlama:
        """The model, loaded once (callers are worker threads, hence a thread lock)."""
        with self._lock:
            if self._model is None:
                self._model = WordLlama.load(*self._paths)
                log.info("offline embedding model %s loaded (%d dimensions)", MODEL, DIMENSIONS)
            return self._model

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self.model().embed(texts).tolist()

    async def handler(self, runtime: AgentRuntime, params: dict[str, Any]) -> ModelOutput:
        """`text` → one vector; `texts` → a list of them, in order (as OpenAI's handler)."""
        single = "texts" not in params
        texts = [str(params.get("text", ""))] if single else [str(text) for text in params["texts"]]
        vectors = await asyncio.to_thread(self.embed, texts) if texts else []
        return ModelOutput(value=vectors[0] if single else vectors, model=MODEL)


_LOADED: dict[tuple[Path, Path], OfflineEmbedding] = {}


def offline_embedding_plugin() -> Plugin | None:
    """The plugin, or None when the wheel's model files are missing (a broken install)."""
    files = model_files()
    if files is None:
        return None
    shared = _LOADED.setdefault(files, OfflineEmbedding(*files))  # one model for all characters
    return Plugin(
        name=NAME,
        description=f"Offline text embeddings ({MODEL}, shipped in the {PACKAGE} package)",
        priority=Priority.MODEL,
        models=[ModelRegistration(ModelType.TEXT_EMBEDDING, shared.handler, provider=NAME, in_process=True)],
    )


def _without_embeddings(plugin: Plugin) -> Plugin:
    models = [r for r in plugin.models if r.model_type is not ModelType.TEXT_EMBEDDING]
    return plugin if len(models) == len(plugin.models) else dataclasses.replace(plugin, models=models)


def choose_embedding(settings: Settings, models: list[Plugin]) -> tuple[list[Plugin], list[str]]:
    """The model plugins with exactly one source of embeddings, and notes worth logging.

    EMBEDDING=auto keeps a provider's embeddings (OpenAI, or the OpenAI-compatible server) and
    adds the offline model only when none has them; offline drops the providers' embeddings for
    the offline model; off drops every embedding (no vector search at all).
    """
    has_api = any(r.model_type is ModelType.TEXT_EMBEDDING for plugin in models for r in plugin.models)
    if settings.embedding is Embedding.AUTO and has_api:
        return models, []
    models = [_without_embeddings(plugin) for plugin in models]
    if settings.embedding is Embedding.OFF:
        return models, []
    offline = offline_embedding_plugin()
    if offline is not None:
        return [*models, offline], []
    problem = f"the offline embedding model is not installed (the {PACKAGE} package is missing or incomplete)"
    if settings.embedding is Embedding.OFFLINE:
        raise SettingsError(f"EMBEDDING=offline but {problem}. Fix: pip install -e . (or set EMBEDDING=auto)")
    return models, [f"{problem}: no embeddings, so no search by meaning. Fix: pip install -e ."]

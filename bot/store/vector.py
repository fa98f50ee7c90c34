"""In-process cosine index over memory embeddings, one per (agent, dimension).

Neither SQLite nor PostgreSQL (without pgvector) can rank 100k vectors fast, but numpy can: the
vectors live in one contiguous float32 matrix, normalised on insert so cosine is a dot product, and
room/entity/type filters become integer masks. The database stays the source of truth: an index is
loaded lazily on the first search and then kept current by this process's writes. Writes made by
*other* processes after the load are not seen until restart (one bot process owns its agents).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_FLOAT = np.float32


def _dot(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Each row's dot product with `vector`, on the calling thread only.

    Not `matrix @ vector`: OpenBLAS splits that over every core, and its helper threads then spin
    waiting for more work, holding a core of a 2-core machine busy between searches. numpy's own
    loop is as fast as one BLAS thread (100k x 128 in about 3 ms) and leaves the other core to the
    full-text search that runs alongside and to the event loop.
    """
    return np.einsum("ij,j->i", matrix, vector)


def to_unit(vector: np.ndarray) -> np.ndarray:
    """Scale rows to unit length; zero rows stay zero (they then score 0 against everything)."""
    norms = np.linalg.norm(vector, axis=-1, keepdims=True)
    return vector / np.where(norms == 0, 1, norms)


@dataclass(frozen=True, slots=True)
class Row:
    """One embedding with the memory attributes searches may filter on."""

    memory_id: str
    room_id: str
    entity_id: str
    type: str
    vector: np.ndarray


class Codes:
    """Dense integer codes for strings, so filters compare int32 arrays instead of objects."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}

    def code(self, value: str) -> int:
        return self._codes.setdefault(value, len(self._codes))

    def find(self, value: str) -> int:
        """The code, or -1 (matches nothing) for a value never seen."""
        return self._codes.get(value, -1)


class VectorIndex:
    """Vectors of one dimension for one agent; grows by doubling, deletes by clearing a live flag."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._vectors = np.zeros((0, dim), dtype=_FLOAT)
        self._room = np.zeros(0, dtype=np.int32)
        self._entity = np.zeros(0, dtype=np.int32)
        self._type = np.zeros(0, dtype=np.int32)
        self._live = np.zeros(0, dtype=bool)
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._rooms = Codes()
        self._entities = Codes()
        self._types = Codes()
        self._size = 0

    def __len__(self) -> int:
        return len(self._rows)

    def _reserve(self, extra: int) -> None:
        needed = self._size + extra
        capacity = len(self._live)
        if needed <= capacity:
            return
        capacity = max(needed, capacity * 2, 1024)
        grow = capacity - len(self._live)
        self._vectors = np.concatenate([self._vectors, np.zeros((grow, self.dim), dtype=_FLOAT)])
        self._room = np.concatenate([self._room, np.full(grow, -1, dtype=np.int32)])
        self._entity = np.concatenate([self._entity, np.full(grow, -1, dtype=np.int32)])
        self._type = np.concatenate([self._type, np.full(grow, -1, dtype=np.int32)])
        self._live = np.concatenate([self._live, np.zeros(grow, dtype=bool)])

    def add(self, rows: Iterable[Row]) -> None:
        """Insert or replace; vectors must already have this index's dimension."""
        rows = list(rows)
        self._reserve(len(rows))
        for row in rows:
            at = self._rows.get(row.memory_id)
            if at is None:
                at = self._size
                self._size += 1
                self._ids.append(row.memory_id)
                self._rows[row.memory_id] = at
            self._vectors[at] = to_unit(np.asarray(row.vector, dtype=_FLOAT))
            self._room[at] = self._rooms.code(row.room_id)
            self._entity[at] = self._entities.code(row.entity_id)
            self._type[at] = self._types.code(row.type)
            self._live[at] = True

    def load(self, ids: list[str], rooms: list[str], entities: list[str], types: list[str], matrix: np.ndarray) -> None:
        """Bulk insert of a freshly read table (into an empty index), vectorised for 100k rows."""
        count = len(ids)
        self._reserve(count)
        end = self._size + count
        self._vectors[self._size:end] = to_unit(matrix)
        self._room[self._size:end] = [self._rooms.code(r) for r in rooms]
        self._entity[self._size:end] = [self._entities.code(e) for e in entities]
        self._type[self._size:end] = [self._types.code(t) for t in types]
        self._live[self._size:end] = True
        self._rows.update(zip(ids, range(self._size, end), strict=True))
        self._ids.extend(ids)
        self._size = end

    def remove(self, memory_ids: Iterable[str]) -> None:
        for memory_id in memory_ids:
            at = self._rows.pop(memory_id, None)
            if at is not None:
                self._live[at] = False

    def remove_room(self, room_id: str, type: str | None) -> None:
        mask = self._live[: self._size] & (self._room[: self._size] == self._rooms.find(room_id))
        if type is not None:
            mask &= self._type[: self._size] == self._types.find(type)
        for at in np.flatnonzero(mask):
            self._rows.pop(self._ids[at], None)
        self._live[: self._size][mask] = False

    def search(
        self,
        query: np.ndarray,
        count: int,
        *,
        room_id: str | None = None,
        entity_id: str | None = None,
        type: str | None = None,
        min_score: float | None = None,
    ) -> list[tuple[str, float]]:
        """Best `count` (memory id, cosine) pairs; narrow filters score only the matching rows."""
        size = self._size
        mask = self._live[:size].copy()
        if room_id is not None:
            mask &= self._room[:size] == self._rooms.find(room_id)
        if entity_id is not None:
            mask &= self._entity[:size] == self._entities.find(entity_id)
        if type is not None:
            mask &= self._type[:size] == self._types.find(type)
        unit = to_unit(np.asarray(query, dtype=_FLOAT))
        vectors, ids = self._vectors, self._ids
        matches = int(np.count_nonzero(mask))
        if count <= 0 or matches == 0:
            return []
        if matches * 4 < size:
            rows = np.flatnonzero(mask)
            scores = _dot(vectors[rows], unit)
        else:
            # Copying most of the matrix to drop a few rows costs more than scoring them all.
            rows = np.arange(size)
            scores = _dot(vectors[:size], unit)
            if matches < size:
                scores[~mask] = -np.inf
        # Only rows that clear the bar compete for the top: a few thousand of 100k fragments at the
        # knowledge search's 0.3, so the partition below sorts out far fewer (filtered rows are -inf).
        passing = None if min_score is None else np.flatnonzero(scores >= min_score)
        pool = scores if passing is None else scores[passing]
        take = min(count, matches, len(pool))
        if take == 0:
            return []
        top = np.argpartition(pool, len(pool) - take)[len(pool) - take:] if take < len(pool) else np.arange(take)
        top = top[np.argsort(-pool[top], kind="stable")]
        if passing is not None:
            top = passing[top]
        return [(ids[rows[position]], float(scores[position])) for position in top]

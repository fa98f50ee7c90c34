"""Build the configured store: a SQLite file under DATA_DIR, or PostgreSQL when DATABASE_URL is set."""

from __future__ import annotations

from typing import Any

from bot.settings import Settings
from bot.store.sql import SqlStore


def create_store(settings: Settings, **engine_options: Any) -> SqlStore:
    """An uninitialised store (call `await store.init()`); creates DATA_DIR for the SQLite file."""
    if settings.database_url:
        # Bounded: DATABASE_POOL_SIZE for queries, one more kept by the room coordinator (one per
        # store, however many characters); many processes on one server must stay under PostgreSQL's
        # max_connections.
        engine_options = {"pool_size": settings.database_pool_size + 1, "max_overflow": 0, **engine_options}
        return SqlStore.from_url(settings.database_url, **engine_options)
    path = settings.sqlite_path
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqlStore.from_url(f"sqlite:///{path.resolve()}", **engine_options)

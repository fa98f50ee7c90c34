"""Shared fixtures."""

from __future__ import annotations

import gc
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from bot.store.sql import SqlStore
from bot.types import Agent
from tests.runtime_helpers import stop_started


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Each App started here froze the objects then alive (gc.freeze, once per process in production),
    garbage included: a store some test left unclosed keeps its SQLite worker thread, which the
    interpreter would wait for at exit. Unfreeze and collect, so such garbage is finalised first."""
    gc.unfreeze()
    gc.collect()


# Loggers that configure_logging quiets and tests turn up again to prove nothing secret is written.
NOISY_LOGGERS = ("discord", "discord.http", "discord.gateway", "discord.client", "discord.webhook.async_",
                 "httpx2", "mcp")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers and levels; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.fixture
def no_model_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys or model settings in the developer's environment must not change what is tested."""
    for name in list(os.environ):
        if name.upper().startswith(("OPENAI_", "ANTHROPIC_", "MODEL_", "LOCAL_")):
            monkeypatch.delenv(name)


# --- store fixtures ----------------------------------------------------------------------------
STORE_BACKENDS = ["sqlite", "postgres"]


async def _postgres_store(url: str) -> AsyncIterator[SqlStore]:
    """A store in a fresh schema of the test database, dropped afterwards, so tests never collide."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(plain)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        store = SqlStore.from_url(url, connect_args={"server_settings": {"search_path": schema}})
        try:
            yield store
        finally:
            await stop_started(store)
            await store.close()
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A fresh schema of the PostgreSQL test database (TEST_DATABASE_URL), dropped afterwards, for tests
    that open their own stores on it (several processes' pools)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("set TEST_DATABASE_URL to run the PostgreSQL tests of several processes")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    await admin.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        await admin.execute(f"DROP SCHEMA {name} CASCADE")
        await admin.close()


@pytest.fixture
async def shared_postgres(schema: str) -> AsyncIterator[list[SqlStore]]:
    """Two stores (two processes' pools) on one fresh PostgreSQL schema; the runtimes started on
    them are stopped first."""
    url = os.environ["TEST_DATABASE_URL"]
    stores = [SqlStore.from_url(url, connect_args={"server_settings": {"search_path": schema}}) for _ in range(2)]
    try:
        yield stores
    finally:
        for store in stores:
            await stop_started(store)
            await store.close()


@pytest.fixture(params=STORE_BACKENDS)
async def raw_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    """An uninitialised SqlStore per backend (SQLite file; PostgreSQL when TEST_DATABASE_URL is set)."""
    if request.param == "sqlite":
        store = SqlStore.from_url(f"sqlite:///{tmp_path / 'parley.db'}")
        try:
            yield store
        finally:
            await stop_started(store)
            await store.close()
        return
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("set TEST_DATABASE_URL to run the PostgreSQL store tests")
    async for store in _postgres_store(url):
        yield store


@pytest.fixture
async def store(raw_store: SqlStore) -> SqlStore:
    """An initialised SqlStore, parametrized over sqlite and postgres."""
    await raw_store.init()
    return raw_store


@pytest.fixture
def make_agent(store: SqlStore) -> Callable[..., Awaitable[uuid.UUID]]:
    """`await make_agent(name="Eliza")` stores a new agent and returns its id."""

    async def make(name: str = "Eliza", **fields: object) -> uuid.UUID:
        agent = Agent(id=uuid.uuid4(), name=name, **fields)
        await store.upsert_agent(agent)
        return agent.id

    return make


@pytest.fixture
async def agent_id(make_agent: Callable[..., Awaitable[uuid.UUID]]) -> uuid.UUID:
    """The id of one stored agent in `store`."""
    return await make_agent()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    """An initialised SQLite store in tmp_path, for tests that exercise the runtime, not the backends."""
    from bot.store.factory import create_store
    from tests.runtime_helpers import make_settings

    store = create_store(make_settings(tmp_path))
    await store.init()
    yield store
    await stop_started(store)
    await store.close()

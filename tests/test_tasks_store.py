"""The claim that makes a task fire once: compare-and-swap on both backends, and two task services
sharing one PostgreSQL that see the same due task send it once."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from bot.types import Task
from tests.runtime_helpers import ScriptedModel, make_chat
from tests.task_helpers import FakeClock, RoomConnector, service, task_runtime
from tests.test_tasks import START, schedule


async def test_claim_task_succeeds_once_per_version(store, agent_id):
    task = Task(agent_id=agent_id, name="scheduled_message", metadata={"next_run": 1}, updated_at=1000)
    await store.create_task(task)
    first = task.model_copy(update={"metadata": {"next_run": 2}, "updated_at": 1001})
    second = task.model_copy(update={"metadata": {"next_run": 3}, "updated_at": 1002})
    assert await store.claim_task(first, 1000)
    assert not await store.claim_task(second, 1000)  # it read the row before `first` changed it
    [stored] = await store.get_tasks(agent_id=agent_id)
    assert stored.metadata == {"next_run": 2} and stored.updated_at == 1001
    assert not await store.claim_task(task.model_copy(update={"id": uuid.uuid4(), "updated_at": 5}), 1)
    with pytest.raises(ValueError):
        await store.claim_task(first, 1001)


async def test_concurrent_claims_have_one_winner(store, agent_id):
    task = Task(agent_id=agent_id, name="scheduled_message", updated_at=1)
    await store.create_task(task)
    claims = [task.model_copy(update={"metadata": {"by": i}, "updated_at": 2 + i}) for i in range(8)]
    won = await asyncio.gather(*(store.claim_task(c, 1) for c in claims))
    assert sum(won) == 1


@pytest.mark.parametrize("repeat", [False, True])
async def test_two_services_on_one_postgres_send_a_due_task_once(shared_postgres, tmp_path, repeat):
    RoomConnector.reset()
    clock, model = FakeClock(START), ScriptedModel()
    runtimes = [await task_runtime(tmp_path / str(i), model, clock, store=store)
                for i, store in enumerate(shared_postgres)]
    chat = make_chat(runtimes[0])
    for runtime in runtimes:  # both know the room (as both would after seeing it)
        await runtime.ensure_connection(chat.user, chat.room, chat.world)
    when = {"repeat": {"every": "minutes", "interval_minutes": 5}} if repeat else {"in_seconds": 300}
    assert (await schedule(runtimes[0], chat, text="once", **when)).success
    tasks = [service(r) for r in runtimes]
    together, claims = asyncio.Barrier(2), []
    for store in shared_postgres:  # both read the due row before either claims it: a real race
        read, claim = store.get_tasks, store.claim_task

        async def read_together(*args, read=read, **kwargs):
            rows = await read(*args, **kwargs)
            await together.wait()
            return rows

        async def recorded(*args, claim=claim):
            claims.append(await claim(*args))
            return claims[-1]

        store.get_tasks, store.claim_task = read_together, recorded
    runs = 3 if repeat else 1
    for _ in range(runs):
        clock.advance(300)  # one wake for both services
        await asyncio.gather(*(t.settled() for t in tasks))
    assert claims.count(True) == runs and claims.count(False) == runs  # each run: both tried, one won
    assert len(RoomConnector.delivered) == runs
    for runtime in runtimes:
        await runtime.stop()

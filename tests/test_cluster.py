"""Three `python -m bot` processes on one PostgreSQL database, behind a load balancer that delivers
Telegram webhook updates round-robin (issue #12): every DM and every mention is answered exactly
once, each chat in the order of its messages, also when one process is killed with SIGKILL mid-burst.

"Exactly once" is checked only once the cluster is idle: every update delivered, every live queue
empty, and no reply for CLUSTER_SWEEP_SECONDS + 1 s, so a process picking up work left behind would
have shown its duplicate by then. Needs TEST_DATABASE_URL (each test makes its own database).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_helpers import Cluster, ReplyLedger, running_cluster, wait_until
from tests.fakes.telegram_api import FakeTelegram

DATABASE = os.environ.get("TEST_DATABASE_URL", "")
pytestmark = pytest.mark.skipif(not DATABASE, reason="set TEST_DATABASE_URL to run the cluster tests (PostgreSQL)")

PROCESSES = 3
DMS = 60  # one each from 60 users
GROUP_MESSAGES = 30  # in one group chat; every other one mentions the bot
SWEEP_SECONDS = 2.0  # CLUSTER_SWEEP_SECONDS, its default
ANSWER_TIMEOUT = 40.0
KILL_RECOVERY = 20.0  # from the kill until every addressed message is answered


def burst(telegram: FakeTelegram) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    """The updates, DMs and group lines interleaved, and the (chat, message) keys that must be answered."""
    users = [FakeTelegram.user(10_000 + i, f"User{i}", f"user{i}") for i in range(DMS)]
    group = FakeTelegram.group_chat(-100_500, "Friends")
    dms = [telegram.message(user, FakeTelegram.private_chat(user), f"hello there, I am number {i}")
           for i, user in enumerate(users)]
    lines = [telegram.message(users[i % 5], group, f"group line {i}", mention=i % 2 == 1)
             for i in range(GROUP_MESSAGES)]
    messages = []
    while dms or lines:
        messages += [dms.pop(0) for _ in range(min(2, len(dms)))] + [lines.pop(0) for _ in range(min(1, len(lines)))]
    addressed = [(m["chat"]["id"], m["message_id"]) for m in messages
                 if m["chat"]["type"] == "private" or "entities" in m]
    assert len(addressed) == DMS + GROUP_MESSAGES // 2
    return [{"message": m} for m in messages], addressed


def progress(cluster: Cluster, addressed: list[tuple[int, int]]) -> str:
    ledger = ReplyLedger(cluster.telegram)
    return "\n".join([f"answered {ledger.answered(addressed)} of {len(addressed)}", *ledger.problems(addressed),
                      cluster.report()])


async def answer_all(cluster: Cluster, addressed: list[tuple[int, int]], timeout: float) -> float:
    return await wait_until(lambda: ReplyLedger(cluster.telegram).answered(addressed) == len(addressed), timeout,
                            "every DM and mention answered", lambda: progress(cluster, addressed))


def assert_each_answered_once_in_order(cluster: Cluster, addressed: list[tuple[int, int]],
                                       reference: tuple[str, float] | None = None) -> None:
    problems = ReplyLedger(cluster.telegram).problems(addressed, reference=reference)
    assert not problems, "\n".join(problems) + "\n" + cluster.report()


async def test_three_processes_answer_every_dm_and_mention_once_in_order(tmp_path: Path) -> None:
    async with running_cluster(tmp_path, PROCESSES, DATABASE, model_delay=0.05) as cluster:
        updates, addressed = burst(cluster.telegram)
        for update in updates:
            cluster.deliverer.deliver(update)
        await answer_all(cluster, addressed, ANSWER_TIMEOUT)
        await cluster.wait_idle(quiet=SWEEP_SECONDS + 1)
        assert_each_answered_once_in_order(cluster, addressed)
        spread = {p.name: len(cluster.deliverer.accepted_by(p.url)) for p in cluster.processes}
        assert all(spread.values()), f"the load balancer reached every process: {spread}"


async def feed(cluster: Cluster, updates: list[dict[str, Any]], interval: float) -> None:
    """Hand the updates to the load balancer one every `interval` seconds, as a burst arrives."""
    for update in updates:
        cluster.deliverer.deliver(update)
        await asyncio.sleep(interval)


async def test_a_process_killed_mid_burst_leaves_nothing_unanswered_and_nothing_twice(tmp_path: Path) -> None:
    # 200 ms per model call, and the burst arriving over ~3 s, so the kill lands inside it: the
    # victim has runs in flight, stored messages waiting, and updates still coming its way.
    async with running_cluster(tmp_path, PROCESSES, DATABASE, model_delay=0.2) as cluster:
        updates, addressed = burst(cluster.telegram)
        victim = cluster.processes[1]
        feeding = asyncio.create_task(feed(cluster, updates, interval=0.03))
        try:
            await wait_until(lambda: len(cluster.deliverer.deliveries) >= len(updates) // 2
                             and ReplyLedger(cluster.telegram).answered(addressed) >= len(addressed) // 4,
                             ANSWER_TIMEOUT, "half the burst delivered and a quarter answered",
                             lambda: progress(cluster, addressed))
            answered_at_kill = ReplyLedger(cluster.telegram).answered(addressed)
            await victim.kill()
            killed = time.monotonic()
            await feeding
        finally:
            feeding.cancel()
        assert answered_at_kill < len(addressed), "the burst was over before the kill; nothing was tested"
        await answer_all(cluster, addressed, KILL_RECOVERY)
        recovered = time.monotonic() - killed
        await cluster.wait_idle(quiet=SWEEP_SECONDS + 1)
        assert_each_answered_once_in_order(cluster, addressed, reference=("the kill", killed))
        refused = [a for a in cluster.deliverer.failed_attempts() if a.url == victim.url]
        assert refused, "no update was tried on the dead process, so none was retried elsewhere"
        print(f"killed {victim.name} with {answered_at_kill}/{len(addressed)} answered; the rest answered "
              f"{recovered:.1f}s later; {len(refused)} delivery attempt(s) to it retried elsewhere")

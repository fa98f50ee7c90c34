"""Scheduled messages on a driven clock: scheduled through the pipeline, fired once in the room
where they were asked, repeating across DST, surviving restarts, limited, and only one's own.

Absence is proven by events: `service.settled()` returns once the task loop has made a whole
pass after the clock moved, so "nothing was sent" is checked after that pass, never after a sleep.
"""

from __future__ import annotations

import logging

import pytest

from bot.plugin import State
from bot.settings import LatePolicy
from bot.store.factory import create_store
from bot.types import ChannelType, ModelType
from plugins.tasks.service import STALE_SENDING_SECONDS, TASK_NAME
from tests.runtime_helpers import ScriptedModel, make_chat, make_settings, xml_reply
from tests.task_helpers import FakeClock, RoomConnector, service, shutdown, task_runtime, tool_reply, utc

START = utc(2026, 3, 27, 7, 30)  # Friday 08:30 in Berlin, two days before clocks go forward


@pytest.fixture
def model() -> ScriptedModel:
    m = ScriptedModel()
    m.defaults[ModelType.TEXT_LARGE] = xml_reply("Okay!")
    m.defaults[ModelType.TEXT_SMALL] = "IGNORE"
    return m


@pytest.fixture
def clock() -> FakeClock:
    RoomConnector.reset()
    return FakeClock(START)


async def schedule(runtime, chat, **arguments):
    """Call SCHEDULE_MESSAGE as the chat's user would have the model call it."""
    await runtime.ensure_connection(chat.user, chat.room, chat.world)
    _, result = await runtime.run_action("SCHEDULE_MESSAGE", chat.message("remind me"), State(),
                                         parameters=arguments)
    return result


async def call(runtime, chat, name, **arguments):
    await runtime.ensure_connection(chat.user, chat.room, chat.world)
    _, result = await runtime.run_action(name, chat.message("please"), State(), parameters=arguments)
    return result


async def test_reminder_scheduled_through_the_pipeline_fires_once_in_its_room(tmp_path, model, clock):
    model.script(ModelType.TEXT_LARGE, tool_reply("SCHEDULE_MESSAGE", {"text": "stretch", "in_seconds": 600}),
                 xml_reply("I'll remind you in 10 minutes."))
    runtime = await task_runtime(tmp_path, model, clock)
    tasks = service(runtime)
    chat = make_chat(runtime, "kitchen")
    await chat.send("remind me in 10 minutes to stretch")
    assert [c.text for c in chat.sent] == ["I'll remind you in 10 minutes."]
    assert "scheduled [" in model.prompts(ModelType.TEXT_LARGE)[1]  # the tool's result went back to the model
    clock.advance(599)
    await tasks.settled()
    assert RoomConnector.delivered == []
    clock.advance(1)
    await tasks.settled()
    assert RoomConnector.delivered == [("kitchen", "Reminder for Sam: stretch", START + 600)]
    clock.advance(3600)
    await tasks.settled()
    assert len(RoomConnector.delivered) == 1
    assert await tasks.tasks() == []
    stored = await runtime.store.get_memories(agent_id=runtime.agent_id, room_id=chat.room.id, count=1)
    assert stored[0].content.text == "Reminder for Sam: stretch"  # the agent remembers it reminded
    await shutdown(runtime)


async def test_every_weekday_at_nine_in_berlin_stays_at_nine_across_dst(tmp_path, model, clock):
    runtime = await task_runtime(tmp_path, model, clock)
    tasks = service(runtime)
    chat = make_chat(runtime, channel=ChannelType.GROUP)
    result = await schedule(runtime, chat, text="stand-up", timezone="Europe/Berlin",
                            repeat={"every": "weekday", "at": "09:00"})
    assert result.success and "Fri 2026-03-27 09:00 (Europe/Berlin), then every weekday at 09:00" in result.text
    fired = []
    for instant in (utc(2026, 3, 27, 8), utc(2026, 3, 28, 8), utc(2026, 3, 29, 7), utc(2026, 3, 29, 8),
                    utc(2026, 3, 30, 6, 59), utc(2026, 3, 30, 7), utc(2026, 3, 31, 7)):
        clock.set(instant)
        await tasks.settled()
        fired.append(len(RoomConnector.delivered))
    # Friday 09:00 CET is 08:00 UTC; Monday 09:00 CEST is 07:00 UTC; nothing at the weekend.
    assert fired == [1, 1, 1, 1, 1, 2, 3]
    assert [t for _, _, t in RoomConnector.delivered] == [utc(2026, 3, 27, 8), utc(2026, 3, 30, 7),
                                                          utc(2026, 3, 31, 7)]
    await shutdown(runtime)


async def test_a_task_missed_while_down_fires_at_start_within_the_grace_period(tmp_path, model, clock):
    runtime = await task_runtime(tmp_path, model, clock)
    chat = make_chat(runtime)
    assert (await schedule(runtime, chat, text="call mum", in_seconds=600)).success
    await shutdown(runtime)
    clock.advance(1800)  # down for half an hour; the default grace is an hour
    runtime = await task_runtime(tmp_path, model, clock)
    await service(runtime).settled()
    assert RoomConnector.delivered == [("room1", "Reminder for Sam: call mum", START + 1800)]
    await shutdown(runtime)


@pytest.mark.parametrize("policy", [LatePolicy.REPORT, LatePolicy.DROP])
async def test_a_task_older_than_grace_is_reported_late_or_dropped(tmp_path, model, clock, policy, caplog):
    settings = {"task_grace_seconds": 60, "task_late_policy": policy}
    runtime = await task_runtime(tmp_path, model, clock, **settings)
    chat = make_chat(runtime)
    assert (await schedule(runtime, chat, text="water the plants", at="09:00", timezone="Europe/Berlin")).success
    assert (await schedule(runtime, chat, text="daily log", repeat={"every": "day", "at": "10:00"})).success
    await shutdown(runtime)
    clock.set(utc(2026, 3, 27, 10, 30))  # 09:00 and 10:00 in Berlin (remembered) are 08:00 and 09:00 UTC
    with caplog.at_level(logging.INFO, logger="plugins.tasks.service"):
        runtime = await task_runtime(tmp_path, model, clock, **settings)
        tasks = service(runtime)
        await tasks.settled()
    left = {t.metadata["text"]: t.metadata["next_run"] for t in await tasks.tasks()}
    assert left == {"daily log": utc(2026, 3, 28, 9)}  # the repeating one moved on to tomorrow 10:00
    if policy is LatePolicy.REPORT:
        assert sorted(text for _, text, _ in RoomConnector.delivered) == [
            "Reminder for Sam (due Fri 2026-03-27 09:00 (Europe/Berlin), 2 h 30 min late): water the plants",
            "Reminder for Sam (due Fri 2026-03-27 10:00 (Europe/Berlin), 1 h 30 min late): daily log",
        ]
    else:
        assert RoomConnector.delivered == []
        assert sum("dropped" in r.getMessage() for r in caplog.records) == 2
    await shutdown(runtime)


async def test_limits_per_user_and_per_room(tmp_path, model, clock):
    runtime = await task_runtime(tmp_path, model, clock, tasks_per_user=2, tasks_per_room=3)
    sam = make_chat(runtime, "group", ChannelType.GROUP)
    kim = make_chat(runtime, "group", ChannelType.GROUP, user="Kim")
    for seconds in (60, 120):
        assert (await schedule(runtime, sam, text="x", in_seconds=seconds)).success
    refused = await schedule(runtime, sam, text="x", in_seconds=180)
    assert not refused.success and "2 scheduled messages, the most allowed" in refused.error
    assert (await schedule(runtime, kim, text="y", in_seconds=60)).success
    refused = await schedule(runtime, kim, text="y", in_seconds=60)
    assert not refused.success and "this chat already has 3" in refused.error
    await shutdown(runtime)


async def test_list_and_cancel_only_ones_own_unless_admin(tmp_path, model, clock):
    runtime = await task_runtime(tmp_path, model, clock)
    sam = make_chat(runtime, "group", ChannelType.GROUP)
    kim = make_chat(runtime, "group", ChannelType.GROUP, user="Kim")
    sams = (await schedule(runtime, sam, text="sam's thing", in_seconds=600)).data["task_id"]
    kims = (await schedule(runtime, kim, text="kim's thing", in_seconds=900)).data["task_id"]
    listed = await call(runtime, sam, "LIST_TASKS", everyone=True)  # a member asking for all sees their own
    assert "sam's thing" in listed.text and "kim's thing" not in listed.text and sams[:8] in listed.text
    refused = await call(runtime, sam, "CANCEL_TASK", id=kims[:6])
    assert not refused.success and "LIST_TASKS shows the ids" in refused.error
    RoomConnector.owners = {"Sam"}  # now the platform vouches for Sam as an owner
    listed = await call(runtime, sam, "LIST_TASKS", everyone=True)
    assert "kim's thing" in listed.text and "by Kim" in listed.text
    assert (await call(runtime, sam, "CANCEL_TASK", id=kims[:6])).success
    assert (await call(runtime, sam, "CANCEL_TASK", id=f"[{sams[:8]}]")).success
    assert await service(runtime).tasks() == []
    assert (await call(runtime, kim, "LIST_TASKS")).text == "no scheduled messages here"
    await shutdown(runtime)


async def test_a_visitor_cannot_schedule(tmp_path, model, clock):
    runtime = await task_runtime(tmp_path, model, clock, connector=False)  # no platform vouches for anyone
    result = await schedule(runtime, make_chat(runtime), text="spam", in_seconds=60)
    assert not result.success and result.data.get("refused")
    assert await service(runtime).tasks() == []
    await shutdown(runtime)


@pytest.mark.parametrize(("arguments", "error"), [
    ({"at": "2026-03-27T08:00", "timezone": "Europe/Berlin"}, "is in the past (it is now 2026-03-27 08:30"),
    ({"in_seconds": 60, "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"in_seconds": 60, "at": "09:00"}, "exactly one of in_seconds"),
    ({"repeat": {"every": "minutes", "interval_minutes": 0}}, "minimum"),  # caught by the schema
    ({"repeat": {"every": "day"}}, "needs at (HH:MM"),
    ({"at": "25:00"}, "is not HH:MM (24-hour clock)"),
    ({"at": "next friday"}, "is not YYYY-MM-DDTHH:MM or HH:MM"),
])
async def test_bad_times_go_back_to_the_model_as_errors(tmp_path, model, clock, arguments, error):
    runtime = await task_runtime(tmp_path, model, clock)
    result = await schedule(runtime, make_chat(runtime), text="x", **arguments)
    assert not result.success and error in result.error
    await shutdown(runtime)


async def test_the_time_zone_is_remembered_and_shown_to_the_model(tmp_path, model, clock):
    runtime = await task_runtime(tmp_path, model, clock)
    chat = make_chat(runtime)
    await chat.send("hi")
    assert "Local time for Sam: Friday 2026-03-27 07:30 (UTC); Sam has not said their time zone" in \
        model.prompts(ModelType.TEXT_LARGE)[0]
    assert (await call(runtime, chat, "SET_TIMEZONE", timezone="America/New_York")).success
    result = await schedule(runtime, chat, text="x", at="09:00")
    assert "Fri 2026-03-27 09:00 (America/New_York)" in result.text and "default" not in result.text
    await shutdown(runtime)
    runtime = await task_runtime(tmp_path, model, clock)  # remembered across restarts
    chat = make_chat(runtime)
    await chat.send("hi again")
    assert "Local time for Sam: Friday 2026-03-27 03:30 (America/New_York)\n" in model.prompts(ModelType.TEXT_LARGE)[-1]
    await shutdown(runtime)


async def test_only_setting_or_scheduling_with_a_zone_remembers_it(tmp_path, model, clock):
    """A zone given to LIST_TASKS, or to a schedule that fails, changes nothing and raises nothing."""
    runtime = await task_runtime(tmp_path, model, clock)
    chat = make_chat(runtime)
    tasks = service(runtime)
    listed = await call(runtime, chat, "LIST_TASKS", timezone="Mars/Olympus")
    assert listed.success and await tasks.user_zone(chat.user.id) is None
    failed = await schedule(runtime, chat, text="x", at="2020-01-01T09:00", timezone="Asia/Tokyo")
    assert not failed.success and await tasks.user_zone(chat.user.id) is None
    assert (await schedule(runtime, chat, text="x", at="09:00", timezone="Asia/Tokyo")).success
    assert await tasks.user_zone(chat.user.id) == "Asia/Tokyo"
    await shutdown(runtime)


async def test_a_failed_send_is_retried_then_given_up_with_one_line_each(tmp_path, model, clock, caplog):
    runtime = await task_runtime(tmp_path, model, clock)
    tasks = service(runtime)
    assert (await schedule(runtime, make_chat(runtime), text="flaky", in_seconds=10)).success
    RoomConnector.failures = 1
    with caplog.at_level(logging.WARNING, logger="plugins.tasks.service"):
        clock.advance(10)
        await tasks.settled()
        assert RoomConnector.delivered == [] and len(await tasks.tasks()) == 1
        clock.advance(60)  # the first retry comes a minute later and gets through
        await tasks.settled()
    assert [text for _, text, _ in RoomConnector.delivered] == ["Reminder for Sam: flaky"]
    assert [r.getMessage() for r in caplog.records if "could not be sent" in r.getMessage()][0].endswith(
        "(ConnectionError: platform said no); retry 1 of 2 in 1 min")
    assert (await schedule(runtime, make_chat(runtime), text="doomed", in_seconds=10)).success
    RoomConnector.failures = 3
    for seconds in (10, 60, 120):
        clock.advance(seconds)
        await tasks.settled()
    assert len(RoomConnector.delivered) == 1 and await tasks.tasks() == []
    assert "giving up" in caplog.records[-1].getMessage()
    await shutdown(runtime)


async def test_a_due_task_waits_for_its_connector(tmp_path, model, clock):
    runtime = await task_runtime(tmp_path, model, clock)
    assert (await schedule(runtime, make_chat(runtime), text="later", in_seconds=10)).success
    await shutdown(runtime)
    clock.advance(20)
    runtime = await task_runtime(tmp_path, model, clock, connector=False)  # its platform is not up
    tasks = service(runtime)
    await tasks.settled()
    [task] = await runtime.store.get_tasks(agent_id=runtime.agent_id, name=TASK_NAME)
    assert task.metadata["state"] == "scheduled"  # not claimed, so not lost
    await shutdown(runtime)


async def test_a_message_left_mid_send_by_a_stopped_process_is_reported_not_sent_twice(tmp_path, model, clock,
                                                                                        caplog):
    runtime = await task_runtime(tmp_path, model, clock)
    assert (await schedule(runtime, make_chat(runtime), text="maybe sent", in_seconds=10)).success
    [task] = await service(runtime).tasks()
    await shutdown(runtime)
    store = create_store(make_settings(tmp_path))  # as a process that claimed it and died would leave it
    claimed = {**task.metadata, "state": "sending", "claimed_at": START + 10}
    assert await store.claim_task(task.model_copy(update={"metadata": claimed, "updated_at": task.updated_at + 1}),
                                  task.updated_at)
    clock.advance(10 + STALE_SENDING_SECONDS + 1)
    with caplog.at_level(logging.WARNING, logger="plugins.tasks.service"):
        runtime = await task_runtime(tmp_path, model, clock, store=store)
        await service(runtime).settled()
    assert RoomConnector.delivered == [] and await service(runtime).tasks() == []
    assert "may not have been delivered" in caplog.records[-1].getMessage()
    await shutdown(runtime)

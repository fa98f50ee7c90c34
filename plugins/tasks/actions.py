"""The tools users reach scheduled messages through, and the LOCAL_TIME provider.

Everything here is scoped to the room the asker is in: a task fires where it was asked, and
listing or cancelling shows only that room's tasks, so a group never learns what someone
scheduled in their direct chat. Within the room a user sees their own tasks; admins of the room
(ADMIN and above) may list and cancel everyone's.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.permissions import Role
from bot.plugin import Action, ActionContext, ActionResult, ProviderResult, State
from bot.types import Memory, Task

from .schedule import DAYS, EVERY, Repeat, ScheduleError, local_text, parse_when, zone
from .service import TaskService

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

MAX_TEXT = 1000
MIN_ID_PREFIX = 4

_ZONE_PARAM = {"type": "string", "description": "the user's IANA time zone, e.g. Europe/Berlin, if they said it "
                                                "(remembered for them)"}
SCHEDULE_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT,
                 "description": "what to remind of or say, e.g. 'stretch'"},
        "in_seconds": {"type": "integer", "minimum": 1, "description": "send once, this many seconds from now"},
        "at": {"type": "string", "description": "send once at this local time: YYYY-MM-DDTHH:MM, or HH:MM for "
                                                "its next occurrence"},
        "repeat": {
            "type": "object",
            "description": "send repeatedly, e.g. {\"every\": \"weekday\", \"at\": \"09:00\"}",
            "properties": {
                "every": {"enum": list(EVERY)},
                "at": {"type": "string", "description": "HH:MM local time (for hour: :MM past the hour)"},
                "days": {"type": "array", "items": {"enum": list(DAYS)}, "description": "for every week"},
                "interval_minutes": {"type": "integer", "minimum": 1, "description": "for every minutes"},
            },
            "required": ["every"],
        },
        "timezone": _ZONE_PARAM,
    },
    "required": ["text"],
}


def _service(ctx: ActionContext | AgentRuntime) -> TaskService:
    runtime = ctx.runtime if isinstance(ctx, ActionContext) else ctx
    service = runtime.get_service(TaskService)
    if service is None:
        raise RuntimeError("the task service is not running")
    return service


async def _zone_name(ctx: ActionContext) -> tuple[str, bool]:
    """The zone to read this call's times in (a `timezone` argument, checked, else the user's own
    or the default) and whether the user gave it. Remembering it is the caller's decision."""
    if given := ctx.parameters.get("timezone"):
        return zone(str(given)).key, True
    return await _service(ctx).zone_for(ctx.message.entity_id)


async def schedule_handler(ctx: ActionContext) -> ActionResult:
    runtime, message, params = ctx.runtime, ctx.message, ctx.parameters
    service = _service(ctx)
    text = str(params["text"]).strip()
    try:
        tz_name, given = await _zone_name(ctx)
        tz = zone(tz_name)
        when = parse_when(params, runtime.clock(), tz)
    except ScheduleError as error:
        return ActionResult(success=False, error=str(error))
    tasks = await service.tasks()
    own = sum(1 for t in tasks if t.entity_id == message.entity_id)
    here = sum(1 for t in tasks if t.room_id == message.room_id)
    if own >= runtime.settings.tasks_per_user:
        return ActionResult(success=False, error=f"the user already has {own} scheduled messages, the most allowed; "
                                                 "they can cancel one first (LIST_TASKS shows them)")
    if here >= runtime.settings.tasks_per_room:
        return ActionResult(success=False, error=f"this chat already has {here} scheduled messages, the most allowed")
    task = await service.create(text=text, first=when.first, repeat=when.repeat, tz_name=tz_name,
                                room_id=message.room_id, world_id=message.world_id, entity_id=message.entity_id)
    if params.get("timezone"):  # scheduled with it: remember the user's zone for next time
        await service.set_user_zone(message.entity_id, tz_name)
    how = f", then {when.repeat.describe()}" if when.repeat else ""
    note = "" if given or "in_seconds" in params else (
        f" Times were read in {tz_name}, the default: the user has not said their time zone; ask if it differs.")
    return ActionResult(text=f"scheduled [{str(task.id)[:8]}] '{text}' for {local_text(when.first, tz)}{how}.{note}",
                        data={"task_id": str(task.id), "next_run": when.first})


async def _visible(ctx: ActionContext, everyone: bool) -> list[Task]:
    """The room's tasks the asker may see: their own, or everyone's for a room admin who asks."""
    tasks = [t for t in await _service(ctx).tasks() if t.room_id == ctx.message.room_id]
    if everyone and ctx.role >= Role.ADMIN:
        return tasks
    return [t for t in tasks if t.entity_id == ctx.message.entity_id]


def _describe(task: Task, tz_name: str, owner: str | None) -> str:
    meta = task.metadata
    repeat = f", {Repeat.from_dict(meta['repeat']).describe()} ({meta['timezone']})" if meta.get("repeat") else ""
    state = " (sending)" if meta.get("state") == "sending" else ""
    by = f" by {owner}" if owner else ""
    return f"- [{str(task.id)[:8]}] next {local_text(float(meta['next_run']), zone(tz_name))}{repeat}{by}{state}: " \
           f"{meta['text']}"


async def list_handler(ctx: ActionContext) -> ActionResult:
    tasks = await _visible(ctx, bool(ctx.parameters.get("everyone")))
    if not tasks:
        return ActionResult(text="no scheduled messages here", data={"tasks": []})
    tz_name, _ = await _service(ctx).zone_for(ctx.message.entity_id)
    others = {t.entity_id for t in tasks if t.entity_id and t.entity_id != ctx.message.entity_id}
    names = await ctx.runtime.entity_names(others) if others else {}
    tasks.sort(key=lambda t: float(t.metadata["next_run"]))
    lines = [_describe(t, tz_name, names.get(t.entity_id, "someone") if t.entity_id in others else None)
             for t in tasks]
    return ActionResult(text="\n".join(lines), data={"tasks": [str(t.id) for t in tasks]})


async def cancel_handler(ctx: ActionContext) -> ActionResult:
    wanted = str(ctx.parameters["id"]).strip().strip("[]").lower()
    if len(wanted) < MIN_ID_PREFIX:
        return ActionResult(success=False, error=f"give at least {MIN_ID_PREFIX} characters of the id")
    matches = [t for t in await _visible(ctx, True) if str(t.id).startswith(wanted)]
    if not matches:
        return ActionResult(success=False, error=f"no scheduled message here that the user may cancel has id {wanted}; "
                                                 "LIST_TASKS shows the ids")
    if len(matches) > 1:
        return ActionResult(success=False, error=f"{len(matches)} scheduled messages start with {wanted}; "
                                                 "give more of the id")
    [task] = matches
    await ctx.runtime.store.delete_task(task.id)
    return ActionResult(text=f"cancelled [{str(task.id)[:8]}]: {task.metadata['text']}", data={"task_id": str(task.id)})


async def set_timezone_handler(ctx: ActionContext) -> ActionResult:
    try:
        name, _ = await _zone_name(ctx)
    except ScheduleError as error:
        return ActionResult(success=False, error=str(error))
    await _service(ctx).set_user_zone(ctx.message.entity_id, name)
    return ActionResult(text=f"time zone set to {name}; it is now {local_text(ctx.runtime.clock(), zone(name))}")


async def local_time_provider(runtime: AgentRuntime, message: Memory, state: State) -> ProviderResult:
    """The current time in the asker's zone, so the model can fill "at 9:00" correctly."""
    service = runtime.get_service(TaskService)
    tz_name, given = await service.zone_for(message.entity_id) if service else (runtime.settings.timezone, False)
    tz = zone(tz_name)
    now = datetime.fromtimestamp(runtime.clock(), tz)
    names = await runtime.entity_names({message.entity_id})
    who = names.get(message.entity_id, "the user")
    text = f"Local time for {who}: {now:%A %Y-%m-%d %H:%M} ({tz.key})"
    if not given:
        text += (f"; {who} has not said their time zone, this is the default. Before scheduling at a clock time, "
                 "ask for it unless it is clear.")
    return ProviderResult(text=text, values={"localTime": now.isoformat(), "timezone": tz.key})


def _id_schema(description: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"id": {"type": "string", "minLength": 1, "description": description}},
            "required": ["id"]}


ACTIONS = [
    Action("SCHEDULE_MESSAGE", "Remind the user or send a message in this chat later, once or repeating. Fill "
           "text and exactly one of in_seconds, at (local YYYY-MM-DDTHH:MM or HH:MM) or repeat "
           '({"every": "minutes"|"hour"|"day"|"weekday"|"week", "at": "HH:MM", "days": ["mon", ...], '
           '"interval_minutes": n}); add timezone if the user said theirs.',
           schedule_handler, similes=["REMIND_ME", "SET_REMINDER", "SCHEDULE_TASK"], role=Role.MEMBER,
           parameters=SCHEDULE_PARAMETERS),
    Action("LIST_TASKS", "List the user's scheduled messages in this chat with their ids and next times "
           "(everyone=true: all of the chat's, for chat admins).", list_handler,
           similes=["LIST_REMINDERS"], role=Role.MEMBER,
           parameters={"type": "object", "properties": {"everyone": {"type": "boolean"}}}),
    Action("CANCEL_TASK", "Cancel one of the user's scheduled messages by its id (the first characters suffice).",
           cancel_handler, similes=["CANCEL_REMINDER", "DELETE_TASK"], role=Role.MEMBER,
           parameters=_id_schema("the id shown by LIST_TASKS or SCHEDULE_MESSAGE")),
    Action("SET_TIMEZONE", "Remember the user's time zone for reminders and schedules.", set_timezone_handler,
           role=Role.MEMBER,
           parameters={"type": "object", "properties": {"timezone": _ZONE_PARAM}, "required": ["timezone"]}),
]

"""Scheduled messages (issue #11): reminders and repeating messages, durable in the `tasks` table.

Always loaded: it needs no configuration (TIMEZONE, TASK_GRACE_SECONDS, TASK_LATE_POLICY,
TASKS_PER_USER and TASKS_PER_ROOM have defaults).
"""

from __future__ import annotations

from bot.character import Character
from bot.plugin import Plugin, Priority, Provider
from bot.settings import Settings

from .actions import ACTIONS, local_time_provider
from .service import TaskService


def create_plugin(settings: Settings, character: Character) -> Plugin:
    return Plugin(
        name="tasks",
        description="reminders and scheduled messages",
        priority=Priority.FEATURE,
        actions=list(ACTIONS),
        providers=[Provider("LOCAL_TIME", local_time_provider, "the current time in the user's time zone",
                            position=11)],
        services=[TaskService],
    )

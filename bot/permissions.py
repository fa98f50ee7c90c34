"""Who may do what: the asker's role, and the least role each action needs.

Roles come from the platform, never from what a client sends: the connector that received the
message vouches for the sender (OWNER_IDS names owners by platform user id; Telegram chat
administrators and Discord members who manage the server or channel are admins; in a direct chat
the asker administers their own conversation). Web and API messages have no platform behind
them, so their senders are visitors.
"""

from __future__ import annotations

from enum import IntEnum


class Role(IntEnum):
    VISITOR = 0  # web chat and API sessions
    MEMBER = 1  # anyone on a platform chat with the bot
    ADMIN = 2  # administers the chat (or it is their DM)
    OWNER = 3  # runs the bot (OWNER_IDS, or the operator at the console)


# What a refused asker is told: short, and naming who may.
REFUSALS = {
    Role.MEMBER: "Sorry, I can only do that for members of this chat on its platform.",
    Role.ADMIN: "Sorry, only admins of this chat can ask me to do that.",
    Role.OWNER: "Sorry, only my owner can ask me to do that.",
}


def refusal(needed: Role) -> str:
    return REFUSALS.get(needed, "Sorry, I can't do that here.")

"""Dice for tabletop and party chats: a tool with parameters, and the README's plugin example.

Enable it in a character file with `"plugins": ["plugins.dice:plugin"]`.
"""

from __future__ import annotations

import secrets

from bot.plugin import Action, ActionContext, ActionResult, Plugin

MAX_DICE = 100
MAX_SIDES = 1000


async def roll_dice(ctx: ActionContext) -> ActionResult:
    """Roll with the system's random source: players can trust no one can predict the next roll."""
    sides, count = int(ctx.parameters.get("sides", 6)), int(ctx.parameters.get("count", 1))
    rolls = [secrets.randbelow(sides) + 1 for _ in range(count)]
    total = f" (total {sum(rolls)})" if count > 1 else ""
    return ActionResult(text=f"rolled {count}d{sides}: {', '.join(map(str, rolls))}{total}",
                        values={"rolls": rolls})


ROLL_DICE = Action(
    name="ROLL_DICE",
    description="Roll dice, e.g. one six-sided die or 3d20.",
    handler=roll_dice,
    similes=["ROLL_DIE", "DICE"],
    parameters={
        "type": "object",
        "properties": {
            "sides": {"type": "integer", "minimum": 2, "maximum": MAX_SIDES, "description": "sides per die"},
            "count": {"type": "integer", "minimum": 1, "maximum": MAX_DICE, "description": "how many dice"},
        },
    },
)

plugin = Plugin(name="dice", description="Roll dice", actions=[ROLL_DICE])

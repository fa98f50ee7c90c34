"""Built-in actions. REPLY delivers the text the model already wrote; others do one job each."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from bot.permissions import Role
from bot.plugin import Action, ActionContext, ActionResult, State
from bot.types import Button, Content, Memory, ModelType, RoomState

from .parsing import parse_json_object_or_none, parse_response
from .templates import render, template_for

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)


async def _generate_reply(runtime: AgentRuntime, message: Memory, state: State) -> str:
    """A fresh reply from TEXT_LARGE, for when the first answer asked for more context first."""
    prompt = render(template_for(runtime.character.templates, "replyTemplate"),
                    {**state.values, "providers": state.text, "agentName": runtime.character.name})
    output = await runtime.use_model_output(ModelType.TEXT_LARGE, {
        "prompt": prompt, "system": runtime.character.system, "room_id": message.room_id,
        "entity_id": message.entity_id,
    }, plain={"messages": [{"role": "user", "content": message.content.text}]})
    parsed = parse_response(output.value) if output.structured else None
    return parsed.text if parsed else str(output.value).strip()


async def reply_handler(ctx: ActionContext) -> ActionResult:
    response = ctx.response
    text = ctx.reply_text
    if response is None or response.content.providers or not text:
        text = await _generate_reply(ctx.runtime, ctx.message, ctx.state)
    if text:
        await ctx.send(Content(text=text, actions=["REPLY"], thought=response.content.thought if response else None))
    return ActionResult(text=text)


async def ignore_handler(ctx: ActionContext) -> ActionResult:
    return ActionResult(text="", values={"ignored": True})


async def _say(ctx: ActionContext, name: str) -> None:
    """Send the reply the model wrote with the action (XML path); with native tool calls the
    model writes its reply after reading the result instead."""
    if ctx.reply_text:
        await ctx.send(Content(text=ctx.reply_text, actions=[name]))


def _state_action(name: str, state: RoomState | None, description: str, similes: list[str],
                  valid_from: set[RoomState | None]) -> Action:
    async def validate(runtime: AgentRuntime, message: Memory, _: State | None) -> bool:
        return await runtime.get_room_state(message.room_id) in valid_from

    async def handler(ctx: ActionContext) -> ActionResult:
        await ctx.runtime.set_room_state(ctx.message.room_id, state)
        await _say(ctx, name)
        return ActionResult(text=f"done: {description[0].lower()}{description[1:]}", values={"room_state": state})

    return Action(name, description, handler, validate, similes, role=Role.ADMIN)  # a DM's asker is its admin


async def _extract(runtime: AgentRuntime, message: Memory, state: State, instruction: str, shape: str) -> dict:
    prompt = render(template_for(runtime.character.templates, "extractTemplate"), {
        "recentMessages": state.values.get("recentMessages", message.content.text),
        "instruction": instruction, "shape": shape,
    })
    model = ModelType.OBJECT_SMALL if runtime.has_model(ModelType.OBJECT_SMALL) else ModelType.TEXT_SMALL
    raw = await runtime.use_model(model, {"prompt": prompt, "room_id": message.room_id,
                                          "entity_id": message.entity_id})
    return parse_json_object_or_none(raw) or {}


async def _other_rooms_exist(runtime: AgentRuntime, message: Memory, state: State | None) -> bool:
    return len(runtime.known_room_ids()) > 1


async def send_message_handler(ctx: ActionContext) -> ActionResult:
    runtime, message = ctx.runtime, ctx.message
    rooms = {r.name or str(r.channel_id): r for r in await runtime.store.get_rooms(runtime.agent_id)
             if r.id != message.room_id}
    found = dict(ctx.parameters)
    if not found.get("room") or not found.get("text"):  # named without arguments (XML): ask for them
        found = await _extract(
            runtime, message, ctx.state,
            f"Which room should the message go to, and what exactly should it say? Rooms: {', '.join(rooms)}.",
            '{"room": "room name", "text": "message to send"}',
        )
    room = rooms.get(str(found.get("room", "")))
    text = str(found.get("text", "")).strip()
    if room is None or not text:
        return ActionResult(success=False, error=f"could not tell which room or what to send; rooms: {', '.join(rooms)}")
    await runtime.send_message_to_room(room.id, Content(text=text, source=room.source, actions=["SEND_MESSAGE"]))
    await _say(ctx, "SEND_MESSAGE")
    return ActionResult(text=f"sent to {found['room']}: {text}", data={"room_id": str(room.id)})


async def update_entity_handler(ctx: ActionContext) -> ActionResult:
    runtime, message, state = ctx.runtime, ctx.message, ctx.state
    found = await _extract(
        runtime, message, state,
        "What does the last speaker say about themself (name they want to be called, pronouns, "
        "location, job, preferences)? Only include what they stated.",
        '{"name": "preferred name or empty", "profile": {"key": "value"}}',
    )
    entity = await runtime.store.get_entity(message.entity_id)
    if entity is None:
        return ActionResult(success=False, error="unknown speaker")
    profile = {str(k): str(v) for k, v in (found.get("profile") or {}).items() if v}
    name = str(found.get("name") or "").strip()
    metadata = {**entity.metadata, "profile": {**entity.metadata.get("profile", {}), **profile}}
    if name:
        metadata["preferred_name"] = name
    merged = entity.model_copy(update={"names": [*entity.names, name] if name else entity.names,
                                       "metadata": metadata})
    await runtime.store.upsert_entity(merged)
    runtime.remember_entity(merged)
    await _say(ctx, "UPDATE_ENTITY")
    return ActionResult(text=f"remembered: {name or ''} {profile}".strip(), values={"profile": profile, "name": name})


async def _can_make_images(runtime: AgentRuntime, message: Memory, state: State | None) -> bool:
    return runtime.has_model(ModelType.IMAGE)


async def generate_image_handler(ctx: ActionContext) -> ActionResult:
    message = ctx.message
    prompt = str(ctx.parameters.get("prompt") or "").strip() or message.content.text
    images = await ctx.runtime.use_model(ModelType.IMAGE, {"prompt": prompt, "room_id": message.room_id,
                                                           "entity_id": message.entity_id})
    for index, image in enumerate(images):
        image.id = image.id or str(uuid.uuid4())
        image.title = image.title or f"image-{index + 1}"
    await ctx.send(Content(text=ctx.reply_text, attachments=list(images), actions=["GENERATE_IMAGE"]))
    return ActionResult(text=f"sent {len(images)} image(s) to the chat", data={"images": len(images)})


async def choose_option_handler(ctx: ActionContext) -> ActionResult:
    """Send the reply with one button per option the model offered (connectors render them)."""
    response = ctx.response
    offered = ctx.parameters.get("options") or (response.content.metadata.get("options", []) if response else [])
    choices = [str(c) for c in offered]
    buttons = [[Button(label=c[:80], value=c)] for c in choices[:10]]
    text = str(ctx.parameters.get("text") or "") or ctx.reply_text
    if text or buttons:
        await ctx.send(Content(text=text or "Choose one:", buttons=buttons, actions=["CHOOSE_OPTION"]))
    return ActionResult(text="the options were sent as buttons; the user's choice will come as their next message",
                        values={"options": choices})


def _object(required: tuple[str, ...] | None = None, **fields: tuple[str, str]) -> dict[str, Any]:
    """A JSON schema object of described fields (all required unless `required` says otherwise)."""
    properties: dict[str, Any] = {name: {"type": kind, "description": text} for name, (kind, text) in fields.items()}
    for spec in properties.values():
        if spec["type"] == "array":
            spec["items"] = {"type": "string"}
    return {"type": "object", "properties": properties,
            "required": list(fields) if required is None else list(required)}


ACTIONS = [
    Action("REPLY", "Answer the message.", reply_handler, similes=["RESPOND", "GREET", "REPLY_MESSAGE", "ANSWER"]),
    Action("IGNORE", "Say nothing: the message needs no answer or the conversation is over.", ignore_handler,
           similes=["STOP_TALKING", "NO_RESPONSE"]),
    Action("NONE", "Answer without any extra action.", reply_handler, similes=["NO_ACTION"]),
    _state_action("MUTE_ROOM", RoomState.MUTED, "Stop answering in this room unless named.",
                  ["MUTE", "SHUT_UP"], {None, RoomState.FOLLOWED}),
    _state_action("UNMUTE_ROOM", None, "Resume answering in this room.", ["UNMUTE"], {RoomState.MUTED}),
    _state_action("FOLLOW_ROOM", RoomState.FOLLOWED, "Take part in this room more actively.",
                  ["FOLLOW", "JOIN_CONVERSATION"], {None, RoomState.MUTED}),
    _state_action("UNFOLLOW_ROOM", None, "Go back to answering only when addressed.", ["UNFOLLOW"],
                  {RoomState.FOLLOWED}),
    Action("SEND_MESSAGE", "Send a message to another room you know.", send_message_handler,
           _other_rooms_exist, ["MESSAGE_ROOM", "SEND_TO_ROOM"], role=Role.OWNER,
           parameters=_object(room=("string", "the room's name"), text=("string", "the message to send"),
                              required=())),  # named bare in XML, it works them out from the conversation
    Action("UPDATE_ENTITY", "Remember what the speaker tells you about themself.", update_entity_handler,
           similes=["REMEMBER_USER", "UPDATE_PROFILE"]),
    Action("GENERATE_IMAGE", "Create an image from a description and send it to the chat.", generate_image_handler,
           _can_make_images, ["DRAW", "CREATE_IMAGE", "IMAGE"], role=Role.MEMBER,  # paid per image: not for visitors
           parameters=_object(prompt=("string", "what the image should show"), required=()), timeout=180),
    Action("CHOOSE_OPTION", "Offer choices as buttons (in XML, list them in <options>a|b|c</options>).",
           choose_option_handler, similes=["OFFER_OPTIONS", "BUTTONS"],
           parameters=_object(text=("string", "the question"),
                              options=("array", "the choices, 2 to 10 short labels"), required=())),
]

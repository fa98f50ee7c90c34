"""Built-in actions. REPLY delivers the text the model already wrote; others do one job each."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from bot.permissions import Role
from bot.plugin import Action, ActionResult, HandlerCallback, State
from bot.types import Button, Content, Memory, ModelType, RoomState

from .parsing import parse_json_object_or_none, parse_response
from .templates import render, template_for

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime

log = logging.getLogger(__name__)


def _response_of(options: dict[str, Any]) -> Memory | None:
    return options.get("response")


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


async def reply_handler(runtime, message, state, options, callback, responses) -> ActionResult:
    response = _response_of(options)
    text = response.content.text if response else ""
    if response is None or response.content.providers or not text:
        text = await _generate_reply(runtime, message, state)
    if callback and text:
        await callback(Content(text=text, actions=["REPLY"], thought=response.content.thought if response else None))
    return ActionResult(text=text)


async def ignore_handler(runtime, message, state, options, callback, responses) -> ActionResult:
    return ActionResult(text="", values={"ignored": True})


def _state_action(name: str, state: RoomState | None, description: str, similes: list[str],
                  valid_from: set[RoomState | None]) -> Action:
    async def validate(runtime: AgentRuntime, message: Memory, _: State | None) -> bool:
        return await runtime.get_room_state(message.room_id) in valid_from

    async def handler(runtime, message, st, options, callback: HandlerCallback | None, responses):
        await runtime.set_room_state(message.room_id, state)
        response = _response_of(options)
        if callback and response and response.content.text:
            await callback(Content(text=response.content.text, actions=[name]))
        return ActionResult(values={"room_state": state})

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


async def send_message_handler(runtime, message, state, options, callback, responses) -> ActionResult:
    rooms = {r.name or str(r.channel_id): r for r in await runtime.store.get_rooms(runtime.agent_id)
             if r.id != message.room_id}
    found = await _extract(
        runtime, message, state,
        f"Which room should the message go to, and what exactly should it say? Rooms: {', '.join(rooms)}.",
        '{"room": "room name", "text": "message to send"}',
    )
    room = rooms.get(str(found.get("room", "")))
    text = str(found.get("text", "")).strip()
    if room is None or not text:
        return ActionResult(success=False, error="could not tell which room or what to send")
    await runtime.send_message_to_room(room.id, Content(text=text, source=room.source, actions=["SEND_MESSAGE"]))
    response = _response_of(options)
    if callback and response and response.content.text:
        await callback(Content(text=response.content.text, actions=["SEND_MESSAGE"]))
    return ActionResult(text=text, data={"room_id": str(room.id)})


async def update_entity_handler(runtime, message, state, options, callback, responses) -> ActionResult:
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
    response = _response_of(options)
    if callback and response and response.content.text:
        await callback(Content(text=response.content.text, actions=["UPDATE_ENTITY"]))
    return ActionResult(values={"profile": profile, "name": name})


async def _can_make_images(runtime: AgentRuntime, message: Memory, state: State | None) -> bool:
    return runtime.has_model(ModelType.IMAGE)


async def generate_image_handler(runtime, message, state, options, callback, responses) -> ActionResult:
    response = _response_of(options)
    prompt = (response.content.thought if response and response.content.thought else "") or message.content.text
    images = await runtime.use_model(ModelType.IMAGE, {"prompt": message.content.text or prompt,
                                                       "room_id": message.room_id, "entity_id": message.entity_id})
    for index, image in enumerate(images):
        image.id = image.id or str(uuid.uuid4())
        image.title = image.title or f"image-{index + 1}"
    if callback:
        text = response.content.text if response else ""
        await callback(Content(text=text, attachments=list(images), actions=["GENERATE_IMAGE"]))
    return ActionResult(data={"images": len(images)})


async def choose_option_handler(runtime, message, state, options, callback, responses) -> ActionResult:
    """Send the reply with one button per option the model offered (connectors render them)."""
    response = _response_of(options)
    choices = [str(c) for c in response.content.metadata.get("options", [])] if response else []
    buttons = [[Button(label=c[:80], value=c)] for c in choices[:10]]
    text = response.content.text if response else ""
    if callback and (text or buttons):
        await callback(Content(text=text or "Choose one:", buttons=buttons, actions=["CHOOSE_OPTION"]))
    return ActionResult(values={"options": choices})


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
           _other_rooms_exist, ["MESSAGE_ROOM", "SEND_TO_ROOM"], role=Role.OWNER),
    Action("UPDATE_ENTITY", "Remember what the speaker tells you about themself.", update_entity_handler,
           similes=["REMEMBER_USER", "UPDATE_PROFILE"]),
    Action("GENERATE_IMAGE", "Create an image from a description.", generate_image_handler, _can_make_images,
           ["DRAW", "CREATE_IMAGE", "IMAGE"], role=Role.MEMBER),  # paid per image: not for anonymous visitors
    Action("CHOOSE_OPTION", "Offer choices as buttons; list them in <options>a|b|c</options>.",
           choose_option_handler, similes=["OFFER_OPTIONS", "BUTTONS"]),
]

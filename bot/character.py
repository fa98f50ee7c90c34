"""Character files: the elizaOS 1.x schema, plus the legacy 0.x shape most public characters use.

elizaOS 1.x rejects 0.x files outright. We load them instead: fields with a meaning are mapped
(`user` → `name` in examples, `{{user1}}` → `{{name1}}`, `modelProvider` → a provider preference),
everything else is kept in `extras`, and each legacy field is reported once so the author can
modernise the file at leisure. Example messages in shapes we cannot read (no `content.text`) are
skipped with one notice instead of rendering as empty examples.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.ids import string_to_uuid


class ExampleMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    content: dict[str, Any]

    @field_validator("content")
    @classmethod
    def _has_text(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("text", ""), str):
            raise ValueError("content.text must be a string")
        return value


class Style(BaseModel):
    model_config = ConfigDict(extra="allow")
    all: list[str] = Field(default_factory=list)
    chat: list[str] = Field(default_factory=list)
    post: list[str] = Field(default_factory=list)

    @field_validator("all", "chat", "post", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class KnowledgeRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str | None = None
    directory: str | None = None
    shared: bool = False


class Character(BaseModel):
    """A character as elizaOS 1.x defines it; `extras` keeps legacy or unknown top-level keys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str | None = None
    name: str = Field(min_length=1)
    username: str | None = None
    system: str | None = None
    bio: str | list[str]
    lore: list[str] = Field(default_factory=list)
    message_examples: list[list[ExampleMessage]] = Field(default_factory=list, alias="messageExamples")
    post_examples: list[str] = Field(default_factory=list, alias="postExamples")
    topics: list[str] = Field(default_factory=list)
    adjectives: list[str] = Field(default_factory=list)
    knowledge: list[str | KnowledgeRef] = Field(default_factory=list)
    plugins: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, Any] = Field(default_factory=dict)
    style: Style = Field(default_factory=Style)
    templates: dict[str, str] = Field(default_factory=dict)
    model_provider: str | None = Field(default=None, alias="modelProvider")
    extras: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("bio")
    @classmethod
    def _bio_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if not (value.strip() if isinstance(value, str) else [b for b in value if b.strip()]):
            raise ValueError("must not be empty")
        return value

    @field_validator("lore", "topics", "adjectives", "post_examples", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def agent_id(self):
        """elizaOS derives an agent's id from its name when the file gives none."""
        return string_to_uuid(self.id or self.name)

    @property
    def bio_lines(self) -> list[str]:
        return [self.bio] if isinstance(self.bio, str) else list(self.bio)

    def public_dict(self) -> dict[str, Any]:
        """The character without secrets or settings (which may hold keys): safe for APIs and the DB."""
        return self.model_dump(by_alias=True, exclude={"secrets", "settings", "extras"}, exclude_none=True)


class CharacterError(Exception):
    """A character file that cannot be used, described in one line: file, field path, problem."""


@dataclass
class LoadedCharacter:
    character: Character
    path: Path
    legacy: dict[str, tuple[str, str]] = field(default_factory=dict)  # 0.x field → (mapped to, explanation)
    notices: list[str] = field(default_factory=list)  # other things the author should fix

    @property
    def warnings(self) -> list[str]:
        """One line per legacy field and per notice, as start-up logs them."""
        return [f"legacy field '{name}': {why}" for name, (_, why) in self.legacy.items()] + self.notices

    def legacy_summary(self) -> str:
        """The legacy fields on one line, e.g. `lore -> prompt, clients -> unused`."""
        return ", ".join(f"{name} -> {target}" for name, (target, _) in self.legacy.items())


_LEGACY_PLACEHOLDER = re.compile(r"\{\{user(\d+)\}\}")
# Legacy 0.x fields: (what parley maps them to, the longer explanation logged at start-up).
_KNOWN_LEGACY: dict[str, tuple[str, str]] = {
    "clients": ("unused", "connectors start from the tokens set in the environment"),
    "modelProvider": ("provider preference",
                      "used as the preferred model provider when MODEL_PROVIDERS is not set"),
    "people": ("unused", "kept, not used"),
    "twitterSpaces": ("unused", "kept, not used"),
    "examples": ("unused", "kept, not used"),
}
_UNKNOWN_FIELD = ("unused", "not part of the elizaOS 1.x schema; kept, not used")
_SHOWN_PATHS = 3  # skipped example paths named in the notice before "and N more"


def _field_path(loc: tuple[Any, ...], data: Any) -> str:
    """The JSON path of an error; union type tags pydantic adds (`str`, `list[str]`) are skipped."""
    out, node = "", data
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            out, node = out + f"[{part}]", node[part]
        elif isinstance(node, dict) and part in node:
            out, node = (out + f".{part}" if out else str(part)), node[part]
        elif isinstance(node, dict) and not out and isinstance(part, str):
            out = part  # a missing top-level field
    return out or "(top level)"


def _replace_placeholders(value: Any) -> Any:
    if isinstance(value, str):
        return _LEGACY_PLACEHOLDER.sub(r"{{name\1}}", value)
    if isinstance(value, list):
        return [_replace_placeholders(v) for v in value]
    if isinstance(value, dict):
        return {k: _replace_placeholders(v) for k, v in value.items()}
    return value


def _modernise(data: dict[str, Any], legacy: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Map legacy 0.x shapes onto the 1.x schema, recording each legacy field once in `legacy`."""
    known = set(Character.model_fields) | {f.alias for f in Character.model_fields.values() if f.alias}
    known.discard("extras")
    out: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for key, value in data.items():
        if key in known:
            out[key] = value
        else:
            extras[key] = value
        if key in _KNOWN_LEGACY or key not in known:
            legacy[key] = _KNOWN_LEGACY.get(key, _UNKNOWN_FIELD)
    examples = out.get("messageExamples")
    if isinstance(examples, list):
        renamed = False
        for conversation in examples:
            for message in conversation if isinstance(conversation, list) else []:
                if isinstance(message, dict) and "name" not in message and "user" in message:
                    message["name"] = message.pop("user")
                    renamed = True
        if renamed:
            legacy["messageExamples[].user"] = ("name", "mapped to 'name'")
    before = json.dumps(out)
    out = _replace_placeholders(out)
    if json.dumps(out) != before:
        legacy["{{userN}}"] = ("{{nameN}}", "placeholders mapped to '{{nameN}}'")
    if extras:
        out["extras"] = extras
    return out


def _describe_errors(error: ValidationError, data: dict[str, Any]) -> str:
    """Every problem on one line. A union field reports one error per alternative (`bio` as a string,
    `bio[1]` as a list): the most specific path stands for the field."""
    problems: dict[str, str] = {}
    for item in error.errors():
        problems.setdefault(_field_path(item["loc"], data), item["msg"])
    paths = [p for p in problems if not any(o.startswith((p + ".", p + "[")) for o in problems)]
    if len(paths) == 1:
        return f"{paths[0]}: {problems[paths[0]]}"
    return f"{len(paths)} problems: " + "; ".join(f"{p}: {problems[p]}" for p in paths)


def _drop_textless_examples(character: Character) -> str | None:
    """Example messages without `content.text` (shapes from other tools) would render as nothing in
    the prompt: drop them, and return a notice naming where they were."""
    skipped = [f"messageExamples[{i}][{j}]" for i, conversation in enumerate(character.message_examples)
               for j, message in enumerate(conversation) if "text" not in message.content]
    if not skipped:
        return None
    character.message_examples = [
        kept for conversation in character.message_examples
        if (kept := [message for message in conversation if "text" in message.content])
    ]
    shown = ", ".join(skipped[:_SHOWN_PATHS])
    more = f" and {len(skipped) - _SHOWN_PATHS} more" if len(skipped) > _SHOWN_PATHS else ""
    return (f"{shown}{more}: example message without content.text (unknown shape); skipped. "
            'Fix: write each as {"name": ..., "content": {"text": ...}}')


def parse_character(data: Any, source: str = "<character>") -> LoadedCharacter:
    if not isinstance(data, dict):
        raise CharacterError(f"{source}: (top level): expected a JSON object, got {type(data).__name__}")
    legacy: dict[str, tuple[str, str]] = {}
    modern = _modernise(dict(data), legacy)
    try:
        character = Character.model_validate(modern)
    except ValidationError as error:
        raise CharacterError(f"{source}: {_describe_errors(error, modern)}") from None
    notice = _drop_textless_examples(character)
    return LoadedCharacter(character=character, path=Path(source), legacy=legacy, notices=[notice] if notice else [])


def _describe_json_error(text: str, error: json.JSONDecodeError) -> str:
    """json reports a trailing comma at the `}` or `]` after it; point at the comma, which is what to delete."""
    comma = len(text[: error.pos].rstrip()) - 1
    closer = text[error.pos : error.pos + 1]
    if comma >= 0 and text[comma] == "," and closer in ("}", "]"):
        line, column = text.count("\n", 0, comma) + 1, comma - text.rfind("\n", 0, comma)
        return f"line {line} column {column}: invalid JSON: trailing comma. Fix: delete it"
    return f"line {error.lineno} column {error.colno}: invalid JSON: {error.msg}"


def load_character(path: str | Path) -> LoadedCharacter:
    """Read and validate a character file; raise CharacterError with a one-line description."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CharacterError(
            f"{path}: file not found. Fix: pass --character PATH or set CHARACTER_PATH"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise CharacterError(f"{path}: cannot read: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CharacterError(f"{path}: {_describe_json_error(text, error)}") from None
    loaded = parse_character(data, str(path))
    loaded.path = path
    return loaded

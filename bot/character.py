"""Character files: the elizaOS 1.x schema, plus the legacy 0.x shape most public characters use.

elizaOS 1.x rejects 0.x files outright. We load them instead: fields with a meaning are mapped
(`user` → `name` in examples, `{{user1}}` → `{{name1}}`, `modelProvider` → a provider preference),
everything else is kept in `extras`, and each legacy field is reported once so the author can
modernise the file at leisure.
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
    warnings: list[str] = field(default_factory=list)


_LEGACY_PLACEHOLDER = re.compile(r"\{\{user(\d+)\}\}")
_KNOWN_LEGACY = {
    "clients": "connectors start from the tokens set in the environment",
    "modelProvider": "used as the preferred model provider when MODEL_PROVIDERS is not set",
    "people": "kept, not used",
    "twitterSpaces": "kept, not used",
    "examples": "kept, not used",
}


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


def _modernise(data: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """Map legacy 0.x shapes onto the 1.x schema, one warning per legacy field."""
    known = set(Character.model_fields) | {f.alias for f in Character.model_fields.values() if f.alias}
    known.discard("extras")
    out: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for key, value in data.items():
        if key in known:
            out[key] = value
        else:
            extras[key] = value
            reason = _KNOWN_LEGACY.get(key, "not part of the elizaOS 1.x schema; kept, not used")
            warnings.append(f"legacy field '{key}': {reason}")
    if "modelProvider" in data:
        warnings.append("legacy field 'modelProvider': " + _KNOWN_LEGACY["modelProvider"])
    examples = out.get("messageExamples")
    if isinstance(examples, list):
        renamed = False
        for conversation in examples:
            for message in conversation if isinstance(conversation, list) else []:
                if isinstance(message, dict) and "name" not in message and "user" in message:
                    message["name"] = message.pop("user")
                    renamed = True
        if renamed:
            warnings.append("legacy field 'messageExamples[].user': mapped to 'name'")
    before = json.dumps(out)
    out = _replace_placeholders(out)
    if json.dumps(out) != before:
        warnings.append("legacy placeholders '{{userN}}': mapped to '{{nameN}}'")
    if extras:
        out["extras"] = extras
    return out


def parse_character(data: Any, source: str = "<character>") -> LoadedCharacter:
    if not isinstance(data, dict):
        raise CharacterError(f"{source}: (top level): expected a JSON object, got {type(data).__name__}")
    warnings: list[str] = []
    modern = _modernise(dict(data), warnings)
    try:
        character = Character.model_validate(modern)
    except ValidationError as error:
        first = max(error.errors(), key=lambda e: len(e["loc"]))
        raise CharacterError(f"{source}: {_field_path(first['loc'], modern)}: {first['msg']}") from None
    return LoadedCharacter(character=character, path=Path(source), warnings=list(dict.fromkeys(warnings)))


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
        raise CharacterError(f"{path}: line {error.lineno} column {error.colno}: invalid JSON: {error.msg}") from None
    loaded = parse_character(data, str(path))
    loaded.path = path
    return loaded

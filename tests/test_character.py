"""Character files: the 1.x schema, legacy 0.x files, clear errors, and elizaOS-compatible ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bot.character import CharacterError, load_character, parse_character
from bot.ids import create_unique_uuid, string_to_uuid

ROOT = Path(__file__).parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "characters"
# One placeholder case when ../shared is missing, so the corpus test still runs and skips (or fails in CI).
FIXTURE_NAMES = sorted(p.name for p in FIXTURES.glob("*.json")) or ["(corpus missing)"]


def require_corpus(directory: Path) -> Path:
    """The external character corpus: skip with the reason when it is missing, fail when
    PARLEY_REQUIRE_SHARED=1 (CI) says it must be there."""
    if len(list(directory.glob("*.json"))) >= 20:
        return directory
    problem = f"the shared character corpus is missing: expected 20+ *.json files in {directory}"
    if os.environ.get("PARLEY_REQUIRE_SHARED") == "1":
        pytest.fail(f"{problem} (PARLEY_REQUIRE_SHARED=1 makes it required)", pytrace=False)
    pytest.skip(f"{problem}; put the ../shared checkout beside the project to run these tests")


@pytest.fixture
def corpus() -> Path:
    return require_corpus(FIXTURES)


def test_missing_corpus_skips_or_fails_as_the_environment_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PARLEY_REQUIRE_SHARED", raising=False)
    with pytest.raises(pytest.skip.Exception, match=str(tmp_path)):
        require_corpus(tmp_path)
    monkeypatch.setenv("PARLEY_REQUIRE_SHARED", "1")
    with pytest.raises(pytest.fail.Exception, match="PARLEY_REQUIRE_SHARED=1"):
        require_corpus(tmp_path)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_public_character_loads(corpus: Path, name: str):
    path = corpus / name
    loaded = load_character(path)
    raw = json.loads(path.read_text())
    assert loaded.character.name == raw["name"].strip()
    assert loaded.character.bio_lines
    assert len(loaded.warnings) == len(set(loaded.warnings))


def test_strict_v1_file_loads_without_warnings(corpus: Path):
    loaded = load_character(corpus / "shaw-v1.json")
    assert loaded.warnings == []
    assert loaded.character.message_examples[0][0].name == "{{name1}}"
    assert loaded.character.plugins[0] == "@elizaos/plugin-openai"


def test_legacy_file_is_mapped_and_warned_once_per_field(corpus: Path):
    loaded = load_character(corpus / "shaw-v0.json")
    c = loaded.character
    assert c.lore and c.model_provider
    assert "clients" in c.extras
    first = c.message_examples[0][0]
    assert first.name == "{{name1}}" and "user" not in first.model_dump()
    assert sum("messageExamples[].user" in w for w in loaded.warnings) == 1
    assert sum("{{userN}}" in w for w in loaded.warnings) == 1
    assert any("'clients'" in w for w in loaded.warnings)


def test_unknown_extra_keys_are_kept():
    loaded = parse_character({"name": "X", "bio": "b", "twitterSpaces": {"maxSpeakers": 2}})
    assert loaded.character.extras["twitterSpaces"] == {"maxSpeakers": 2}
    assert any("twitterSpaces" in w for w in loaded.warnings)


def test_default_character_ships_and_loads():
    loaded = load_character(ROOT / "characters" / "default.json")
    assert loaded.warnings == [] and loaded.character.name == "Parley"


@pytest.mark.parametrize(("content", "expected"), [
    ('{"name": "A", "bio": "x",}', "line 1 column 25: invalid JSON: trailing comma. Fix: delete it"),
    ('{\n  "name": "A",\n  "bio": ["x",\n  ],\n  "topics": []\n}', "line 3 column 14: invalid JSON: trailing comma"),
    ('{"name": "A",\n "bio": "x",\n\n}', "line 2 column 12: invalid JSON: trailing comma"),
    ('{"name": "A" "bio": "x"}', "line 1 column 14: invalid JSON: Expecting ',' delimiter"),
    ('{"bio": "x"}', "name: Field required"),
    ('{"name": "A"}', "bio: Field required"),
    ('{"name": "  ", "bio": "x"}', "name: Value error, must not be blank"),
    ('{"name": "A", "bio": ["ok", 3]}', "bio[1]: Input should be a valid string"),
    ('{"name": "A", "bio": "x", "messageExamples": [[{"name": "u", "content": {"text": 5}}]]}',
     "messageExamples[0][0].content"),
    ('{"name": "A", "bio": "x", "style": {"all": [1]}}', "style.all[0]"),
    ('[1, 2]', "expected a JSON object"),
])
def test_broken_files_name_file_field_and_problem(tmp_path: Path, content: str, expected: str):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(CharacterError) as info:
        load_character(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_every_problem_is_reported_on_one_line(tmp_path: Path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": " ", "bio": ["ok", 3], "style": {"all": [1]}, "topics": "t"}')
    with pytest.raises(CharacterError) as info:
        load_character(path)
    assert str(info.value) == (
        f"{path}: 3 problems: name: Value error, must not be blank; bio[1]: Input should be a valid string; "
        "style.all[0]: Input should be a valid string")


def test_a_union_field_is_one_problem_not_one_per_alternative():
    with pytest.raises(CharacterError) as info:
        parse_character({"name": "A", "bio": 5})
    assert str(info.value) == "<character>: bio: Input should be a valid string"


def test_example_messages_without_text_are_skipped_with_one_notice():
    unknown = {"user": "{{user1}}", "content": {"content": "hello"}}
    loaded = parse_character({"name": "A", "bio": "b", "messageExamples": [
        [unknown, {"user": "A", "content": {"text": "hi there"}}],
        [unknown],
        [{"name": "{{name1}}", "content": {"text": "", "actions": ["IGNORE"]}}],
    ]})
    examples = loaded.character.message_examples
    assert [[m.content for m in conversation] for conversation in examples] == [
        [{"text": "hi there"}], [{"text": "", "actions": ["IGNORE"]}]]
    [notice] = loaded.notices
    assert notice.startswith("messageExamples[0][0], messageExamples[1][0]: example message without content.text")
    assert notice in loaded.warnings


def test_only_unreadable_examples_leave_no_examples():
    loaded = parse_character({"name": "A", "bio": "b", "messageExamples": [[{"name": "u", "content": {"x": 1}}]]})
    assert loaded.character.message_examples == [] and len(loaded.notices) == 1


def test_legacy_fields_are_named_in_the_summary():
    loaded = parse_character({"name": "A", "bio": "b", "clients": ["discord"], "modelProvider": "openai",
                              "messageExamples": [[{"user": "{{user1}}", "content": {"text": "hi {{user1}}"}}]]})
    assert loaded.legacy_summary() == ("clients -> unused, modelProvider -> provider preference, "
                                       "messageExamples[].user -> name, {{userN}} -> {{nameN}}")
    assert len(loaded.warnings) == 4 and loaded.notices == []


def test_missing_file_says_how_to_fix(tmp_path: Path):
    with pytest.raises(CharacterError, match="--character PATH or set CHARACTER_PATH"):
        load_character(tmp_path / "nope.json")


def test_public_dict_hides_secrets_and_settings():
    c = parse_character({"name": "A", "bio": "b", "secrets": {"K": "v"}, "settings": {"API_KEY": "v"}}).character
    public = c.public_dict()
    assert "secrets" not in public and "settings" not in public and public["name"] == "A"


def test_check_character_command(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "A"}')
    good = ROOT / "characters" / "default.json"
    run = subprocess.run([sys.executable, "-m", "bot", "check-character", str(good), str(bad)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("ok") and "Parley" in lines[0]
    assert lines[1].startswith("FAIL") and "bio: Field required" in lines[1]
    ok = subprocess.run([sys.executable, "-m", "bot", "check-character", str(good)],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0


def test_check_character_names_plugins_and_legacy_fields_and_fails_on_a_bad_plugin(tmp_path: Path):
    (tmp_path / "weather.py").write_text(
        "from bot.plugin import Plugin\n"
        "plugin = Plugin(name='weather')\n"
        "def make(settings):\n    return Plugin(name='made')\n"
        "def make_nothing(settings):\n    return 42\n")
    files = {
        "good.json": {"plugins": ["weather:plugin", "weather:make", "@elizaos/plugin-openai"]},
        "legacy.json": {"clients": ["discord"], "messageExamples": [[{"user": "u", "content": {"content": "?"}}]]},
        "abort.json": {"plugins": ["os:abort"]},
        "nothing.json": {"plugins": ["weather:make_nothing"]},
    }
    for name, fields in files.items():
        (tmp_path / name).write_text(json.dumps({"name": "A", "bio": "b", **fields}))
    run = subprocess.run([sys.executable, "-m", "bot", "check-character", *files], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr == "", run.stderr
    good, legacy, abort, nothing = run.stdout.strip().splitlines()
    assert good.startswith("ok   good.json") and good.endswith(
        "; imports weather:plugin (plugin 'weather'); imports weather:make (plugin 'made')")
    assert legacy.startswith("ok   legacy.json: A (1 bio lines, 0 examples); legacy fields mapped: "
                             "clients -> unused, messageExamples[].user -> name; messageExamples[0][0]: ")
    assert abort == "FAIL abort.json: plugins: character plugin 'os:abort': abort is not a Plugin or a function returning one"
    assert nothing.startswith("FAIL nothing.json: plugins: ") and "is not a Plugin" in nothing


def test_string_to_uuid_matches_elizaos():
    assert str(string_to_uuid("Eliza")) == "b850bc30-45f8-0041-a00a-83df46d8555d"
    value = string_to_uuid("a user/with spaces & ünïcode")
    assert value.version is None or value.bytes[6] >> 4 == 0
    assert value.bytes[8] >> 6 == 0b10
    assert string_to_uuid(42) == string_to_uuid("42")


def test_create_unique_uuid_is_stable_per_agent():
    agent, other = uuid.uuid4(), uuid.uuid4()
    assert create_unique_uuid(agent, "telegram:user:1") == create_unique_uuid(agent, "telegram:user:1")
    assert create_unique_uuid(agent, "telegram:user:1") != create_unique_uuid(other, "telegram:user:1")
    assert create_unique_uuid(agent, agent) == agent
    assert create_unique_uuid(agent, "x") == string_to_uuid(f"x:{agent}")

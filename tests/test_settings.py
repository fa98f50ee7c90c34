"""Settings: every value from env/.env, and a bad one stops start-up with one clear line (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.settings import Settings, SettingsError, ShouldRespondMode, load_settings

ROOT = Path(__file__).parents[1]
CHARACTER = ROOT / "characters" / "default.json"


def _run_bot(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "ANTHROPIC", "TELEGRAM", "DISCORD"))}
    return subprocess.run([sys.executable, "-m", "bot"], cwd=tmp_path, env={**clean, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("PORT", "abc", "valid integer"),
    ("SHOULD_RESPOND_MODE", "sometimes", "'auto' or 'mentions'"),
    ("MODEL_PROVIDERS", "openai,foo", "unknown provider 'foo'"),
    ("CHANNEL_IDS", "123,abc", "valid integer"),
    ("CONVERSATION_LENGTH", "0", "greater than or equal to 1"),
    ("LOG_LEVEL", "verbose", "use DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    ("OWNER_IDS", "tg:12", "'tg:12' is not platform:user_id"),
])
def test_bad_value_exits_2_with_one_line(tmp_path: Path, name: str, value: str, expected: str):
    run = _run_bot({name: value}, tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert name in lines[0] and expected in lines[0] and "Fix:" in lines[0]
    assert "Traceback" not in run.stderr


def test_bad_secret_value_is_not_echoed(tmp_path: Path):
    run = _run_bot({"DISCORD_APPLICATION_ID": "not-a-number", "OPENAI_API_KEY": "sk-very-secret-key"}, tmp_path)
    assert run.returncode == 2 and "DISCORD_APPLICATION_ID" in run.stderr
    assert "sk-very-secret-key" not in run.stderr


def test_broken_character_exits_2_with_one_line(tmp_path: Path):
    broken = tmp_path / "c.json"
    broken.write_text('{"name": "X", "bio": 5}')
    run = _run_bot({"CHARACTER_PATH": str(broken), "DATA_DIR": str(tmp_path)}, tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"parley: {broken}: bio")
    assert "Traceback" not in run.stderr


def test_env_file_and_list_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SHOULD_RESPOND_MODE=mentions\nTELEGRAM_ALLOWED_CHATS=[-100123, 42]\n"
                                   "CHANNEL_IDS=1, 2 ,3\nOPENAI_EMBEDDING_DIMENSIONS=\nRESPOND_TO_BOTS=false\n")
    settings = load_settings()
    assert settings.should_respond_mode is ShouldRespondMode.MENTIONS
    assert settings.telegram_allowed_chats == [-100123, 42]
    assert settings.channel_ids == [1, 2, 3]
    assert settings.openai_embedding_dimensions is None
    assert settings.respond_to_bots is False


@pytest.mark.parametrize("value", ["debug", " Warning ", "CRITICAL"])
def test_log_level_is_case_insensitive(value: str):
    assert load_settings(_env_file=None, log_level=value).log_level == value.strip().upper()


def test_env_example_lists_every_setting():
    example = (ROOT / ".env.example").read_text()
    listed = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
    assert listed == {name.upper() for name in Settings.model_fields}


def test_secrets_are_masked_in_repr():
    settings = Settings(_env_file=None, openai_api_key="sk-abc123456789")
    assert "sk-abc123456789" not in repr(settings) and "sk-abc123456789" not in str(settings.model_dump())


def test_load_settings_raises_one_line():
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, port="x")
    assert "\n" not in str(info.value) and str(info.value).startswith("PORT:")


def test_database_url_of_another_kind_is_rejected_without_echoing_it(tmp_path: Path):
    run = _run_bot({"DATABASE_URL": "mysql://admin:hunter2secret@db.example/app"}, tmp_path)
    assert run.returncode == 2 and "DATABASE_URL" in run.stderr and "postgresql://" in run.stderr
    assert "hunter2secret" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_unreachable_database_is_one_line_naming_database_url(tmp_path: Path):
    run = _run_bot({"DATABASE_URL": "postgresql://parley:pw-not-shown-1234@127.0.0.1:1/none",
                    "DATA_DIR": str(tmp_path), "CONSOLE": "off", "CHARACTER_PATH": str(CHARACTER)}, tmp_path)
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("parley: DATABASE_URL: cannot use the database") and "Fix:" in last
    assert "pw-not-shown-1234" not in run.stderr and "Traceback" not in run.stderr


def test_port_in_use_is_one_line_naming_port(tmp_path: Path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = _run_bot({"PORT": str(port), "HOST": "127.0.0.1", "DATA_DIR": str(tmp_path), "CONSOLE": "off",
                        "CHARACTER_PATH": str(CHARACTER)}, tmp_path)
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"parley: PORT: cannot listen on 127.0.0.1:{port}") and "Traceback" not in run.stderr

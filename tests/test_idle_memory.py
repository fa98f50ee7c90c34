"""Idle memory of the process (issue #16): what a configuration does not use is not imported, and
what every character would otherwise hold a copy of is shared. Each check runs in a fresh interpreter,
since this one has imported everything the other tests use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SELECT = """
import json, sys
from pathlib import Path
from bot.app import select_plugins
from bot.character import parse_character
from bot.settings import Settings
from bot.store.factory import create_store

character = parse_character(json.loads(sys.argv[2])).character
settings = Settings(_env_file=None, data_dir=Path(sys.argv[1]), openai_api_key="sk-test-0123456789abcdef",
                    model_providers=["openai"], telegram_bot_token="123456789:AA" + "x" * 33, **json.loads(sys.argv[3]))
create_store(settings)  # the engine only: no connection is opened
names = [plugin.name for plugin in select_plugins(settings, character).plugins]
heavy = {"mcp", "pypdf", "asyncpg"}
print(json.dumps({"plugins": names, "loaded": sorted(heavy & set(sys.modules))}))
"""

TELEGRAM = """
import sys
from pathlib import Path
from bot.character import parse_character
from bot.runtime import AgentRuntime
from bot.settings import Settings
from bot.store.factory import create_store
from connectors.telegram_connector import TelegramConnector

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def connector(index):
    settings = Settings(_env_file=None, data_dir=Path(sys.argv[1]), telegram_bot_token=f"{100000000 + index}:AA{'x' * 33}")
    character = parse_character({"name": f"C{index}", "bio": ["A test character."]}).character
    return TelegramConnector(AgentRuntime(character, settings, create_store(settings), []))

kept = [connector(0)]  # the first pays for what all share
before = rss_mb()
kept += [connector(index) for index in range(1, 11)]
print(rss_mb() - before)
"""

SERVER = """
import sys
from pathlib import Path
from bot.character import parse_character
from bot.runtime import AgentRuntime
from bot.server import WebServer
from bot.settings import Settings
from bot.store.factory import create_store

settings = Settings(_env_file=None, data_dir=Path(sys.argv[1]), port=0)
character = parse_character({"name": "Plain", "bio": ["A test character."]}).character
WebServer(AgentRuntime(character, settings, create_store(settings), []), settings)
print(sorted({"socketio", "engineio"} & set(sys.modules)))
"""

PLAIN = {"name": "Plain", "bio": ["A test character."]}


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_unused_heavy_modules_are_not_imported(tmp_path: Path) -> None:
    """No MCP server configured, no PDF read, SQLite: neither the MCP SDK (~28 MB), pypdf (~7 MB) nor the
    PostgreSQL driver are in the process, while knowledge (which reads PDFs) and the platform are."""
    found = json.loads(run(SELECT, str(tmp_path), json.dumps(PLAIN), "{}"))
    assert {"knowledge", "telegram"} <= set(found["plugins"]) and "mcp" not in found["plugins"]
    assert found["loaded"] == []


def test_what_is_configured_is_imported(tmp_path: Path) -> None:
    """The counterpart: the same check sees the SDK once a server is configured, and asyncpg with a
    PostgreSQL DATABASE_URL."""
    character = {**PLAIN, "settings": {"mcp": {"servers": {"weather": {"type": "stdio", "command": "npx"}}}}}
    found = json.loads(run(SELECT, str(tmp_path), json.dumps(character),
                           json.dumps({"database_url": "postgresql://nobody@127.0.0.1:1/none"})))
    assert "mcp" in found["plugins"]
    assert found["loaded"] == ["asyncpg", "mcp"]


def test_telegram_bots_share_one_tls_context(tmp_path: Path) -> None:
    """Ten more Telegram connectors cost well under the ~15 MB that a CA bundle per HTTP client took."""
    grown = float(run(TELEGRAM, str(tmp_path)))
    assert grown < 5, f"10 Telegram connectors took {grown:.1f} MB"


def test_socket_io_is_loaded_by_its_first_client(tmp_path: Path) -> None:
    """The HTTP server serves /socket.io/ without holding python-socketio until a client asks
    (tests/test_realtime.py has the clients)."""
    assert run(SERVER, str(tmp_path)) == "[]"

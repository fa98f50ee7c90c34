"""`python -m bot`: run the bot, or validate character files."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bot.character import Character, CharacterError, load_character
from bot.settings import Settings, SettingsError, load_settings

log = logging.getLogger("bot")

EPILOG = """\
Without a platform token (TELEGRAM_BOT_TOKEN, DISCORD_API_TOKEN) the bot opens a terminal chat;
with stdin piped it answers one message per line. Settings come from the environment and .env
(see .env.example). The HTTP server (health, metrics, API, web chat) listens on $PORT."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot", description="parley: a character-driven chat agent for Discord and Telegram.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--character", metavar="PATH", action="append",
                        help="character file (default: $CHARACTERS, $CHARACTER_PATH or characters/default.json); "
                        "repeat it to run several characters in this process")
    parser.add_argument("--port", type=int, help="HTTP port (default: $PORT or 3000)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="run the bot (the default)")
    check = commands.add_parser("check-character", help="validate character files and the Python plugins "
                                "they name; exit 1 if any fails")
    check.add_argument("paths", nargs="+", metavar="PATH")
    return parser


def check_plugins(character: Character, settings: Settings, source: str) -> list[str]:
    """Load the character's plugins one by one exactly as start-up does; return a note per entry
    (the Python plugins it imports, the names it ignores), or raise CharacterError on the first that fails."""
    from bot.app import StartupError, character_plugins

    notes = []
    for spec in character.plugins:
        try:
            plugins, ignored = character_plugins(character.model_copy(update={"plugins": [spec]}), settings)
        except StartupError as error:
            raise CharacterError(f"{source}: plugins: {error}") from None
        except Exception as error:  # a factory that is not one: start-up would die on the same error
            raise CharacterError(
                f"{source}: plugins: {spec!r} cannot be used ({type(error).__name__}: {error}). "
                "Fix: name a Plugin, or a function that takes the settings and returns one") from None
        notes += [f"imports {spec} (plugin {plugin.name!r})" for plugin in plugins] + ignored
    return notes


def check_characters(paths: list[str]) -> int:
    """One line per file: `ok` with what it holds and what start-up would warn about, or `FAIL` and why."""
    settings: Settings | None = None  # read only when a file names plugins: their factories take it
    failed = 0
    for path in paths:
        try:
            loaded = load_character(path)
            if loaded.character.plugins and settings is None:
                settings = load_settings()
            plugin_notes = check_plugins(loaded.character, settings, path) if settings is not None else []
        except SettingsError as error:
            print(f"parley: configuration error: {error}", file=sys.stderr)
            return 2
        except CharacterError as error:
            print(f"FAIL {error}")
            failed += 1
            continue
        c = loaded.character
        notes = [f"legacy fields mapped: {loaded.legacy_summary()}"] if loaded.legacy else []
        notes += loaded.notices + plugin_notes
        print(f"ok   {path}: {c.name} ({len(c.bio_lines)} bio lines, {len(c.message_examples)} examples)"
              + "".join(f"; {note}" for note in notes))
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    from bot.agents import configure_agents, load_characters
    from bot.app import App, StartupError, has_platform_token
    from bot.logging_setup import character_secret_values, configure_logging

    overrides: dict[str, object] = {}
    if args.character and len(args.character) == 1:
        overrides["character_path"], overrides["characters"] = Path(args.character[0]), []
    elif args.character:
        overrides["characters"] = [Path(path) for path in args.character]
    if args.port is not None:
        overrides["port"] = args.port
    try:
        settings = load_settings(**overrides)
    except SettingsError as error:
        print(f"parley: configuration error: {error}", file=sys.stderr)
        return 2
    redactor = configure_logging(settings)
    try:
        # Secrets are masked before anything about a character (its plugins' notes included) is logged.
        characters = load_characters(settings)
        for _path, character in characters:
            for secret in character_secret_values(character):
                redactor.add(secret)
        configs = configure_agents(settings, characters)
        from connectors.console import console_wanted

        # The terminal chat talks to one character: with several, each answers on its own bots and the API.
        console = len(configs) == 1 and console_wanted(configs[0].settings, has_platform_token(configs[0].settings))
        app = App(settings, agents=configs, console=console)
        asyncio.run(app.run())
    except (StartupError, SettingsError) as error:
        print(f"parley: {redactor.redact(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-character":
        return check_characters(args.paths)
    return run(args)

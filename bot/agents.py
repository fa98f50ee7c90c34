"""Several characters in one process: one AgentRuntime per character, all on one Store.

Each character brings its own bots and keys (`settings_for_character`), so one whose token is
rejected or whose plugin fails is reported in one line and stays down while the others run; the
process only gives up when no character could start. Memory, facts, knowledge, tasks and sessions
are keyed by the agent id (from the character's name or id), so the runtimes share the store
without sharing what they remember.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bot.character import Character, CharacterError, load_character
from bot.plugin import Plugin
from bot.runtime import AgentRuntime
from bot.settings import Settings, SettingsError, settings_for_character

log = logging.getLogger(__name__)

# Settings holding a bot's token: two characters with the same one would fight over one bot.
TOKENS = {"telegram_bot_token": "TELEGRAM_BOT_TOKEN", "discord_api_token": "DISCORD_API_TOKEN"}
RUNNING, STOPPED = "running", "stopped"


class StartupError(Exception):
    """Start-up cannot continue; the message is one line for the operator."""


class AgentError(Exception):
    """An admin request about one agent that cannot be done; the message says why."""


@dataclass
class AgentConfig:
    """One character as configured: its file, and the process settings with its secrets on top."""

    path: Path
    character: Character
    settings: Settings


def load_character_file(path: Path) -> Character:
    """The character, or StartupError naming the file, the field and the problem."""
    try:
        loaded = load_character(path)
    except CharacterError as error:
        raise StartupError(str(error)) from None
    for warning in loaded.warnings:
        log.warning("%s: %s", loaded.path, warning)
    return loaded.character


def configure_agent(settings: Settings, character: Character, path: Path, *, alone: bool = True) -> AgentConfig:
    return AgentConfig(path, character, settings_for_character(settings, character, source=str(path), alone=alone))


def load_characters(settings: Settings) -> list[tuple[Path, Character]]:
    """Every configured character file (CHARACTERS, else CHARACTER_PATH), in order."""
    return [(path, load_character_file(path)) for path in settings.character_paths]


def configure_agents(settings: Settings, characters: list[tuple[Path, Character]]) -> list[AgentConfig]:
    """Each character's settings, checked against each other's (`check_configs`)."""
    configs = [configure_agent(settings, character, path, alone=len(characters) == 1) for path, character in characters]
    check_configs(configs)
    return configs


def check_configs(configs: list[AgentConfig]) -> None:
    """Refuse what would mix two characters: one agent id, or one bot token, for two files.

    Tokens are compared, never printed. Telegram webhooks arrive at one path of the HTTP server,
    which serves the first character's routes, so only that character may use one.
    """
    ids: dict[uuid.UUID, AgentConfig] = {}
    tokens: dict[tuple[str, str], AgentConfig] = {}
    for index, config in enumerate(configs):
        first = ids.setdefault(config.character.agent_id, config)
        if first is not config:
            raise StartupError(f"{first.path} and {config.path} are the same agent ({config.character.name}): their "
                               "memories would mix. Fix: give each character its own name (or id)")
        for setting, env_name in TOKENS.items():
            value = getattr(config.settings, setting)
            if value is None:
                continue
            first = tokens.setdefault((setting, value.get_secret_value()), config)
            if first is not config:
                raise StartupError(f"{first.path} and {config.path} have the same {env_name}: one bot cannot be two "
                                   f"characters. Fix: give each character its own {env_name} in its settings.secrets")
        if index and config.settings.telegram_webhook_url:
            raise StartupError(f"{config.path}: TELEGRAM_WEBHOOK_URL: only the first character can take Telegram "
                               "updates by webhook. Fix: remove it (this bot then polls) or list this character first")


def describe(error: BaseException) -> str:
    """An error as the reason an agent is down: our own errors already read as one line."""
    text = str(error)
    if isinstance(error, StartupError | SettingsError | RuntimeError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def names(character: Character, key: str | uuid.UUID) -> bool:
    """Whether `key` names this character: its agent id, or its name or username in any case."""
    text = str(key).strip()
    return text == str(character.agent_id) or text.casefold() in {
        n.casefold() for n in (character.name, character.username) if n}


@dataclass
class Selection:
    """What a builder made for one agent: its plugins' notes (logged at start) and its runtime."""

    notes: list[str]
    runtime: AgentRuntime
    connectors: int  # platform connectors among its plugins
    plugins: list[Plugin]


class HostedAgent:
    """One character in the host: its configuration, its runtime while it has one, its state."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.runtime: AgentRuntime | None = None
        self.selection: Selection | None = None
        self.state = STOPPED  # "running", "stopped" or "failed: <reason>"
        self.lock = asyncio.Lock()

    @property
    def id(self) -> uuid.UUID:
        return self.config.character.agent_id

    @property
    def name(self) -> str:
        return self.config.character.name

    @property
    def running(self) -> bool:
        return self.state == RUNNING


Builder = Callable[[AgentConfig], Selection]


class AgentHost:
    """The runtimes of one process, started in order and stopped in reverse.

    With one character every failure is the process's (as before: one line, exit 2). With several,
    a character that cannot be built or started is marked failed and the others carry on.
    `primary` is the first character that could be built: requests that name no agent reach it.
    """

    def __init__(self, configs: list[AgentConfig], build: Builder) -> None:
        if not configs:
            raise StartupError("no character is configured. Fix: set CHARACTER_PATH or CHARACTERS")
        self.agents = [HostedAgent(config) for config in configs]
        self.single = len(configs) == 1
        self._build = build
        self._closing = False  # set by stop(): no agent starts after it
        self._stopping: set[HostedAgent] = set()  # agents an admin is stopping now
        for agent in self.agents:
            try:
                self._make(agent)
            except Exception as error:
                if self.single:
                    raise
                self._fail(agent, error)
        built = [agent for agent in self.agents if agent.runtime is not None]
        if not built:
            raise StartupError(self._nothing_started())
        self.primary = built[0]

    # Lookup ----------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[HostedAgent]:
        return iter(self.agents)

    def __len__(self) -> int:
        return len(self.agents)

    def get(self, key: str | uuid.UUID) -> HostedAgent | None:
        """By agent id, or by name or username (case-insensitive)."""
        return next((agent for agent in self.agents if names(agent.config.character, key)), None)

    def status(self) -> dict[str, str]:
        """Agent name → "running", "stopped" or "failed: reason" (for /ready)."""
        return {agent.name: agent.state for agent in self.agents}

    def running(self) -> list[HostedAgent]:
        return [agent for agent in self.agents if agent.running]

    # Whole process -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every built agent in order. With one character its failure propagates."""
        for agent in self.agents:
            if agent.runtime is not None:
                await self._start(agent)
        if not self.running():
            raise StartupError(self._nothing_started())

    async def stop(self, timeout: float) -> None:
        """Stop taking work everywhere, finish replies in flight (≤ `timeout`), then stop in reverse order."""
        self._closing = True
        try:  # an admin's start or stop under way ends first (so a started agent is stopped below)
            async with asyncio.timeout(timeout):
                for agent in self.agents:
                    async with agent.lock:
                        pass
        except TimeoutError:
            log.warning("an agent's start or stop was still under way after %.0fs; stopping the others", timeout)
        agents = self.running()
        for agent in agents:
            await self._stop_receiving(agent)
        await asyncio.gather(*(self._drain(agent, timeout) for agent in agents))
        for agent in reversed(agents):
            try:
                await self._stop_runtime(agent)
            except Exception:  # the others still stop, and the store still closes
                log.exception("%s: stopping failed", agent.name)

    # One agent at run time (admin) ------------------------------------------------------------------
    async def start_agent(self, key: str | uuid.UUID) -> HostedAgent:
        """Build a fresh runtime for a stopped or failed agent and start it; its state says how it went."""
        agent = self._admin_target(key)
        async with agent.lock:
            if agent.running:
                return agent
            if self._closing:
                raise AgentError(f"{agent.name} cannot start: the process is stopping")
            try:
                self._make(agent)
            except Exception as error:
                self._fail(agent, error)
                return agent
            await self._start(agent)
        return agent

    async def stop_agent(self, key: str | uuid.UUID) -> HostedAgent:
        """Stop one agent as the process stops: no new messages, replies in flight finished first.
        The only agent of a process runs as long as the process. Once the primary agent is stopped,
        requests that name no agent are told so until it is started again."""
        agent = self._admin_target(key)
        if self.single:
            raise AgentError(f"{agent.name} is the only agent: it runs as long as the process; stop the process "
                             "instead")
        if [a for a in self.running() if a not in self._stopping] == [agent]:
            raise AgentError(f"{agent.name} is the last agent running; stop the process instead")
        self._stopping.add(agent)  # decided with no await since the check: two stops cannot both pass it
        try:
            async with agent.lock:
                if agent.running:
                    await self._stop_receiving(agent)
                    await self._drain(agent, agent.config.settings.shutdown_timeout)
                    await self._stop_runtime(agent)
        finally:
            self._stopping.discard(agent)
        return agent

    def _admin_target(self, key: str | uuid.UUID) -> HostedAgent:
        agent = self.get(key)
        if agent is None:
            raise AgentError(f"no agent {str(key)!r}; the agents are {', '.join(a.name for a in self.agents)}")
        return agent

    # Steps --------------------------------------------------------------------------------------------
    def _make(self, agent: HostedAgent) -> None:
        agent.selection = self._build(agent.config)
        agent.runtime = agent.selection.runtime

    async def _start(self, agent: HostedAgent) -> None:
        assert agent.runtime is not None and agent.selection is not None
        for note in agent.selection.notes:
            log.warning("%s%s", "" if self.single else f"{agent.name}: ", note)
        if not self.single and not agent.selection.connectors:
            log.info("%s (%s) has no TELEGRAM_BOT_TOKEN or DISCORD_API_TOKEN in its settings.secrets: it answers "
                     "through the HTTP API only", agent.name, agent.config.path)
        try:
            await agent.runtime.initialize()
        except BaseException as error:
            await agent.runtime.stop()
            if self.single or not isinstance(error, Exception):
                raise
            self._fail(agent, error)
            return
        agent.state = RUNNING
        await self._resume(agent)

    def _fail(self, agent: HostedAgent, error: BaseException) -> None:
        reason = describe(error)
        agent.state = f"failed: {reason}"
        log.error("agent %s (%s) stays down: %s", agent.name, agent.config.path, reason)

    async def _resume(self, agent: HostedAgent) -> None:
        """Answer what the last process stored but never answered, now that connectors can send."""
        assert agent.runtime is not None
        handler = agent.runtime.message_handler
        if handler is None:
            return
        try:
            await handler.resume(agent.config.settings.resume_window)
        except Exception as error:  # the bot still serves new messages; those stay queued for the next start
            log.error("%s could not resume unanswered messages (%s: %s); they stay queued for the next start",
                      agent.name, type(error).__name__, error)

    async def _stop_receiving(self, agent: HostedAgent) -> None:
        assert agent.runtime is not None
        for connector in agent.runtime.connectors:
            try:
                await connector.stop_receiving()
            except Exception:
                log.exception("%s: %s connector could not stop receiving", agent.name, connector.source)

    async def _drain(self, agent: HostedAgent, timeout: float) -> None:
        assert agent.runtime is not None
        if agent.runtime.message_handler is not None:
            try:
                await agent.runtime.message_handler.drain(timeout)
            except Exception:
                log.exception("%s: finishing the replies in flight failed", agent.name)

    async def _stop_runtime(self, agent: HostedAgent) -> None:
        assert agent.runtime is not None
        try:
            await agent.runtime.stop()
        finally:
            agent.state = STOPPED

    def _nothing_started(self) -> str:
        reasons = "; ".join(f"{agent.name} ({agent.config.path}): {agent.state}" for agent in self.agents)
        return f"no character could start: {reasons}"

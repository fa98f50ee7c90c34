"""Knowledge (issue #13): the agent answers from documents its owner gives it.

Sources are the character's `knowledge` entries (strings, `{"path": ...}`, `{"directory": ...}`,
relative to the character file), the KNOWLEDGE_PATH folder and uploads through the admin API
(api.py). They are indexed in the background after start-up (indexer.py) and searched for each
prompt by the KNOWLEDGE provider (retrieval.py).

The plugin loads whenever KNOWLEDGE=on, even with no source yet, because documents can be
uploaded at any time; with none, the provider returns at once from a cached count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from bot.character import Character
from bot.plugin import Plugin, Priority, Service
from bot.settings import Settings

from .api import knowledge_routes
from .indexer import DocumentInfo, IndexProgress, KnowledgeBase, KnowledgeInputError
from .retrieval import KNOWLEDGE_PROVIDER

if TYPE_CHECKING:
    from bot.runtime import AgentRuntime


class KnowledgeService(Service):
    """Starts the knowledge base's background indexing with the runtime and stops it with it."""

    service_type = "knowledge"
    base: ClassVar[KnowledgeBase]

    async def start(self) -> None:
        self.base.attach(self.runtime)
        self.base.start()

    async def stop(self) -> None:
        await self.base.close()

    def status(self) -> dict[str, Any]:
        """The start-up pass's progress for /ready; the bot answers meanwhile, so it never makes it unready."""
        progress = self.base.progress
        return {"indexing": progress.state in ("waiting", "indexing"), "state": progress.state,
                "documents_done": progress.done, "documents_total": progress.documents}


def service_for(base: KnowledgeBase) -> type[KnowledgeService]:
    """The service class for this base: the runtime builds services from classes alone."""
    return type("KnowledgeService", (KnowledgeService,), {"base": base})


def knowledge_base(runtime: AgentRuntime) -> KnowledgeBase | None:
    """The runtime's knowledge base, or None when the plugin is not loaded."""
    service = runtime.get_service(KnowledgeService)
    return service.base if service is not None else None


def create_plugin(settings: Settings, character: Character) -> Plugin | None:
    if not settings.knowledge:
        return None
    base = KnowledgeBase(settings, character)
    return Plugin(name="knowledge", description="answers from the agent's documents, citing them",
                  priority=Priority.FEATURE, providers=[KNOWLEDGE_PROVIDER], services=[service_for(base)],
                  routes=knowledge_routes(base))


__all__ = ["DocumentInfo", "IndexProgress", "KnowledgeBase", "KnowledgeInputError", "KnowledgeService",
           "create_plugin", "knowledge_base"]

"""The HTTP service: health, metrics, the REST and Sessions APIs, the web chat page and plugin routes."""

from .server import WebServer

__all__ = ["WebServer"]

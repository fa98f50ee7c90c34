"""Persistence: the Store contract and its SQLAlchemy implementation."""

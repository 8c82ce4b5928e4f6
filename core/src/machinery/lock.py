"""The Lock protocol: a named, expiring mutex across processes (periodic tasks fire once per tick)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .config import Config

__all__ = ["Lock"]


@runtime_checkable
class Lock(Protocol):
    """Each Lock object is one owner: ``release`` by another owner does nothing.
    ``from_url(url, config)`` builds one without I/O."""

    @classmethod
    def from_url(cls, url: str, config: Config) -> Lock:
        """A lock for ``url``; no I/O (connect on first use)."""

    def acquire(self, key: str, ttl: float) -> bool:
        """Take ``key`` for ``ttl`` seconds if nobody holds it; True when taken."""

    def release(self, key: str) -> None:
        """Give ``key`` back if this owner holds it."""

    def close(self) -> None:
        """Release connections. Idempotent."""

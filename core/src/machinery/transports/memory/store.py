"""Named in-process stores behind ``memory://NAME`` URLs.

Objects built from the same ``memory://NAME`` URL share one store, so two ``Machinery`` apps in one
process can share a queue and results, as two Go servers on one broker would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

_stores: dict[tuple[str, str], object] = {}
_lock = threading.Lock()


def store_name(url: str) -> str:
    """``memory://NAME`` → ``NAME`` (empty for plain ``memory://``)."""
    parts = urlsplit(url)
    return (parts.netloc + parts.path).strip("/")


def shared(kind: str, url: str, factory: Callable[[], T]) -> T:
    """The store of ``kind`` for ``url``, created by ``factory`` on first use."""
    key = (kind, store_name(url))
    with _lock:
        if key not in _stores:
            _stores[key] = factory()
        return _stores[key]  # type: ignore[return-value]

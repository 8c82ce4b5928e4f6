"""Machinery for Python: the MongoDB result backend and lock (``pip install machinery-mongodb``).

``mongodb://`` and ``mongodb+srv://`` URLs select them through the ``machinery`` entry point; see
README.md for the URL forms, the collections and indexes, and the limits.
"""

from __future__ import annotations

from .backend import MongoBackend, ResultTooLargeError
from .lock import MongoLock
from .url import MongoTarget, parse_url

__all__ = ["MongoBackend", "MongoLock", "MongoTarget", "ResultTooLargeError", "parse_url"]
__version__ = "0.1.0"

"""Entry point (group ``machinery``): ``mongodb://`` and ``mongodb+srv://`` URLs build this package's
result backend and lock (MongoDB is not offered as a broker), and its settings section joins ``Config``;
the classes are imported on first use, so listing plugins never loads pymongo (``transport()``)."""

from __future__ import annotations

from machinery.plugins import transport

from .url import SCHEMES

__all__ = ["plugin"]

plugin = transport(
    SCHEMES,
    backend="machinery_mongodb.backend:MongoBackend",
    lock="machinery_mongodb.lock:MongoLock",
    settings="machinery_mongodb.settings:MongoSettings",
)

"""The ``mongodb`` settings section (Machinery's ``MongoDBConfig``; ``Config.mongodb``).

Declared once here and handed to the core through the ``machinery_settings()`` hook (plugin.py), so
``Config.from_env`` reads ``MACHINERY_MONGODB_DATABASE``, ``Config.from_yaml`` reads ``mongodb:`` and
``Config.validate`` checks it. Code reads it typed with ``MongoSettings.of(config)``. This module imports
nothing from pymongo: discovering the settings never loads the driver.

- ``database``: used when the URL names none (``mongodb://host/`` vs ``mongodb://host/mydb``); default
  ``machinery``. An empty string also means ``machinery`` (Go used the empty name, which MongoDB
  refuses). Restart needed.
- ``client``: a ready ``pymongo.MongoClient`` to use instead of building one from the URL (Go's
  ``MongoDBConfig.Client``); never closed by this plugin. Code only.

``results_expire_in`` (top level, reloadable) sets each document's ``delete_at``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from machinery.settings import Check, Section, setting

__all__ = ["BAD_DATABASE_CHARS", "DEFAULT_DATABASE", "MongoSettings"]

DEFAULT_DATABASE = "machinery"
#: Characters a database name may not hold (MongoDB's rule for names on every platform).
BAD_DATABASE_CHARS = frozenset('/\\. "$\x00')


def _valid_database(name: Any) -> bool:
    return isinstance(name, str) and not (set(name) & BAD_DATABASE_CHARS)


@dataclass(repr=False)
class MongoSettings(Section):
    """MongoDB settings (Machinery's ``MongoDBConfig``; ``Config.mongodb``). See README.md, "Settings"."""

    name = "mongodb"

    client: Any = None
    database: str = setting(
        DEFAULT_DATABASE,
        check=Check(_valid_database, 'must not contain / \\ . space " $ or NUL (e.g. machinery)'),
    )

    @property
    def database_name(self) -> str:
        """``database``, or ``machinery`` when it is empty."""
        return self.database or DEFAULT_DATABASE

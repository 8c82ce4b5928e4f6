"""This plugin's settings, read from today's ``Config.mongodb`` section.

=================  ===========  ===============================  =======================  ==========
setting            default      env                              YAML                     reloadable
=================  ===========  ===============================  =======================  ==========
``database``       machinery    ``MACHINERY_MONGODB_DATABASE``   ``mongodb: {database}``  no
``client``         None         (code only)                      (code only)              no
=================  ===========  ===============================  =======================  ==========

``database`` is used when the URL names none (``mongodb://host/`` vs ``mongodb://host/mydb``). An empty
string also means ``machinery`` (Go used the empty name, which MongoDB refuses). ``client`` is a ready
``pymongo.MongoClient`` to use instead of building one from the URL (as Go's ``MongoDBConfig.Client``);
it is never closed by this plugin. ``results_expire_in`` (top level, reloadable) sets ``delete_at``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from machinery.config import Config

__all__ = ["DEFAULT_DATABASE", "MongoSettings"]

DEFAULT_DATABASE = "machinery"


@dataclass(frozen=True)
class MongoSettings:
    """Typed view of the MongoDB settings of a :class:`~machinery.config.Config`."""

    database: str = DEFAULT_DATABASE
    client: Any = None

    @classmethod
    def of(cls, config: Config) -> MongoSettings:
        section = getattr(config, "mongodb", None)
        database = str(getattr(section, "database", "") or "") or DEFAULT_DATABASE
        return cls(database=database, client=getattr(section, "client", None))

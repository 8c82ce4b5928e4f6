"""Machinery for Python: the plugin template, ``example://NAME`` (``pip install machinery-example``).

A broker, result backend and lock kept in a dict inside one process: small enough to read in one
sitting, complete enough to pass the contract kit. Importing this package imports nothing heavy: the
classes load on first use (``from machinery_example import ExampleBroker`` still works), so installing
the plugin costs every Machinery process nothing until a URL with its scheme is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import ExampleBackend
    from .broker import ExampleBroker, ExampleDelivery
    from .lock import ExampleLock
    from .settings import ExampleSettings
    from .url import ExampleTarget, parse_url

__all__ = [
    "ExampleBackend",
    "ExampleBroker",
    "ExampleDelivery",
    "ExampleLock",
    "ExampleSettings",
    "ExampleTarget",
    "parse_url",
]
__version__ = "0.1.0"

#: public name -> the module defining it (imported on first access)
_LAZY = {
    "ExampleBackend": "backend",
    "ExampleBroker": "broker",
    "ExampleDelivery": "broker",
    "ExampleLock": "lock",
    "ExampleSettings": "settings",
    "ExampleTarget": "url",
    "parse_url": "url",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)

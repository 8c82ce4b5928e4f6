"""The entry point (group ``machinery``): ``example://`` URLs build this plugin's broker, backend and lock,
and its settings section joins ``Config``. Only this module is imported when Machinery loads plugins;
each class is imported the first time a URL of ours asks for it (``transport()`` generates the hooks).
"""

from __future__ import annotations

from machinery.plugins import transport

from .url import SCHEMES

__all__ = ["plugin"]

plugin = transport(
    SCHEMES,
    broker="machinery_example.broker:ExampleBroker",
    backend="machinery_example.backend:ExampleBackend",
    lock="machinery_example.lock:ExampleLock",
    settings="machinery_example.settings:ExampleSettings",
)

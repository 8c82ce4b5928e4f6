"""Helpers of the Pub/Sub tests: the emulator from scripts/services (a failure in CI when absent).

A module of its own (not conftest.py): the repository runs pytest in importlib mode, where every plugin's
conftest.py is a different module and ``from conftest import ...`` would find another plugin's.
"""

from __future__ import annotations

import os

from machinery.testing import require_env

__all__ = ["pubsub_url_for"]


def pubsub_url_for(subscription: str, **options: object) -> str:
    require_env("PUBSUB_EMULATOR_HOST", "pubsub")
    project = os.environ.get("PUBSUB_PROJECT_ID", "machinery-test")
    query = "&".join(f"{k}={v}" for k, v in {"ack_deadline": 2, **options}.items())
    return f"gcppubsub://{project}/{subscription}?{query}"

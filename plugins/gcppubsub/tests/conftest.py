"""Fixtures for the Pub/Sub tests: the emulator from scripts/services (a failure in CI when absent).
Helpers that tests import live in gcppubsub_testlib.py."""

from __future__ import annotations

import uuid

import pytest
from gcppubsub_testlib import pubsub_url_for


@pytest.fixture
def pubsub_url() -> str:
    """A ``gcppubsub://`` URL on the emulator with a subscription of its own and a 2 s lease."""
    return pubsub_url_for(f"sub-{uuid.uuid4().hex[:12]}")

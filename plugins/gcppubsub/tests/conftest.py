"""Fixtures for the Pub/Sub tests: the emulator from scripts/services (a failure in CI when absent)."""

from __future__ import annotations

import os
import uuid

import pytest

from machinery.testing import require_env


@pytest.fixture
def pubsub_url() -> str:
    """A ``gcppubsub://`` URL on the emulator with a subscription of its own and a 2 s lease."""
    return pubsub_url_for(f"sub-{uuid.uuid4().hex[:12]}")


def pubsub_url_for(subscription: str, **options: object) -> str:
    require_env("PUBSUB_EMULATOR_HOST", "pubsub")
    project = os.environ.get("PUBSUB_PROJECT_ID", "machinery-test")
    query = "&".join(f"{k}={v}" for k, v in {"ack_deadline": 2, **options}.items())
    return f"gcppubsub://{project}/{subscription}?{query}"

"""The ``redis`` settings section: Machinery's ``RedisConfig`` fields plus this plugin's own.

Declared once here and handed to the core through the ``machinery_settings()`` hook (plugin.py), so
``Config.from_env`` reads ``REDIS_*`` / ``MACHINERY_REDIS_*``, ``Config.from_yaml`` reads ``redis:``, and
``Config.validate`` checks them. Code reads them typed with ``RedisSettings.of(config)`` (``config.redis``
works too). This module imports nothing from redis-py: discovering the settings never loads the broker.

Timeouts are in seconds and poll periods in milliseconds, as in Go. Only the two poll periods may change
on a live reload (the broker reads them at each poll); everything else is read when a connection is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from machinery.settings import Check, Section, above, at_least, setting

__all__ = ["RedisSettings"]


@dataclass(repr=False)
class RedisSettings(Section):
    """Redis settings (Machinery's ``RedisConfig``; ``Config.redis``). See README.md, "Settings"."""

    name = "redis"

    max_idle: int = setting(3, go_env="REDIS_MAX_IDLE", check=at_least(0))
    max_active: int = setting(0, go_env="REDIS_MAX_ACTIVE", check=at_least(0))
    #: YAML ``max_idle_timeout`` (Go's spelling) or ``idle_timeout``.
    idle_timeout: int = setting(
        240, go_env="REDIS_IDLE_TIMEOUT", yaml=("max_idle_timeout", "idle_timeout"), check=at_least(0)
    )
    wait: bool = setting(False, go_env="REDIS_WAIT")
    read_timeout: int = setting(15, go_env="REDIS_READ_TIMEOUT", check=at_least(0))
    write_timeout: int = setting(15, go_env="REDIS_WRITE_TIMEOUT", check=at_least(0))
    connect_timeout: int = setting(15, go_env="REDIS_CONNECT_TIMEOUT", check=at_least(0))
    #: The longest single BLMOVE wait, in ms. Reloadable. 0 means the broker's default (1000 ms).
    normal_tasks_poll_period: int = setting(
        1000, go_env="REDIS_NORMAL_TASKS_POLL_PERIOD", reload=True, check=at_least(0)
    )
    #: The longest sleep of the delayed mover, in ms. Reloadable. 0 means the broker's default (500 ms).
    delayed_tasks_poll_period: int = setting(
        500, go_env="REDIS_DELAYED_TASKS_POLL_PERIOD", reload=True, check=at_least(0)
    )
    delayed_tasks_key: str = setting(
        "delayed_tasks",
        go_env="REDIS_DELAYED_TASKS_KEY",
        check=Check(bool, "must not be empty (Machinery uses delayed_tasks)"),
    )
    client_name: str = setting("", go_env="REDIS_CLIENT_NAME")
    master_name: str = setting("", go_env="REDIS_MASTER_NAME")
    #: v1 ``ClusterMode`` / v2 ``ClusterEnabled``.
    cluster_mode: bool = setting(
        False,
        go_env=("REDIS_CLUSTER_MODE", "REDIS_CLUSTER_ENABLED"),
        yaml=("cluster_mode", "cluster_enabled"),
    )
    sentinel_password: str = setting("", go_env="REDIS_SENTINEL_PASSWORD", secret=True)
    # Python additions (env MACHINERY_REDIS_<NAME>; also URL query parameters, which win):
    #: Seconds a dead worker's in-flight messages stay leased before they are redelivered.
    lease: float = setting(30.0, check=above(0, " seconds"))
    #: Seconds between a live worker's lease renewals (at most half the lease).
    heartbeat: float = setting(10.0, check=above(0, " seconds"))
    #: Opt-in priorities: messages with priority > 0 use a sorted set (priority 0 stays Go-compatible).
    priority: bool = setting(False)
    #: Move due ETA tasks to their queues from this process (off: another process does it, #466).
    delayed_tasks_mover: bool = setting(True)
    #: Also honour Go Machinery's ``TriggerChordMutex`` so a mixed Go/Python fleet fires a chord once.
    go_compatible_chords: bool = setting(True)
    #: Your own ``redis.Redis`` or ``redis.cluster.RedisCluster`` (#820), used as it is. Code only.
    client: Any = None
    #: Seconds commands are retried once the server has answered (a restart, a Sentinel failover).
    retry_window: float = setting(15.0, check=above(0, " seconds"))

    def problems(self, valid: AbstractSet[str]) -> Iterable[str]:
        if {"lease", "heartbeat"} <= valid and self.heartbeat > self.lease / 2:
            yield (
                f"redis.heartbeat ({self.heartbeat:g}) must be at most half of redis.lease ({self.lease:g}), "
                "or a busy process could lose its messages to recovery"
            )

"""The ``sqs`` and ``dynamodb`` settings sections: Machinery's ``SQSConfig`` / ``DynamoDBConfig`` fields plus
this plugin's own.

Declared once here and handed to the core through the ``machinery_settings()`` hook (plugin.py), so
``Config.from_env`` reads ``SQS_*`` / ``TASK_STATES_TABLE`` / ``MACHINERY_SQS_*``, ``Config.from_yaml`` reads
``sqs:`` and ``dynamodb:``, and ``Config.validate`` checks them. Code reads them typed with
``SQSSettings.of(config)`` (``config.sqs`` works too). A URL's query parameters override them for one
broker or backend (``Section.with_query``). This module imports nothing from boto3: discovering the
settings never loads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from machinery.settings import Check, Section, between, not_empty, setting

__all__ = ["DynamoDBSettings", "SQSSettings"]

#: SQS limits the settings are checked against
MAX_WAIT_SECONDS = 20
MAX_VISIBILITY_SECONDS = 43_200
MAX_DELAY_SECONDS = 900


@dataclass(repr=False)
class SQSSettings(Section):
    """SQS broker settings (Machinery's ``SQSConfig``; ``Config.sqs``). See README.md, "Settings".

    Deviations from Go: ``wait_time_seconds`` defaults to 20 (long polling) rather than 0, and the visibility
    heartbeat is on by default.
    """

    name = "sqs"

    #: Longest long poll of one ReceiveMessage, 0-20 s (0: short polls, Go's default). Reloadable.
    wait_time_seconds: int = setting(
        20,
        go_env="SQS_WAIT_TIME_SECONDS",
        yaml=("receive_wait_time_seconds", "wait_time_seconds"),
        reload=True,
        check=between(0, MAX_WAIT_SECONDS, " seconds (SQS limit)"),
    )
    #: Visibility timeout asked for on receive (and given to queues created here); None: the queue's own.
    #: Reloadable (next receive).
    visibility_timeout: int | None = setting(
        None,
        go_env="SQS_VISIBILITY_TIMEOUT",
        yaml=("receive_visibility_timeout", "visibility_timeout"),
        reload=True,
        check=Check(
            lambda v: v is None or 1 <= v <= MAX_VISIBILITY_SECONDS,
            f"must be empty/None (the queue's setting) or between 1 and {MAX_VISIBILITY_SECONDS} seconds",
        ),
    )
    #: Renew a running task's visibility every third of the visibility timeout (the core's LeaseKeeper; Go:
    #: off by default). Reloadable
    #: (next task).
    visibility_heartbeat: bool = setting(
        True,
        go_env="SQS_VISIBILITY_HEARTBEAT",
        yaml=("visibility_hearth_beat", "visibility_heartbeat"),
        reload=True,
    )
    #: A ready boto3 SQS client to use instead of building one (Machinery's ``SQSConfig.Client``). Code only.
    client: Any = None
    # Python additions (env MACHINERY_SQS_<NAME>; also URL query parameters, which win):
    #: Create missing queues (and their dead-letter queues). Off: a missing queue is an error naming it.
    create_missing: bool = setting(True)
    #: The dead-letter queue of a queue without a redrive policy: ``{queue}`` is replaced by its name
    #: (``.fifo`` stays at the end). Empty: ``nack(requeue=False)`` on such a queue deletes the message.
    dead_letter_queue: str = setting(
        "{queue}-dlq", check=Check(lambda v: not v or "{queue}" in v, "must contain {queue} (or be empty)")
    )
    #: Queues created here get a redrive policy to their dead-letter queue after this many receives
    #: (0: none; the dead-letter queue then only takes ``nack(requeue=False)``).
    max_receive_count: int = setting(0, check=between(0, 1000, " (SQS limit)"))
    #: Longest DelaySeconds of one hop (SQS's limit is 900 s); a later ETA is re-delayed hop by hop.
    delay_hop_seconds: int = setting(MAX_DELAY_SECONDS, check=between(1, MAX_DELAY_SECONDS, " seconds"))
    #: Go's ``StopTaskDeletionOnError`` for every task (a signature may also set it for itself): a failed
    #: task's message is not deleted, so the queue's redrive policy moves it to the dead-letter queue
    #: after ``maxReceiveCount`` receives (Machinery #471). Reloadable.
    stop_task_deletion_on_error: bool = setting(False, reload=True)
    #: MessageGroupId on FIFO queues when the signature has no ``broker_message_group_id``.
    message_group_id: str = setting("machinery", check=not_empty("machinery"))

    def problems(self, valid: AbstractSet[str]) -> Iterable[str]:
        if (
            {"max_receive_count", "dead_letter_queue"} <= valid
            and self.max_receive_count
            and not self.dead_letter_queue
        ):
            yield (
                "sqs.max_receive_count (env MACHINERY_SQS_MAX_RECEIVE_COUNT) needs a dead-letter queue: "
                "set sqs.dead_letter_queue (e.g. {queue}-dlq)"
            )

    def dead_letter_name(self, queue: str) -> str:
        """The dead-letter queue's name for ``queue`` (empty when dead-lettering is off)."""
        if not self.dead_letter_queue:
            return ""
        if queue.endswith(".fifo"):
            return self.dead_letter_queue.replace("{queue}", queue.removesuffix(".fifo")) + ".fifo"
        return self.dead_letter_queue.replace("{queue}", queue)


@dataclass(repr=False)
class DynamoDBSettings(Section):
    """DynamoDB backend settings (Machinery's ``DynamoDBConfig``; ``Config.dynamodb``)."""

    name = "dynamodb"

    task_states_table: str = setting(
        "task_states", go_env="TASK_STATES_TABLE", check=not_empty("task_states")
    )
    group_metas_table: str = setting(
        "group_metas", go_env="GROUP_METAS_TABLE", check=not_empty("group_metas")
    )
    #: A ready boto3 DynamoDB client (Machinery's ``DynamoDBConfig.Client``). Code only.
    client: Any = None
    # Python additions (env MACHINERY_DYNAMODB_<NAME>; also URL query parameters, which win):
    #: The lock's table (key ``LockKey``): periodic tasks and chord recovery take their locks here.
    locks_table: str = setting("machinery_locks", check=not_empty("machinery_locks"))
    #: Create missing tables (on-demand capacity, TTL on ``TTL``). Off: a missing table is an error.
    create_missing: bool = setting(True)
    #: Longest pause between two reads of a waiting ``wait()`` (it starts at 50 ms and grows). Reloadable.
    max_poll_interval: float = setting(0.5, reload=True, check=between(0.05, 60, " seconds"))

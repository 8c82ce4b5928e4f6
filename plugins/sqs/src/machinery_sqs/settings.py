"""The plugin's settings: the SQS section (``Config.sqs``) and the DynamoDB section (``Config.dynamodb``).

Machinery's own fields keep Go's names (``SQS_WAIT_TIME_SECONDS``, ``SQS_VISIBILITY_TIMEOUT``,
``SQS_VISIBILITY_HEARTBEAT``, ``TASK_STATES_TABLE``, ``GROUP_METAS_TABLE``; YAML
``receive_wait_time_seconds``...) and are read from the config. This package's additions come, in this
order, from a URL query parameter (``sqs://?create_missing=false``), a keyword of ``from_url``, an attribute
of the config section, the environment (``MACHINERY_SQS_<NAME>`` / ``MACHINERY_DYNAMODB_<NAME>``), and
their default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from machinery.config import Config
from machinery.errors import ConfigError

__all__ = ["DynamoDBSettings", "SQSSettings", "parse_bool"]

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
T = TypeVar("T")

#: SQS limits the settings are checked against
MAX_WAIT_SECONDS = 20
MAX_VISIBILITY_SECONDS = 43_200
MAX_DELAY_SECONDS = 900


def parse_bool(value: object, what: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case) or a bool; else a ConfigError."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{what} must be true or false, got {value!r}")


def _parse_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    try:
        return int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{what} must be a whole number, got {value!r}") from None


def _parse_float(value: object, what: str) -> float:
    try:
        return float(str(value).strip()) if not isinstance(value, int | float) else float(value)
    except ValueError:
        raise ConfigError(f"{what} must be a number, got {value!r}") from None


def _parse_opt_int(value: object, what: str) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return _parse_int(value, what)


def _as_is(value: object, what: str) -> Any:
    return value


_Parser = Callable[[object, str], Any]
_PARSERS: dict[str, _Parser] = {
    "bool": parse_bool,
    "int": _parse_int,
    "int | None": _parse_opt_int,
    "float": _parse_float,
    "str": lambda value, what: str(value),
}


class _Section:
    """Reads a dataclass's fields from the sources listed in the module docstring."""

    section: str = ""
    #: fields Machinery already has in the core's config section (read from there, never from env here)
    go_fields: frozenset[str] = frozenset()

    @classmethod
    def of(cls: type[T], config: Config, query: Mapping[str, str] | None = None, **options: Any) -> T:
        """The settings for ``config``, with ``query`` (URL parameters) and ``options`` on top."""
        section_name: str = getattr(cls, "section")  # noqa: B009 - a class attribute of the subclass
        go_fields: frozenset[str] = getattr(cls, "go_fields")  # noqa: B009
        section = getattr(config, section_name, None)
        query = dict(query or {})
        values: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        for name in list(query) + list(options):
            if name not in known or name == "client":
                names = ", ".join(sorted(set(known) - {"client"}))
                raise ConfigError(f"unknown {section_name} setting {name!r}; known: {names}")
        for name, spec in known.items():
            what = f"{section_name}.{name}"
            parse: _Parser = _PARSERS.get(str(spec.type), _as_is)
            env = os.environ.get(f"MACHINERY_{section_name}_{name}".upper())
            if name in query:
                values[name] = parse(query[name], what)
            elif name in options:
                values[name] = parse(options[name], what) if options[name] is not None else None
            elif section is not None and hasattr(section, name):
                values[name] = getattr(section, name)
            elif env is not None and name not in go_fields:
                values[name] = parse(env, what)
        settings = cls(**values)
        settings.validate()  # type: ignore[attr-defined]
        return settings


@dataclass(frozen=True)
class SQSSettings(_Section):
    """SQS broker settings. ``wait_time_seconds``, ``visibility_timeout``, ``visibility_heartbeat`` and
    ``client`` are Machinery's (``Config.sqs``); the rest are this package's additions."""

    section = "sqs"
    go_fields = frozenset({"wait_time_seconds", "visibility_timeout", "visibility_heartbeat", "client"})

    #: Longest long poll of one ReceiveMessage, 0-20 s (0: short polls, as Go's default).
    wait_time_seconds: int = 20
    #: Visibility timeout asked for on receive; None: the queue's own setting (30 s unless changed).
    visibility_timeout: int | None = None
    #: Keep running messages invisible: renew their visibility every half visibility timeout.
    visibility_heartbeat: bool = True
    #: A ready boto3 SQS client to use instead of building one (Machinery's ``SQSConfig.Client``).
    client: Any = None
    #: Create missing queues (and their dead-letter queues). Off: a missing queue is an error naming it.
    create_missing: bool = True
    #: The dead-letter queue of a queue without a redrive policy: ``{queue}`` is replaced by its name
    #: (``.fifo`` stays at the end). Empty: ``nack(requeue=False)`` on such a queue deletes the message.
    dead_letter_queue: str = "{queue}-dlq"
    #: Queues this package creates get a redrive policy to their dead-letter queue after this many
    #: receives (0: no redrive policy, the dead-letter queue is only used by ``nack(requeue=False)``).
    max_receive_count: int = 0
    #: Longest DelaySeconds of one hop (SQS's limit is 900 s); a later ETA is re-delayed hop by hop.
    delay_hop_seconds: int = MAX_DELAY_SECONDS
    #: MessageGroupId on FIFO queues when the signature has no ``broker_message_group_id``.
    message_group_id: str = "machinery"

    def validate(self) -> None:
        problems = []
        if not 0 <= self.wait_time_seconds <= MAX_WAIT_SECONDS:
            problems.append(f"wait_time_seconds must be 0-{MAX_WAIT_SECONDS} (SQS limit)")
        if self.visibility_timeout is not None and not 1 <= self.visibility_timeout <= MAX_VISIBILITY_SECONDS:
            problems.append(f"visibility_timeout must be empty or 1-{MAX_VISIBILITY_SECONDS} seconds")
        if self.dead_letter_queue and "{queue}" not in self.dead_letter_queue:
            problems.append("dead_letter_queue must contain {queue} (or be empty)")
        if self.max_receive_count < 0 or self.max_receive_count > 1000:
            problems.append("max_receive_count must be 0-1000 (SQS limit)")
        if self.max_receive_count and not self.dead_letter_queue:
            problems.append("max_receive_count needs a dead_letter_queue name")
        if not 1 <= self.delay_hop_seconds <= MAX_DELAY_SECONDS:
            problems.append(f"delay_hop_seconds must be 1-{MAX_DELAY_SECONDS} (SQS limit)")
        if not self.message_group_id:
            problems.append("message_group_id must not be empty")
        if problems:
            raise ConfigError("SQS settings: " + "; ".join(problems))

    def dead_letter_name(self, queue: str) -> str:
        """The dead-letter queue's name for ``queue`` (empty when dead-lettering is off)."""
        if not self.dead_letter_queue:
            return ""
        if queue.endswith(".fifo"):
            return self.dead_letter_queue.replace("{queue}", queue.removesuffix(".fifo")) + ".fifo"
        return self.dead_letter_queue.replace("{queue}", queue)


@dataclass(frozen=True)
class DynamoDBSettings(_Section):
    """DynamoDB backend settings: Machinery's tables (``Config.dynamodb``) plus ``create_missing``."""

    section = "dynamodb"
    go_fields = frozenset({"task_states_table", "group_metas_table", "client"})

    task_states_table: str = "task_states"
    group_metas_table: str = "group_metas"
    #: A ready boto3 DynamoDB client (Machinery's ``DynamoDBConfig.Client``).
    client: Any = None
    #: Create missing tables (on-demand capacity, TTL on ``TTL``). Off: a missing table is an error.
    create_missing: bool = True
    #: Longest pause between two reads of a waiting ``wait()`` (it starts at 50 ms and grows).
    max_poll_interval: float = 0.5

    def validate(self) -> None:
        if not self.task_states_table or not self.group_metas_table:
            raise ConfigError("DynamoDB settings: task_states_table and group_metas_table must not be empty")
        if not 0.05 <= self.max_poll_interval <= 60:
            raise ConfigError("DynamoDB settings: max_poll_interval must be 0.05-60 seconds")

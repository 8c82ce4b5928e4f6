"""Machinery for Python: a distributed task queue, wire-compatible with Go Machinery.

>>> from machinery import Machinery, Config
>>> app = Machinery(Config(broker="memory://", result_backend="memory://", eager=True))
>>> @app.task
... def add(*args: int) -> int:
...     return sum(args)
>>> app.send_task(add.s(1, 1)).get(timeout=5)
2
"""

from .app import Machinery
from .config import Config
from .errors import (
    ConfigError,
    MachineryError,
    NotRegisteredError,
    PluginNotFoundError,
    ResultNotReady,
    ResultTimeoutError,
    Retry,
    TaskError,
    TimeLimitExceeded,
)
from .log import set_logger
from .result import AsyncResult, ChainResult, ChordResult, GroupResult
from .signature import Arg, GroupMeta, Signature, State, TaskState
from .task import Task, current_signature
from .workflow import Chain, Chord, Group

__version__ = "0.2.0"

__all__ = [
    "Arg",
    "AsyncResult",
    "Chain",
    "ChainResult",
    "Chord",
    "ChordResult",
    "Config",
    "ConfigError",
    "Group",
    "GroupMeta",
    "GroupResult",
    "Machinery",
    "MachineryError",
    "NotRegisteredError",
    "PluginNotFoundError",
    "ResultNotReady",
    "ResultTimeoutError",
    "Retry",
    "Signature",
    "State",
    "Task",
    "TaskError",
    "TaskState",
    "TimeLimitExceeded",
    "current_signature",
    "set_logger",
]

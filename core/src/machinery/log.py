"""The ``machinery`` logger, replaceable like Machinery's ``log.Set``."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["logger", "set_logger"]


class _LoggerProxy:
    """Forwards to the current logger, so ``set_logger`` reaches every module at once."""

    def __init__(self) -> None:
        self.target: logging.Logger | logging.LoggerAdapter[logging.Logger] = logging.getLogger("machinery")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


logger: Any = _LoggerProxy()


def set_logger(new_logger: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
    """Send Machinery's log lines to ``new_logger`` instead of ``logging.getLogger("machinery")``."""
    logger.target = new_logger

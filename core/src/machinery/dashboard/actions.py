"""The dashboard's actions: re-send a dead letter, re-send a failed task, purge a queue.

Re-sending keeps the task's **uuid**: the task's page then shows the failure and the new run in one
history, and a failed member of a group or chord counts again when it succeeds (a new uuid would leave
the group waiting for the old one forever). The message is published as recorded, with its ETA cleared
(it runs now) and PENDING stored first, like any send. A dead letter stays in the broker's dead-letter
store after it is re-sent (brokers offer no way to delete one); its task's state shows the new run.

Each function returns a sentence saying what was done, or raises :class:`ActionError`.
"""

from __future__ import annotations

import logging

from ..app import Machinery
from ..broker import SupportsDeadLetters
from ..events import SupportsEvents
from ..signature import Signature
from .model import recorded_signature

__all__ = ["ActionError", "purge_queue", "resend_dead_letter", "resend_task"]

log = logging.getLogger("machinery.dashboard")

#: dead letters looked through for the one to re-send, per queue
DEAD_LETTER_SCAN = 1000


class ActionError(Exception):
    """An action that cannot be done (the message says why); nothing was changed."""


def resend_task(app: Machinery, store: SupportsEvents | None, uuid: str) -> str:
    """Publish the recorded message of failed task ``uuid`` again (same uuid, no ETA)."""
    if store is None:
        raise ActionError("the result backend keeps no events, so no message was recorded")
    state = app.backend.get_state(uuid)
    if state is not None and not state.is_failure:
        raise ActionError(f"task {uuid} is {state.state.value}, not FAILURE: only failed tasks are re-sent")
    sig = recorded_signature(store, uuid)
    if sig is None:
        raise ActionError(
            f"task {uuid} has no recorded message (turn on Config.events.record_args to re-send failed tasks)"
        )
    return _resend(app, sig, "failed task")


def resend_dead_letter(app: Machinery, queue: str, uuid: str) -> str:
    """Publish dead letter ``uuid`` of ``queue`` again (same uuid, no ETA)."""
    broker = app.broker
    if not isinstance(broker, SupportsDeadLetters):
        raise ActionError("this broker keeps no dead letters")
    for letter in broker.dead_letters(queue, limit=DEAD_LETTER_SCAN):
        sig = letter.signature
        if sig is not None and sig.uuid == uuid:
            return _resend(app, sig, "dead letter")
    raise ActionError(f"no readable dead letter of task {uuid} in queue {queue}")


def _resend(app: Machinery, sig: Signature, what: str) -> str:
    sig.eta = None
    sig.routing_key = sig.routing_key or app.config.default_queue
    app.send_task(sig)
    log.info("dashboard: re-sent %s %s (%s) to queue %s", what, sig.uuid, sig.name, sig.routing_key)
    return f"re-sent {what} {sig.name} {sig.uuid} to queue {sig.routing_key}"


def purge_queue(app: Machinery, queue: str) -> str:
    """Delete every message waiting in ``queue`` (running tasks are not touched)."""
    if not queue:
        raise ActionError("no queue named")
    app.broker.purge(queue)
    log.info("dashboard: purged queue %s", queue)
    return f"purged queue {queue}"

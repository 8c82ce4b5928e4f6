"""Optional features a broker or backend declares, like SQLAlchemy dialect requirements.

The contract kit (:mod:`machinery.testing`) runs a feature's tests only when it is declared; a
declared feature must pass them. Plain strings so third-party plugins can add their own.
"""

from __future__ import annotations

__all__ = ["Capability"]


class Capability:
    """Names of the declared capabilities."""

    # broker
    DELAY = "delay"  #: ETA honoured by the broker itself (not early, promptly)
    PRIORITY = "priority"  #: higher Signature.priority is consumed first
    PENDING_LIST = "pending_list"  #: pending(queue) lists waiting messages in order
    DELAYED_LIST = "delayed_list"  #: delayed() lists messages waiting for their ETA
    DEAD_LETTER = "dead_letter"  #: nack(requeue=False) keeps the message in a dead-letter store
    EXTEND_VISIBILITY = "extend_visibility"  #: Delivery.extend() pushes the lease forward
    FIFO = "fifo"  #: messages of one queue are delivered in publish order
    REDELIVERY = "redelivery"  #: an unacked message comes back after a lease / connection loss
    # backend
    PUSH_WAIT = "push_wait"  #: wait() wakes when a state lands, without polling
    EXPIRY = "expiry"  #: results really disappear after results_expire_in
    # shared
    MULTI_PROCESS = "multi_process"  #: safe to use from several processes at once

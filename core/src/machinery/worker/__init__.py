"""The worker side: consume, run, store, ack. It depends on the app (``machinery.app``), never the reverse:
``Machinery.worker()`` imports this package lazily.

- :mod:`.worker`: :class:`Worker`, the consume loop, slots, signals and settling of deliveries.
- :mod:`.runner`: runs one task (retries, time limits, workflows' next steps).
- :mod:`.statewriter`: the thread that batches task states to the backend and acks after they are stored.
- :mod:`.procpool`: the optional process pool (``-P process``), where a hard time limit can kill the child.
- :mod:`.timelimit`: soft and hard time limits for thread-run tasks.
"""

from .worker import Worker, WorkerThread

__all__ = ["Worker", "WorkerThread"]

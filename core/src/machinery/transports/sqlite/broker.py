"""``sqlite:///path.db``: a broker on one SQLite file, safe for many processes and threads.

A message is a row of ``messages``, either *ready* (consumable now, indexed by queue, priority and
id) or *waiting* until ``visible_at`` (an ETA, a nack delay, or a lease; indexed by queue and time),
so consuming never scans past delayed or leased messages however many there are. Consuming first
makes the queue's due waiting messages ready, then leases the first ``max_messages`` ready ones, in
one transaction: they get this broker's owner id and wait until the lease's end. A daemon thread
(the broker's :class:`~machinery.lease.LeaseKeeper`) renews every lease this broker still holds
every ``sqlite.renew`` seconds (one UPDATE), so a long task is not redelivered while its process
lives. When the process dies, its leases run out after ``sqlite.lease`` seconds and the messages
are consumed again (``redelivered=True``).

``ack`` deletes the row, ``nack`` makes it visible again (optionally later), ``nack(requeue=False)``
moves it to ``dead_letters``. Acks and nacks carry the lease they belong to: after a lease ran out
and another consumer took the message, the stale delivery's ack does nothing.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ... import codec
from ...broker import BaseBroker, DeadLetter, Delivery, decode_body
from ...capabilities import Capability
from ...config import Config
from ...delivery import BaseDelivery
from ...errors import BrokerError
from ...lease import LeaseKeeper
from ...signature import Signature, TaskState
from .store import SQLiteStore, SQLiteTarget, chunks, on_fork, parse_sqlite_url, placeholders

if TYPE_CHECKING:
    from .backend import SQLiteBackend

__all__ = ["SQLiteBroker", "SQLiteDelivery"]

logger = logging.getLogger("machinery.sqlite")

MESSAGES = "messages"

_PROMOTE_SQL = "UPDATE messages SET ready = 1 WHERE queue = ? AND ready = 0 AND visible_at <= ?"
_LEASE_SQL = """
UPDATE messages SET ready = 0, lease_owner = ?, visible_at = ?, delivery_count = delivery_count + 1
WHERE id IN (
    SELECT id FROM messages INDEXED BY messages_ready
    WHERE queue = ? AND ready = 1 ORDER BY priority DESC, id LIMIT ?
)
RETURNING id, body, priority, delivery_count
"""
_PROBE_SQL = """
SELECT EXISTS (SELECT 1 FROM messages INDEXED BY messages_ready WHERE queue = ?1 AND ready = 1),
       (SELECT MIN(visible_at) FROM messages INDEXED BY messages_waiting WHERE queue = ?1 AND ready = 0)
"""
#: an ack: the row goes only while the lease is still this delivery's
_DELETE_SQL = "DELETE FROM messages WHERE id = ? AND lease_owner = ? AND delivery_count = ?"
_INSERT_SQL = (
    "INSERT INTO messages (queue, body, priority, ready, visible_at, created) VALUES (?, ?, ?, ?, ?, ?)"
)


class SQLiteDelivery(BaseDelivery):
    """One leased message. ``signature`` is None (and ``error`` says why) when the body is malformed."""

    __slots__ = ("_broker", "id", "owner", "priority")

    def __init__(
        self,
        broker: SQLiteBroker,
        id: int,
        queue: str,
        body: bytes,
        priority: int,
        delivery_count: int,
        owner: str,
    ) -> None:
        super().__init__(body, queue=queue, delivery_count=delivery_count)
        self._broker = broker
        self.id = id
        self.priority = priority
        self.owner = owner

    def _ack(self) -> None:
        """Delete the message (nothing when the lease was lost meanwhile)."""
        self._broker._delete([self])

    def _nack(self, requeue: bool, delay: float | None, reason: str) -> None:
        """Make the message visible again (after ``delay`` seconds), or dead-letter it (with ``reason``)."""
        self._broker._nack(self, requeue, delay, reason)

    def _extend(self, seconds: float) -> None:
        """Keep the lease at least ``seconds`` more from now."""
        self._broker._extend(self, seconds)


class SQLiteBroker(BaseBroker):
    """Broker on a SQLite file (WAL). See the module docstring for the lease model."""

    capabilities = frozenset(
        {
            Capability.DELAY,
            Capability.PRIORITY,
            Capability.PENDING_LIST,
            Capability.DELAYED_LIST,
            Capability.DEAD_LETTER,
            Capability.EXTEND_VISIBILITY,
            Capability.FIFO,
            Capability.REDELIVERY,
            Capability.MULTI_PROCESS,
        }
    )

    #: a message published by another process is seen within this many seconds by a waiting consumer
    poll_max = 0.05

    def __init__(
        self,
        path: str | os.PathLike[str] | SQLiteTarget,
        config: Config | None = None,
        *,
        lease: float | None = None,
        renew: float | None = None,
    ) -> None:
        super().__init__(config)
        target = path if isinstance(path, SQLiteTarget) else SQLiteTarget(os.path.abspath(os.fspath(path)))
        if lease is not None or renew is not None:
            target = SQLiteTarget(
                target.path,
                lease if lease is not None else target.lease,
                renew if renew is not None else target.renew,
            )
        self.target = target
        self._store = SQLiteStore(target, BrokerError)
        self._init_process_state()
        on_fork(self)

    def _init_process_state(self) -> None:
        self.owner = uuid.uuid4().hex
        #: queue -> the last lease took ``max_messages``: the next consume leases at once, without the
        #: read that looks for ready messages first (under load that read always says yes)
        self._full: dict[str, bool] = {}
        #: renews the leases of this broker's unsettled deliveries every ``renew`` seconds, in one thread
        self._keeper: LeaseKeeper[SQLiteDelivery] = LeaseKeeper(
            self._renew_leases, self._renew_interval, name=f"sqlite-lease-renewer-{self.owner[:8]}"
        )

    def _after_fork(self) -> None:
        # The parent's leases stay the parent's: this process starts with none and a new owner id.
        self._init_process_state()

    @classmethod
    def from_url(cls, url: str, config: Config) -> SQLiteBroker:
        """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (``?lease=&renew=`` override the
        config). No I/O: the file is opened on first use."""
        return cls(parse_sqlite_url(url), config)

    def __repr__(self) -> str:
        return f"<SQLiteBroker {self.target.path}>"

    @property
    def path(self) -> str:
        return self.target.path

    @property
    def lease(self) -> float:
        """Seconds a consumed message stays leased without renewal (read each time: reloadable)."""
        return self.target.lease_seconds(self.config)

    @property
    def renew(self) -> float:
        """Seconds between lease renewals (read each time: reloadable)."""
        return self.target.renew_seconds(self.config)

    def _renew_interval(self) -> float:
        return self.renew

    # producing -------------------------------------------------------------------------------
    def _row(self, signature: Signature, now: float) -> tuple[str, bytes, int, bool, float, float]:
        queue = signature.routing_key or self.config.default_queue
        visible_at = signature.eta.timestamp() if signature.eta is not None else now
        body = codec.encode_signature(signature)
        return queue, body, int(signature.priority), visible_at <= now, visible_at, now

    def publish(self, signature: Signature) -> None:
        row = self._row(signature, time.time())
        self._store.execute_write("publish", _INSERT_SQL, row)
        self._store.hub.notify(MESSAGES)

    def publish_many(self, signatures: Sequence[Signature]) -> None:
        """Publish all of ``signatures`` in one transaction (all or none)."""
        if not signatures:
            return
        now = time.time()
        rows = [self._row(s, now) for s in signatures]
        with self._store.write("publish_many") as conn:
            conn.executemany(_INSERT_SQL, rows)
        self._store.hub.notify(MESSAGES)

    def publish_with_states(
        self, signatures: Sequence[Signature], states: Sequence[TaskState], backend: SQLiteBackend
    ) -> bool:
        """Store ``states`` (the PENDING records) and publish ``signatures`` in one transaction when
        ``backend`` is on this broker's file (one commit instead of two); False otherwise. The core
        reaches it through the ``machinery_publish_with_states`` hook of the built-in transports."""
        if backend.path != self._store.path or not signatures:
            return False
        now = time.time()
        rows = [self._row(s, now) for s in signatures]
        with self._store.write("publish") as conn:
            backend.write_states(conn, states, refresh_groups=False)  # a group is made before its sends
            conn.executemany(_INSERT_SQL, rows)
        backend.notify_states()
        self._store.hub.notify(MESSAGES)
        return True

    def publish_raw(self, queue: str, body: bytes, *, priority: int = 0, eta: float | None = None) -> int:
        """Put ``body`` on ``queue`` as is (tests use it for malformed messages); returns the row id."""
        now = time.time()
        visible_at = now if eta is None else eta
        cursor = self._store.execute_write(
            "publish_raw", _INSERT_SQL, (queue, bytes(body), priority, visible_at <= now, visible_at, now)
        )
        self._store.hub.notify(MESSAGES)
        return int(cursor.lastrowid or 0)

    # consuming -------------------------------------------------------------------------------
    def consume(self, queue: str, max_messages: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_messages`` visible messages of ``queue`` (priority first, then publish
        order), waiting up to ``timeout`` seconds for the first one."""
        if max_messages <= 0:
            return []
        store = self._store
        if self._full.get(queue):  # the last lease took all it asked for: more are likely ready
            deliveries = self._lease(queue, max_messages)
            if deliveries:
                return list(deliveries)
        deadline = time.monotonic() + max(0.0, timeout)
        interval = store.poll_min
        seen: tuple[int, int] | None = None  # the first look is optimistic: no snapshot
        while True:
            now = time.time()
            with store.errors("consume"):
                ready, next_at = store.conn().execute(_PROBE_SQL, (queue,)).fetchone()
            if ready or (next_at is not None and next_at <= now):
                deliveries = self._lease(queue, max_messages)
                if deliveries:
                    return list(deliveries)
                continue  # another consumer was faster; look again
            if seen is None:  # snapshot, then look once more: a change in between is not missed
                seen = store.snapshot(MESSAGES)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if next_at is not None:  # a delayed message or a lease runs out before the deadline?
                remaining = min(remaining, max(0.0, next_at - time.time()) + 0.001)
            interval = store.wait_change(MESSAGES, seen, remaining, interval, self.poll_max)
            seen = store.snapshot(MESSAGES)

    def _lease(self, queue: str, max_messages: int) -> list[SQLiteDelivery]:
        now = time.time()
        owner = self.owner
        with self._store.write("consume") as conn:
            conn.execute(_PROMOTE_SQL, (queue, now))
            rows = conn.execute(_LEASE_SQL, (owner, now + self.lease, queue, max_messages)).fetchall()
        self._full[queue] = len(rows) >= max_messages
        if not rows:
            return []
        rows.sort(key=lambda r: (-r[2], r[0]))
        deliveries = [SQLiteDelivery(self, r[0], queue, bytes(r[1]), r[2], r[3], owner) for r in rows]
        self._keeper.add(deliveries)
        return deliveries

    # settling --------------------------------------------------------------------------------
    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries of this broker in one transaction (a fast path for workers)."""
        mine: list[SQLiteDelivery] = []
        for delivery in deliveries:
            if isinstance(delivery, SQLiteDelivery) and delivery._broker is self:
                if delivery.claim():
                    mine.append(delivery)
            else:
                delivery.ack()
        self._delete(mine)

    def ack_with_states(
        self, deliveries: Sequence[Delivery], states: Sequence[TaskState], backend: object
    ) -> bool:
        """Store ``states`` and ack ``deliveries`` in one transaction when ``backend`` is a sqlite
        backend on this broker's file and every delivery is this broker's and unsettled (one commit
        instead of two for the worker's state writer); False, having done nothing, otherwise."""
        from .backend import SQLiteBackend  # the backend module imports nothing of the broker's

        if not isinstance(backend, SQLiteBackend) or backend.path != self._store.path or not states:
            return False
        mine = [
            d for d in deliveries if isinstance(d, SQLiteDelivery) and d._broker is self and not d.settled
        ]
        if len(mine) != len(deliveries):
            return False
        with self._store.write("store states and ack") as conn:
            backend.write_states(conn, states)
            conn.executemany(_DELETE_SQL, [(d.id, d.owner, d.delivery_count) for d in mine])
        for delivery in mine:  # settled only once the transaction committed
            delivery.claim()
        backend.notify_states()
        return True

    def _delete(self, deliveries: Sequence[SQLiteDelivery]) -> None:
        """Delete the rows of settled ``deliveries`` whose lease is still theirs."""
        if not deliveries:
            return
        params = [(d.id, d.owner, d.delivery_count) for d in deliveries]
        if len(params) == 1:
            self._store.execute_write("ack", _DELETE_SQL, params[0])
        else:
            with self._store.write("ack") as conn:
                conn.executemany(_DELETE_SQL, params)

    def _nack(self, delivery: SQLiteDelivery, requeue: bool, delay: float | None, reason: str = "") -> None:
        key = (delivery.id, delivery.owner, delivery.delivery_count)
        if requeue:
            now = time.time()
            visible_at = now + max(0.0, delay or 0.0)
            self._store.execute_write(
                "nack",
                "UPDATE messages SET ready = ?, visible_at = ?, lease_owner = NULL "
                "WHERE id = ? AND lease_owner = ? AND delivery_count = ?",
                (visible_at <= now, visible_at, *key),
            )
            self._store.hub.notify(MESSAGES)
            return
        with self._store.write("dead-letter") as conn:
            moved = conn.execute(
                "INSERT INTO dead_letters (queue, body, priority, delivery_count, created, died_at, reason) "
                "SELECT queue, body, priority, delivery_count, created, ?, ? FROM messages "
                "WHERE id = ? AND lease_owner = ? AND delivery_count = ?",
                (time.time(), reason, *key),
            ).rowcount
            if moved:
                conn.execute("DELETE FROM messages WHERE id = ?", (delivery.id,))
                conn.execute(  # dead letters expire (rare writes: the scan is cheap enough)
                    "DELETE FROM dead_letters WHERE died_at < ?",
                    (time.time() - self.config.dead_letter_expire_in,),
                )

    def _extend(self, delivery: SQLiteDelivery, seconds: float) -> None:
        self._store.execute_write(
            "extend",
            "UPDATE messages SET ready = 0, visible_at = max(visible_at, ?) "
            "WHERE id = ? AND lease_owner = ? AND delivery_count = ?",
            (time.time() + seconds, delivery.id, delivery.owner, delivery.delivery_count),
        )

    # lease renewal (the LeaseKeeper's thread calls _renew_leases) ------------------------------
    def renew_leases(self) -> int:
        """Push every lease this broker holds to ``now + lease`` now (the keeper does it every
        ``renew`` seconds); the number renewed."""
        return self._renew_leases(self._keeper.live())

    def _renew_leases(self, deliveries: Sequence[SQLiteDelivery]) -> int:
        """One UPDATE per 900 leases; the number renewed."""
        if not deliveries:
            return 0
        renewed = 0
        with self._store.write("renew leases") as conn:
            lease_end = time.time() + self.lease
            for ids in chunks(sorted(d.id for d in deliveries)):
                renewed += conn.execute(
                    f"UPDATE messages SET ready = 0, visible_at = max(visible_at, ?) "
                    f"WHERE lease_owner = ? AND id IN ({placeholders(len(ids))})",
                    (lease_end, self.owner, *ids),
                ).rowcount
        return renewed

    # inspecting ------------------------------------------------------------------------------
    def pending(self, queue: str) -> list[Signature]:
        """Signatures waiting in ``queue`` (visible, not leased), in consume order. Malformed
        bodies are skipped."""
        cursor = self._store.execute(
            "pending",
            "SELECT priority, id, body FROM messages INDEXED BY messages_ready "
            "WHERE queue = ?1 AND ready = 1 "
            "UNION ALL SELECT priority, id, body FROM messages INDEXED BY messages_waiting "
            "WHERE queue = ?1 AND ready = 0 AND visible_at <= ?2 "
            "ORDER BY 1 DESC, 2",
            (queue, time.time()),
        )
        return [sig for (_, _, body) in cursor.fetchall() if (sig := decode_body(body)[0]) is not None]

    def depth(self, queue: str) -> int:
        """How many messages :meth:`pending` would list (counted by the indexes, nothing decoded)."""
        row = self._store.execute(
            "depth",
            "SELECT (SELECT COUNT(*) FROM messages INDEXED BY messages_ready "
            "WHERE queue = ?1 AND ready = 1) + "
            "(SELECT COUNT(*) FROM messages INDEXED BY messages_waiting "
            "WHERE queue = ?1 AND ready = 0 AND visible_at <= ?2)",
            (queue, time.time()),
        ).fetchone()
        return int(row[0])

    def delayed(self) -> list[Signature]:
        """Signatures waiting for their ETA (or a nack delay), every queue, in ETA order."""
        cursor = self._store.execute(
            "delayed",
            "SELECT body FROM messages WHERE ready = 0 AND lease_owner IS NULL AND visible_at > ? "
            "ORDER BY visible_at, id",
            (time.time(),),
        )
        return [sig for (body,) in cursor.fetchall() if (sig := decode_body(body)[0]) is not None]

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` messages of ``queue`` (every queue when None) nacked with
        ``requeue=False``, oldest first."""
        where, params = ("WHERE queue = ? ", (queue,)) if queue is not None else ("", ())
        cursor = self._store.execute(
            "dead_letters",
            "SELECT queue, body, delivery_count, died_at, reason FROM dead_letters "
            f"{where}ORDER BY id LIMIT ?",
            (*params, max(0, limit)),
        )
        return [
            DeadLetter(bytes(body), reason, datetime.fromtimestamp(died_at, UTC), count, q)
            for q, body, count, died_at, reason in cursor.fetchall()
        ]

    def count(self, queue: str | None = None) -> int:
        """Messages stored (waiting, delayed or leased) in ``queue``, or in every queue."""
        if queue is None:
            cursor = self._store.execute("count", "SELECT COUNT(*) FROM messages")
        else:
            cursor = self._store.execute("count", "SELECT COUNT(*) FROM messages WHERE queue = ?", (queue,))
        return int(cursor.fetchone()[0])

    def purge(self, queue: str) -> None:
        """Delete every message of ``queue`` except those leased right now (their consumer still
        acks or nacks them): ready ones, delayed ones and ones whose lease ran out."""
        self._store.execute_write(
            "purge",
            "DELETE FROM messages WHERE queue = ? "
            "AND NOT (ready = 0 AND lease_owner IS NOT NULL AND visible_at > ?)",
            (queue, time.time()),
        )

    def purge_dead_letters(self, queue: str) -> None:
        self._store.execute_write("purge_dead_letters", "DELETE FROM dead_letters WHERE queue = ?", (queue,))

    # closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop renewing, give back unsettled leases at once (they are redelivered), close the
        connections. Idempotent."""
        outstanding = sorted(d.id for d in self._keeper.close())
        if outstanding:
            try:
                with self._store.write("returning leases") as conn:
                    for ids in chunks(outstanding):
                        conn.execute(
                            f"UPDATE messages SET ready = 1, visible_at = ?, lease_owner = NULL "
                            f"WHERE lease_owner = ? AND id IN ({placeholders(len(ids))})",
                            (time.time(), self.owner, *ids),
                        )
                self._store.hub.notify(MESSAGES)
            except Exception:
                logger.warning("sqlite broker %s: could not return %d leases", self.path, len(outstanding))
        self._store.close()

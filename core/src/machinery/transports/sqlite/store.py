"""What the ``sqlite://`` broker, backend and lock share: URL parsing, connections, schema, wake-ups.

One SQLite file in WAL mode holds messages, states, groups and locks; the events store has its own file
next to it (``<file>-events``, events.py says why). Each thread of each process gets its own connection
(SQLite connections must not cross a ``fork``; those inherited by a child are set aside, never used
or closed). Writes run in ``BEGIN IMMEDIATE`` transactions, so concurrent writers queue up on the
file lock (``busy_timeout``) instead of failing with a stale snapshot; the writers of one process
take turns on a :class:`threading.Lock` first, so only other processes wait in SQLite's busy handler
(which sleeps in steps of milliseconds). Being one at a time anyway, the writers of a process share
one connection per file (the :class:`Hub`'s): in WAL mode a connection drops its whole page cache when
another connection committed since its last transaction, so per-thread writers (the consumer's lease,
the state writer, the events thread) each began with a cold cache and read their pages again.
``synchronous=NORMAL``: a commit is not fsynced (WAL keeps the file consistent; a power cut may lose
the last commits, a process crash loses nothing).

Waiting (``consume``, ``wait``) is woken two ways: in-process by a :class:`threading.Condition`
shared by every store on the same file, and across processes by polling ``PRAGMA data_version``
(a few microseconds; it changes when another connection commits), with a short backoff.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, unquote

from ...config import Config
from ...errors import ConfigError, MachineryError
from ...forking import at_fork
from ...redact import redact_url

__all__ = [
    "EVENTS",
    "MAIN",
    "SCHEMA_VERSION",
    "Hub",
    "Layout",
    "SQLiteStore",
    "SQLiteTarget",
    "chunks",
    "events_target",
    "parse_sqlite_url",
]

logger = logging.getLogger("machinery.sqlite")

#: 1 was a pre-release layout (no ready/waiting split); there is no upgrade path from it
SCHEMA_VERSION = 4
#: seconds a writer waits for the file lock before failing
BUSY_TIMEOUT = 30.0
#: WAL pages after which a commit copies the WAL back into the database file (SQLite's default is
#: 1,000: under a worker's load, a checkpoint with its two fsyncs every ≈ 20 batches of 8 tasks; this
#: makes them 10x rarer and each page hot between checkpoints is copied once; the WAL file stays ≤ ≈ 40 MB)
WAL_CHECKPOINT_PAGES = 10_000
#: a writing process copies the WAL back into the database file from a thread of its own after this many
#: commits (a PASSIVE checkpoint: writers go on meanwhile), so the commit that crosses
#: WAL_CHECKPOINT_PAGES, which would copy the pages itself while holding up every writer, rarely comes
CHECKPOINT_EVERY = 100
#: largest number of ``?`` in one ``IN (...)`` list (SQLite's old default limit was 999)
MAX_PARAMS = 900

_URL_FORM = (
    "use sqlite:///relative/path.db (three slashes, path relative to the working directory) or "
    "sqlite:////absolute/path.db (four slashes), optionally with ?lease=SECONDS&renew=SECONDS&mode=0600"
)

#: permissions of a database file machinery creates (and so of its -wal/-shm files, which SQLite creates
#: with the database's mode): only the owner may read tasks' arguments and results
DEFAULT_FILE_MODE = 0o600
#: schema version -> the statements that upgrade a database of that version by one
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE dead_letters ADD COLUMN reason TEXT NOT NULL DEFAULT ''",),
    3: (),  # the events store's tables, EVENTS_SCHEMA (filled in below)
}

#: the events store (machinery.events); ids grow by one per event, so the newest N are ``id > max - N``
EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_uuid TEXT NOT NULL,
    at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_task ON events (task_uuid, id);

CREATE TABLE IF NOT EXISTS heartbeats (
    worker TEXT PRIMARY KEY,
    sent_at REAL NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID;
"""

SCHEMA = (
    EVENTS_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    -- 1: waiting, consumable now; 0: delayed (ETA, nack delay) or leased, until visible_at
    ready INTEGER NOT NULL,
    -- unix time a message that is not ready becomes consumable (for a leased one: the lease end)
    visible_at REAL NOT NULL,
    -- the broker instance holding (or that last held) the lease, NULL when never leased or nacked
    lease_owner TEXT,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
-- every message is in exactly one of these two: consume never scans delayed or leased messages
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, priority DESC, id) WHERE ready = 1;
CREATE INDEX IF NOT EXISTS messages_waiting ON messages (queue, visible_at) WHERE ready = 0;

CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    priority INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL,
    created REAL NOT NULL,
    died_at REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS dead_letters_queue ON dead_letters (queue, id);

CREATE TABLE IF NOT EXISTS states (
    uuid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    task_name TEXT NOT NULL,
    created_at TEXT,
    record BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS states_expiry ON states (expires_at);

CREATE TABLE IF NOT EXISTS groups (
    group_uuid TEXT PRIMARY KEY,
    task_uuids TEXT NOT NULL,
    chord_triggered INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS groups_expiry ON groups (expires_at);

CREATE TABLE IF NOT EXISTS group_members (
    task_uuid TEXT NOT NULL,
    group_uuid TEXT NOT NULL,
    PRIMARY KEY (task_uuid, group_uuid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_group ON group_members (group_uuid);

CREATE TABLE IF NOT EXISTS locks (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""
)

T = TypeVar("T")


def chunks(items: Sequence[T], size: int = MAX_PARAMS) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size`` (for ``IN (?, ?, ...)`` lists)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of ``script`` (comments may contain semicolons)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement: {buffer!r}")


MIGRATIONS[3] = tuple(_statements(EVENTS_SCHEMA))


@dataclass(frozen=True)
class Layout:
    """The tables of one database file: the script that creates them, its version, the upgrades."""

    script: str
    version: int
    migrations: dict[int, tuple[str, ...]]


#: the database file the URL names: messages, states, groups, locks (and the events tables of
#: versions 3-4, no longer written: the events moved to their own file)
MAIN = Layout(SCHEMA, SCHEMA_VERSION, MIGRATIONS)
#: the events file's tables. Unlike the database's old ones (EVENTS_SCHEMA): no AUTOINCREMENT (the trim
#: and the sweep never delete the newest row, so ids still only grow while any row is left), and a
#: task's events are found through the first 8 characters of its uuid (then compared in full): index
#: entries a third the size, so each batch of events dirties fewer index pages (≈ 25 % less CPU per event)
EVENTS_FILE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    task_uuid TEXT NOT NULL,
    at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_task ON events (substr(task_uuid, 1, 8), id);

CREATE TABLE IF NOT EXISTS heartbeats (
    worker TEXT PRIMARY KEY,
    sent_at REAL NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID;
"""
#: the events store's own file next to it, ``<file>-events`` (:func:`events_target`)
EVENTS = Layout(EVENTS_FILE_SCHEMA, 1, {})
EVENTS_SUFFIX = "-events"


def placeholders(count: int) -> str:
    return ",".join("?" * count)


# --------------------------------------------------------------------------------------------------
# URLs


@dataclass(frozen=True)
class SQLiteTarget:
    """A parsed ``sqlite://`` URL: the absolute file path and optional lease overrides."""

    path: str
    lease: float | None = None
    renew: float | None = None
    #: permissions given to the database file when machinery creates it (``?mode=0660`` widens them)
    mode: int = DEFAULT_FILE_MODE

    def lease_seconds(self, config: Config) -> float:
        return self.lease if self.lease is not None else float(config.sqlite.lease)

    def renew_seconds(self, config: Config) -> float:
        return self.renew if self.renew is not None else float(config.sqlite.renew)


def _seconds(name: str, text: str, url: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"sqlite URL {redact_url(url)!r}: {name}={text!r} must be a number of seconds > 0")
    return value


def _file_mode(text: str, url: str) -> int:
    """``?mode=0660``: octal permission bits, owner read and write required (SQLite needs both)."""
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777 or value & 0o600 != 0o600:
        raise ConfigError(
            f"sqlite URL {redact_url(url)!r}: mode={text!r} must be octal permission bits that include owner "
            "read and write, e.g. mode=0600 (the default) or mode=0660 (group members too)"
        )
    return value


def events_target(target: SQLiteTarget) -> SQLiteTarget:
    """The events store's file next to ``target``'s (same permissions). Its own file, so the events
    thread's writes take turns on a lock of their own, not with the worker's leases and states."""
    return SQLiteTarget(target.path + EVENTS_SUFFIX, mode=target.mode)


def parse_sqlite_url(url: str) -> SQLiteTarget:
    """Parse ``sqlite:///rel.db`` / ``sqlite:////abs.db`` (SQLAlchemy's form). No I/O.

    A relative path is resolved against the current directory now, so a later ``chdir`` does not
    move the database. Raises :class:`ConfigError` explaining the expected form.
    """
    prefix = "sqlite://"
    shown = redact_url(url)  # error messages show the URL without user info or secret parameters
    if not url.lower().startswith(prefix):
        raise ConfigError(f"not a sqlite URL: {shown!r}; {_URL_FORM}")
    rest = url[len(prefix) :]
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    if not rest.startswith("/"):
        host = redact_url(rest.split("/", 1)[0])  # "user:pw@host" -> "host": the password is never shown
        raise ConfigError(
            f"sqlite URL {shown!r} has a host part ({host!r}) but sqlite URLs have none; {_URL_FORM}"
            if rest.split("/", 1)[0]
            else f"sqlite URL {shown!r} names no database file; {_URL_FORM}"
        )
    path = unquote(rest[1:])
    if not path or path.endswith("/"):
        raise ConfigError(f"sqlite URL {shown!r} names no database file; {_URL_FORM}")
    if path == ":memory:" or path.startswith("file:"):
        raise ConfigError(
            f"sqlite URL {shown!r}: in-memory and file: URIs are not supported (each thread has its own "
            f"connection, so they would not share data); use memory:// for an in-process store, "
            f"or {_URL_FORM}"
        )
    lease: float | None = None
    renew: float | None = None
    mode = DEFAULT_FILE_MODE
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ConfigError(f"sqlite URL {shown!r}: bad query string ({exc}); {_URL_FORM}") from None
    for key, value in pairs:
        if key == "lease":
            lease = _seconds(key, value, url)
        elif key == "renew":
            renew = _seconds(key, value, url)
        elif key == "mode":
            mode = _file_mode(value, url)
        else:
            raise ConfigError(f"sqlite URL {shown!r}: unknown parameter {key!r}; {_URL_FORM}")
    if lease is not None and renew is not None and renew >= lease:
        raise ConfigError(
            f"sqlite URL {shown!r}: renew ({renew:g}) must be shorter than lease ({lease:g}), "
            "or leases expire before they are renewed"
        )
    return SQLiteTarget(os.path.abspath(path), lease, renew, mode)


# --------------------------------------------------------------------------------------------------
# In-process wake-ups


class Hub:
    """Change counters per topic ("messages", "states") for one database file in this process."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self._generations: dict[str, int] = {}
        #: writers of this process take turns here, so only other processes wait on the file lock
        self.writer = threading.Lock()
        #: the connection every writer of this process uses (under ``writer``), opened by the first store
        #: that writes and closed when the last store that used it closes
        self.write_conn: sqlite3.Connection | None = None
        #: the stores (by id) that used ``write_conn`` since they last closed
        self.write_users: set[int] = set()
        self.write_pid = os.getpid()
        #: commits by this process's writers; every CHECKPOINT_EVERY-th wakes the checkpointer thread
        self.commits = 0
        self._checkpoint_due = threading.Event()
        self._checkpointer: threading.Thread | None = None
        #: set after each background checkpoint (tests wait on it)
        self.checkpointed = threading.Event()

    def committed(self, store: SQLiteStore) -> None:
        """Count a commit (the caller holds ``writer``); wake the checkpointer when one is due."""
        self.commits += 1
        if self.commits % CHECKPOINT_EVERY:
            return
        if self._checkpointer is None:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, args=(store,), name="machinery-sqlite-checkpoint", daemon=True
            )
            self._checkpointer.start()
        self._checkpoint_due.set()

    def _checkpoint_loop(self, store: SQLiteStore) -> None:
        """Run a PASSIVE checkpoint each time one is due, on a connection of its own opened for it
        (SQLite does the copying and syncing without the GIL, beside the writers)."""
        while True:
            self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            try:
                with _CHECKPOINTING:  # a fork waits for it: a child must not inherit SQLite mid-call
                    conn = store._open(owner=_HUB_OWNER, track=False)
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    finally:
                        conn.close()
                self.checkpointed.set()
            except Exception as exc:  # the commits' own checkpoint (WAL_CHECKPOINT_PAGES) still runs
                logger.debug("sqlite %s: background checkpoint failed: %s", store.path, exc)

    def generation(self, topic: str) -> int:
        with self.cond:
            return self._generations.get(topic, 0)

    def notify(self, topic: str) -> None:
        with self.cond:
            self._generations[topic] = self._generations.get(topic, 0) + 1
            self.cond.notify_all()

    def wait(self, topic: str, seen: int, timeout: float) -> bool:
        """Block until ``topic`` moved past ``seen`` or ``timeout`` passed; True when it moved."""
        with self.cond:
            if self._generations.get(topic, 0) != seen:
                return True
            if timeout > 0:
                self.cond.wait(timeout)
            return self._generations.get(topic, 0) != seen


_hubs: dict[str, Hub] = {}
_hubs_lock = threading.Lock()
#: held while a background checkpoint is inside SQLite, and by ``os.fork`` around the fork: a thread
#: caught inside SQLite at the fork holds SQLite's own mutexes in the child for good (a child of a
#: process that had just checkpointed hung on its first query)
_CHECKPOINTING = threading.Lock()
os.register_at_fork(
    before=_CHECKPOINTING.acquire,
    after_in_parent=_CHECKPOINTING.release,
    after_in_child=_CHECKPOINTING.release,
)


def _hub_for(path: str) -> Hub:
    with _hubs_lock:
        hub = _hubs.get(path)
        if hub is None:
            hub = _hubs[path] = Hub()
        return hub


# --------------------------------------------------------------------------------------------------
# Fork safety

#: connections inherited from a parent process: kept alive, never used or closed (closing an
#: inherited SQLite connection in a child can disturb the parent's locks and WAL)
_abandoned: list[Any] = []


def on_fork(obj: Any) -> None:
    """Call ``obj._after_fork()`` in a child process right after ``os.fork`` (after this module's
    own reset, registered first)."""
    at_fork(obj, "_after_fork")


def _after_fork_in_child() -> None:
    global _hubs_lock, _opening
    _hubs_lock = threading.Lock()
    _opening = threading.Lock()
    _abandoned.extend(hub.write_conn for hub in _hubs.values() if hub.write_conn is not None)
    _hubs.clear()


at_fork(sys.modules[__name__], "_after_fork_in_child")


# --------------------------------------------------------------------------------------------------
# Connections


#: held while a database file is created and a connection opened (see SQLiteStore._open)
_opening = threading.Lock()


def _create_private(path: str, mode: int) -> None:
    """Create the database file with exactly ``mode`` (umask-independent) unless it exists.

    SQLite creates a database with ``0644 & ~umask``, readable by every local user; creating the empty
    file first makes SQLite adopt it, and SQLite gives the -wal and -shm files the database's mode. An
    existing file keeps its permissions (an operator may have set them on purpose).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, mode)  # the umask narrowed (or, for mode=0660 under umask 077, cut) the bits
    finally:
        os.close(fd)


class _Owner(Protocol):
    def is_alive(self) -> bool: ...


class _HubOwner:
    """The owner of the hub's write connection: never ends (closed with the last store using it)."""

    @staticmethod
    def is_alive() -> bool:
        return True


_HUB_OWNER = _HubOwner()


class _Local(threading.local):
    conn: sqlite3.Connection | None = None
    generation: int = -1


class SQLiteStore:
    """Connections (one per thread and process), the schema, transactions and wake-ups for one file.

    ``error`` is the exception class SQLite failures are wrapped in (``BrokerError`` for the broker,
    ``BackendError`` for the backend). Nothing is opened until first use.
    """

    #: cross-process poll: first interval between ``PRAGMA data_version`` checks (then x1.5 each time)
    poll_min = 0.002

    def __init__(self, target: SQLiteTarget, error: type[MachineryError], layout: Layout = MAIN) -> None:
        self.target = target
        self.layout = layout
        self.path = target.path
        self.error = error
        self._lock = threading.Lock()
        self._local = _Local()
        self._conns: list[tuple[_Owner, sqlite3.Connection]] = []
        self._generation = 0  # bumped by close(): thread-local connections of older generations are stale
        self._schema_ready = False
        self._pid = os.getpid()
        self.hub = _hub_for(self.path)
        on_fork(self)

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path}>"

    def _after_fork(self) -> None:
        _abandoned.extend(conn for _, conn in self._conns)
        if self._local.conn is not None:
            _abandoned.append(self._local.conn)
        self._lock = threading.Lock()
        self._local = _Local()
        self._conns = []
        self._pid = os.getpid()
        self.hub = _hub_for(self.path)

    # connections -------------------------------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened, configured and schema-checked on first use)."""
        local = self._local
        conn = local.conn
        if conn is not None and local.generation == self._generation and self._pid == os.getpid():
            return conn
        if self._pid != os.getpid():  # forked without os.register_at_fork (should not happen)
            self._after_fork()
            local = self._local
        elif conn is not None:  # made stale by close(), which left it to this thread: close it here
            self._discard(conn)
        conn = self._open()
        local.conn, local.generation = conn, self._generation
        return conn

    def _open(self, owner: _Owner | None = None, track: bool = True) -> sqlite3.Connection:
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            raise ConfigError(
                f"sqlite database {self.path!r}: directory {directory!r} does not exist; "
                "create it first or fix the URL"
            )
        # One thread of this process at a time creates-or-opens: closing the descriptor _create_private
        # used would drop the POSIX locks of a connection another thread opened on the file meanwhile.
        with _opening:
            try:
                _create_private(self.path, self.target.mode)
            except OSError as exc:
                raise self.error(f"sqlite database {self.path!r}: cannot create: {exc}") from exc
            try:
                conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
                )
            except sqlite3.Error as exc:
                raise self.error(f"sqlite database {self.path!r}: cannot open: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
            if not self._schema_ready:
                self._create_schema(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self.error(f"sqlite database {self.path!r}: {exc}") from exc
        if not track:  # the hub's write connection: the hub closes it
            return conn
        with self._lock:
            # close connections of threads that ended (thread pools come and go)
            alive: list[tuple[_Owner, sqlite3.Connection]] = []
            for thread, old in self._conns:
                if thread.is_alive():
                    alive.append((thread, old))
                else:
                    old.close()
            alive.append((owner or threading.current_thread(), conn))
            self._conns = alive
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL (persistent). Switching needs an exclusive lock and SQLite may
        answer "locked" at once, without its busy handler, while other processes open the new
        file too: retry until the busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        delay = 0.001
        while True:
            try:
                mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
                if mode != "wal":
                    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
                if mode != "wal":
                    logger.warning("sqlite database %s: WAL mode refused (journal_mode=%s)", self.path, mode)
                return
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        layout = self.layout
        latest = layout.version
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > latest:
            raise self.error(
                f"sqlite database {self.path!r} has schema version {version}, newer than this "
                f"machinery's ({latest}); upgrade machinery-core"
            )
        if 0 < version < latest and version not in layout.migrations:
            raise self.error(
                f"sqlite database {self.path!r} has schema version {version}, written by a pre-release "
                f"machinery; delete the file (and its -wal/-shm and -events files) to start afresh"
            )
        if version < latest:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # read again inside the write lock: another process may have upgraded meanwhile
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    for statement in _statements(layout.script):
                        conn.execute(statement)
                while 0 < version < latest:
                    for statement in layout.migrations[version]:
                        conn.execute(statement)
                    version += 1
                conn.execute(f"PRAGMA user_version = {latest}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self._schema_ready = True

    def close(self) -> None:
        """Close the connections this store opened in this process: now those of this thread and of
        ended threads, those of other live threads at their next use. Idempotent; a later use opens
        new ones."""
        me = threading.current_thread()
        with self._lock:
            self._generation += 1
            # Another live thread may be inside a statement on its connection, and closing it under
            # that thread crashes CPython's sqlite3 (a segfault: a worker still consuming while its app
            # closed). The new generation makes it stale: that thread closes it on its next use, or
            # the next open does once the thread has ended.
            conns = [(o, c) for o, c in self._conns if o is me or not o.is_alive()]
            self._conns = [(o, c) for o, c in self._conns if o is not me and o.is_alive()]
        hub = self.hub
        with hub.writer:
            hub.write_users.discard(id(self))
            if not hub.write_users and hub.write_conn is not None:
                conns.append((_HUB_OWNER, hub.write_conn))
                hub.write_conn = None
        for _, conn in conns:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover
                logger.debug("sqlite: closing a connection failed", exc_info=True)

    def _discard(self, conn: sqlite3.Connection) -> None:
        """Close this thread's own stale connection and forget it."""
        with self._lock:
            self._conns = [(o, c) for o, c in self._conns if c is not conn]
        try:
            conn.close()
        except sqlite3.Error:  # pragma: no cover - already closed
            logger.debug("sqlite: closing a stale connection failed", exc_info=True)

    # transactions ------------------------------------------------------------------------------
    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Wrap :class:`sqlite3.Error` in :attr:`error`, naming the file and the operation."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self.error(f"sqlite database {self.path!r}: {what} failed: {exc}") from exc

    @contextmanager
    def write(self, what: str) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction, committed at the end, rolled back on error."""
        with self.errors(what), self.hub.writer:
            conn = self._write_conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self.hub.committed(self)

    @contextmanager
    def read(self, what: str) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same snapshot."""
        with self.errors(what):
            conn = self.conn()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def execute(self, what: str, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """One autocommit statement that reads."""
        with self.errors(what):
            return self.conn().execute(sql, params)

    def execute_write(self, what: str, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """One autocommit statement that writes (in turn with this process's other writers)."""
        with self.errors(what), self.hub.writer:
            cursor = self._write_conn().execute(sql, params)
            self.hub.committed(self)
            return cursor

    def _write_conn(self) -> sqlite3.Connection:
        """This process's connection for writing to the file (the caller holds ``hub.writer``)."""
        hub = self.hub
        conn = hub.write_conn
        if (
            conn is not None and hub.write_pid != os.getpid()
        ):  # forked without the fork hooks (should not happen)
            _abandoned.append(conn)
            conn = hub.write_conn = None
        if conn is None:
            conn = hub.write_conn = self._open(owner=_HUB_OWNER, track=False)
            hub.write_pid = os.getpid()
        hub.write_users.add(id(self))
        return conn

    # waiting -----------------------------------------------------------------------------------
    def data_version(self) -> int:
        with self.errors("reading data_version"):
            value: int = self.conn().execute("PRAGMA data_version").fetchone()[0]
            return value

    def snapshot(self, topic: str) -> tuple[int, int]:
        """What :meth:`wait_change` compares against: (in-process generation, data_version).
        Take it *before* looking at the data, so a change in between is not missed."""
        return self.hub.generation(topic), self.data_version()

    def wait_change(
        self, topic: str, seen: tuple[int, int], timeout: float, interval: float, poll_max: float
    ) -> float:
        """Return when ``topic`` changed in this process, another connection committed, or
        ``timeout`` seconds passed (whichever first).

        Another process's commit is seen by polling ``PRAGMA data_version`` every ``interval``
        seconds, growing x1.5 up to ``poll_max``. Returns the interval to pass next time, so a
        caller woken by unrelated writes keeps backing off instead of polling at full speed.
        """
        deadline = time.monotonic() + timeout
        generation, version = seen
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return interval
            if self.hub.wait(topic, generation, min(interval, remaining)):
                return interval
            interval = min(interval * 1.5, poll_max)
            if self.data_version() != version:
                return interval

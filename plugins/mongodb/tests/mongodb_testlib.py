"""Helpers of the MongoDB plugin's tests: server URLs from ``scripts/services env`` and a raw client.

The tests use their own database (``MACHINERY_MONGODB_TEST_DB``, default ``machinery_test``) and random
uuids, so they can share the server with other test runs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from machinery.testing import IN_CI, require_env, server_unavailable

__all__ = [
    "IN_CI",
    "REPO",
    "TEST_DB",
    "mongodb_url",
    "redis_url",
    "require_env",
    "restart_mongodb",
    "server_unavailable",
    "spawn_server",
]

REPO = Path(__file__).resolve().parents[3]
TEST_DB = os.environ.get("MACHINERY_MONGODB_TEST_DB", "machinery_test")


def mongodb_url(query: str = "", database: str = TEST_DB) -> str:
    """``MONGODB_URL`` on the tests' database, with ``query`` appended."""
    base = require_env("MONGODB_URL", "mongodb").rstrip("/")
    return f"{base}/{database}" + (f"?{query}" if query else "")


def redis_url() -> str:
    return require_env("REDIS_URL", "redis")


def restart_mongodb() -> None:
    """Restart scripts/services' MongoDB-wire server (this plugin's tests own it); returns once it
    answers again."""
    subprocess.run([str(REPO / "scripts" / "services"), "restart", "mongodb"], check=True, timeout=60)


#: A SecantusDB of our own (scripts/services' standalone server has no change streams and no TLS).
_SERVER = """
import signal, sys, threading
from secantus import SecantusDBServer
port, path, replica_set, cert, key, ca = sys.argv[1:7]
server = SecantusDBServer(host="127.0.0.1", port=int(port), storage_path=path, ttl_sweep_seconds=1.0,
                          replica_set_name=replica_set or None, enable_test_commands=False, cache_size="64M",
                          tls_cert_file=cert or None, tls_key_file=key or None, tls_ca_file=ca or None)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
server.start()
print("ready", flush=True)
stop.wait()
server.stop()
"""


def _services_python() -> str:
    """The Python of scripts/services' venv, where SecantusDB is installed."""
    root = Path(os.environ.get("SERVICES_DIR", "/tmp/machinery-services"))
    python = root / "venv" / "bin" / "python"
    if not python.exists():
        server_unavailable(f"no SecantusDB at {python}: run scripts/services install")
    return str(python)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def spawn_server(data: Path, *, replica_set: str = "", tls: bool = False) -> Iterator[int]:
    """Run a SecantusDB of the tests' own on a free port (a replica-set member when ``replica_set``,
    TLS with scripts/services' test certificates when ``tls``); yields the port."""
    cert = key = ca = ""
    if tls:
        certs = Path(require_env("REDIS_TLS_CA", "redis-tls")).parent  # scripts/services' test CA
        cert, key, ca = str(certs / "server.crt"), str(certs / "server.key"), str(certs / "ca.crt")
    port = _free_port()
    args = [_services_python(), "-c", _SERVER, str(port), str(data), replica_set, cert, key, ca]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(f"SecantusDB did not start on port {port}: {err[-2000:]}")
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

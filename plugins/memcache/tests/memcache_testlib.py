"""Helpers for the memcache plugin's tests: the two servers of ``scripts/services`` (``MEMCACHE_URL``)
and memcached processes a test starts for itself (eviction, TLS).

Without ``MEMCACHE_URL`` (or the ``memcached`` binary, for the tests that start their own) the tests
skip on a developer machine and fail in CI (``CI=true``). Keys are random uuids, so the tests share
the servers with other runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pymemcache.client.base import Client  # type: ignore[import-untyped]

from machinery.testing import IN_CI, require_env, server_unavailable
from machinery_memcache.url import parse_url

__all__ = [
    "IN_CI",
    "cluster_url",
    "node_clients",
    "own_memcached",
    "require_env",
    "server_unavailable",
]


def cluster_url() -> str:
    """``MEMCACHE_URL``: the two memcached servers of ``scripts/services``."""
    url = require_env("MEMCACHE_URL", "memcached")
    if len(parse_url(url).servers) < 2:
        server_unavailable(f"MEMCACHE_URL={url} lists one server; the tests need the two of scripts/services")
    return url


def node_clients(url: str) -> list[Client]:
    """A plain pymemcache client for each server of ``url``, in URL order."""
    clients = []
    for server in parse_url(url).servers:
        client = Client((server.host, server.port), default_noreply=False, connect_timeout=3, timeout=3)
        try:
            client.version()
        except OSError as exc:
            server_unavailable(f"memcached {server} does not answer ({exc}): scripts/services start")
        clients.append(client)
    return clients


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def own_memcached(*args: str) -> Iterator[int]:
    """A memcached of the test's own on a free port (or the unix socket of ``-s PATH`` in ``args``),
    started with ``args`` (e.g. ``-m 2``) and stopped afterwards; yields its port."""
    binary = shutil.which("memcached")
    if binary is None:
        server_unavailable("the memcached binary is not installed: scripts/services install")
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # memcached refuses to run as root without -u
    command = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", *user, *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        socket_path = args[args.index("-s") + 1] if "-s" in args else None
        _wait_until_listening(port, process, socket_path)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def _connect(port: int, socket_path: str | None) -> None:
    if socket_path is None:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(0.2)
        sock.connect(socket_path)


def _wait_until_listening(port: int, process: subprocess.Popen[bytes], socket_path: str | None) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"memcached exited with {process.returncode}: {stderr.strip()}")
        try:
            _connect(port, socket_path)
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"memcached did not listen on port {port} within 10 s")

"""Child processes of the contract kit: ``python -m machinery.testing.procs SPEC_FILE``.

The spec is a pickled dict written by the test (see :class:`machinery.testing._util.Child`):

- ``{"cmd": "consume", "url", "config", "queue", "count", "ack": [uuids]}``: lease ``count`` messages,
  print ``consumed [uuids]``, ack the listed ones, wait ``ack_grace`` seconds, print ``acked``,
  then wait to be killed.
- ``{"cmd": "chord-race", "url", "config", "groups", "threads"}``: print ``ready``, wait for ``go`` on
  stdin, call ``trigger_chord`` on every group from ``threads`` threads (each with its own backend),
  print ``result {"won": [...], "errors": [...]}``.
- ``{"cmd": "lock-race", "url", "config", "keys", "threads", "ttl"}``: the same with ``Lock.acquire``.

Objects are built from the URL through the installed plugins (plus ``plugin_modules``).
"""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import plugins
from ..config import Config

__all__ = ["main"]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _register(modules: list[str]) -> None:
    manager = plugins.get_plugin_manager()
    for name in modules:
        module = importlib.import_module(name)
        if not manager.is_registered(module):
            manager.register(module, name=f"contract:{name}")


def consume(spec: dict[str, Any]) -> None:
    config: Config = spec["config"]
    broker = plugins.resolve_broker(spec["url"], config)
    deliveries: list[Any] = []
    deadline = time.monotonic() + 30
    while len(deliveries) < spec["count"] and time.monotonic() < deadline:
        deliveries += broker.consume(spec["queue"], spec["count"] - len(deliveries), 1.0)
    say("consumed " + json.dumps([d.signature.uuid for d in deliveries if d.signature is not None]))
    for d in deliveries:
        if d.signature is not None and d.signature.uuid in spec["ack"]:
            d.ack()
    time.sleep(float(spec.get("ack_grace", 0.0)))  # batched acks reach the server meanwhile
    say("acked")
    sys.stdin.read()  # until the parent kills us or closes the pipe
    time.sleep(3600)


def race(spec: dict[str, Any], make: Callable[[], Any], attempt: Callable[[Any, str], bool]) -> None:
    keys: list[str] = spec["keys"]
    threads: int = spec["threads"]
    objects = [make() for _ in range(threads)]
    won: list[str] = []
    errors: list[str] = []
    mutex = threading.Lock()
    go = threading.Event()

    def run(obj: Any) -> None:
        go.wait()
        for key in keys:
            try:
                if attempt(obj, key):
                    with mutex:
                        won.append(key)
            except Exception as exc:
                with mutex:
                    errors.append(f"{key}: {type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=run, args=(obj,)) for obj in objects]
    for worker in workers:
        worker.start()
    say("ready")
    line = sys.stdin.readline()
    if line.strip() != "go":
        go.set()
        return
    go.set()
    for worker in workers:
        worker.join()
    say("result " + json.dumps({"won": won, "errors": errors[:20]}))
    for obj in objects:
        obj.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0], "rb") as f:
        spec: dict[str, Any] = pickle.load(f)
    _register(spec.get("plugin_modules", []))
    config: Config = spec["config"]
    cmd = spec["cmd"]
    if cmd == "consume":
        consume(spec)
    elif cmd == "chord-race":
        race(
            spec, lambda: plugins.resolve_backend(spec["url"], config), lambda b, k: bool(b.trigger_chord(k))
        )
    elif cmd == "lock-race":
        ttl = float(spec["ttl"])
        race(spec, lambda: plugins.resolve_lock(spec["url"], config), lambda lk, k: bool(lk.acquire(k, ttl)))
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main()

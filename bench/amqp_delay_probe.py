"""Probe: does a delayed message that falls due while RabbitMQ restarts reach its task queue?

    eval "$(scripts/services env)" && python bench/amqp_delay_probe.py [--messages 300] [--wait 120]

Two ``AMQPBroker`` s, each with its own exchange and task queue, publish ``--messages`` delayed
messages each, due from ``--ttl`` seconds on, spread over ``--spread`` seconds: ``quorum`` (the default
delay queues: quorum, at-least-once dead-lettering) and ``classic`` (``amqp.auto_delete=true``: Go's
classic delay queues, dead-lettering at most once). Both brokers are closed at once, so no publishing
process is left to remember anything. ``scripts/services restart rabbitmq`` starts a second after the
first messages fall due. Then it counts the task queues every few seconds for up to ``--wait``
seconds, drains them and prints, per kind: sent, arrived (distinct), duplicates, lost, and when the
count last changed (seconds after the server was back). It restarts the RabbitMQ of
``scripts/services``: run it on a server nobody else uses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pika

from machinery import Config
from machinery_amqp import AMQPBroker

SERVICES = Path(__file__).resolve().parent.parent / "scripts" / "services"
KINDS = ("quorum", "classic")


def config(run: str, kind: str) -> Config:
    cfg = Config(default_queue=f"probe_{run}_{kind}")
    cfg.amqp.exchange = f"probe_x_{run}_{kind}"
    cfg.amqp.binding_key = f"probe_k_{run}_{kind}"
    cfg.amqp.auto_delete = kind == "classic"
    return cfg


def publish(url: str, run: str, count: int, ttl: float, spread: float) -> None:
    """``count`` messages per kind, due ``ttl`` to ``ttl + spread`` seconds from now, then close."""
    start = time.monotonic()
    for kind in KINDS:
        broker = AMQPBroker(url, config(run, kind))
        try:
            for i in range(count):
                due = start + ttl + i * spread / count
                broker.publish_raw(f"probe_{run}_{kind}", str(i).encode(), delay=due - time.monotonic())
        finally:
            broker.close()


def counts(url: str, run: str) -> dict[str, int]:
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        return {
            kind: channel.queue_declare(f"probe_{run}_{kind}", passive=True).method.message_count
            for kind in KINDS
        }


def drain(url: str, run: str, sent: int, last_change: dict[str, float]) -> dict[str, Any]:
    """Count the distinct messages of each task queue, then delete the queues and exchanges."""
    report: dict[str, Any] = {}
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        for kind in KINDS:
            bodies: list[int] = []
            while True:
                method, _, body = channel.basic_get(f"probe_{run}_{kind}", auto_ack=True)
                if method is None:
                    break
                bodies.append(int(body))
            report[kind] = {
                "sent": sent,
                "arrived": len(set(bodies)),
                "duplicates": len(bodies) - len(set(bodies)),
                "lost": sent - len(set(bodies)),
                "last_change_s_after_back": round(last_change[kind], 1),
            }
            channel.queue_delete(f"probe_{run}_{kind}")  # the delay queues expire by themselves
            channel.exchange_delete(f"probe_x_{run}_{kind}")
    return report


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--messages", type=int, default=300, help="messages per kind of delay queue")
    parser.add_argument("--ttl", type=float, default=15.0, help="seconds until the first is due")
    parser.add_argument("--spread", type=float, default=6.0, help="seconds over which they fall due")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to watch after the restart")
    args = parser.parse_args()
    url = os.environ["AMQP_URL"]
    run = uuid.uuid4().hex[:8]
    began = time.monotonic()
    publish(url, run, args.messages, args.ttl, args.spread)
    time.sleep(max(0.0, began + args.ttl + 1.0 - time.monotonic()))  # restart in the due window
    stop = time.monotonic()
    subprocess.run([str(SERVICES), "restart", "rabbitmq"], check=True, capture_output=True)
    back = time.monotonic()
    seen, last_change = dict.fromkeys(KINDS, -1), dict.fromkeys(KINDS, 0.0)
    while time.monotonic() - back < args.wait:
        for kind, n in counts(url, run).items():
            if n != seen[kind]:
                seen[kind], last_change[kind] = n, time.monotonic() - back
        if all(n >= args.messages for n in seen.values()):
            break
        time.sleep(2.0)
    report = drain(url, run, args.messages, last_change)
    print(json.dumps({"restart_s": round(back - stop, 1), "kinds": report}))


if __name__ == "__main__":
    main()

"""Probe: do RabbitMQ's TTL delay queues lose a message that falls due while the server restarts?

    eval "$(scripts/services env)" && python bench/amqp_delay_probe.py [--messages 300] [--wait 240]

It publishes ``--messages`` persistent messages (with publisher confirms) over a few seconds into two
delay queues, each dead-lettering into its own durable target queue when the queue's TTL runs out:
``classic`` (a classic queue: dead-lettering at most once) and ``quorum`` (a quorum queue with
``x-dead-letter-strategy: at-least-once`` and ``x-overflow: reject-publish``). The restart
(``scripts/services restart rabbitmq``) starts while the messages are falling due. Then it counts the
messages in each target queue every few seconds for ``--wait`` seconds, drains them and prints, per
kind: sent, arrived (distinct), duplicates, lost, and when the last one arrived (seconds after the
server was back). It restarts the RabbitMQ of ``scripts/services``: run it on a server nobody else uses.
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

SERVICES = Path(__file__).resolve().parent.parent / "scripts" / "services"
KINDS: dict[str, dict[str, Any]] = {
    "classic": {},
    "quorum": {
        "x-queue-type": "quorum",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    },
}


def declare(channel: Any, run: str, ttl_ms: int, expires_ms: int) -> None:
    for kind, extra in KINDS.items():
        target = f"probe.{run}.{kind}.target"
        channel.queue_declare(target, durable=True)
        args = {"x-message-ttl": ttl_ms, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": target}
        if expires_ms:
            args["x-expires"] = expires_ms
        channel.queue_declare(f"probe.{run}.{kind}.delay", durable=True, arguments={**args, **extra})


def publish(channel: Any, run: str, count: int, spread: float) -> None:
    """``count`` messages per kind, evenly over ``spread`` seconds, so their due times spread too."""
    props = pika.BasicProperties(delivery_mode=2)
    start = time.monotonic()
    for i in range(count):
        time.sleep(max(0.0, start + i * spread / count - time.monotonic()))
        for kind in KINDS:
            channel.basic_publish("", f"probe.{run}.{kind}.delay", str(i).encode(), props, mandatory=True)


def counts(url: str, run: str) -> dict[str, int]:
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        return {
            kind: channel.queue_declare(f"probe.{run}.{kind}.target", passive=True).method.message_count
            for kind in KINDS
        }


def drain(url: str, run: str, sent: int, last_change: dict[str, float]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        for kind in KINDS:
            bodies: list[int] = []
            while True:
                method, _, body = channel.basic_get(f"probe.{run}.{kind}.target", auto_ack=True)
                if method is None:
                    break
                bodies.append(int(body))
            distinct = set(bodies)
            report[kind] = {
                "sent": sent,
                "arrived": len(distinct),
                "duplicates": len(bodies) - len(distinct),
                "lost": sent - len(distinct),
                "last_arrival_s_after_back": round(last_change[kind], 1),
            }
            for suffix in ("delay", "target"):
                channel.queue_delete(f"probe.{run}.{kind}.{suffix}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=300, help="messages per kind of delay queue")
    parser.add_argument("--ttl", type=float, default=12.0, help="delay (queue TTL) in seconds")
    parser.add_argument("--spread", type=float, default=6.0, help="seconds over which they are published")
    parser.add_argument("--expires", type=float, default=0.0, help="x-expires of the delay queues in s (0: none)")
    parser.add_argument("--wait", type=float, default=240.0, help="seconds to watch after the restart")
    args = parser.parse_args()
    url = os.environ["AMQP_URL"]
    run = uuid.uuid4().hex[:8]
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        declare(channel, run, int(args.ttl * 1000), int(args.expires * 1000))
        began = time.monotonic()
        publish(channel, run, args.messages, args.spread)
    # the first messages fall due at began + ttl: restart a second later, in the middle of the due window
    time.sleep(max(0.0, began + args.ttl + 1.0 - time.monotonic()))
    t0 = time.monotonic()
    subprocess.run([str(SERVICES), "restart", "rabbitmq"], check=True, capture_output=True)
    back = time.monotonic()
    seen: dict[str, int] = dict.fromkeys(KINDS, -1)
    last_change = dict.fromkeys(KINDS, 0.0)
    timeline: list[tuple[float, dict[str, int]]] = []
    while time.monotonic() - back < args.wait:
        now = counts(url, run)
        for kind, n in now.items():
            if n != seen[kind]:
                seen[kind], last_change[kind] = n, time.monotonic() - back
        timeline.append((round(time.monotonic() - back, 1), now))
        if all(n >= args.messages for n in now.values()):
            break
        time.sleep(5.0)
    report = drain(url, run, args.messages, last_change)
    print(
        json.dumps({"restart_s": round(back - t0, 1), "kinds": report, "timeline": timeline[::3]}, indent=1)
    )


if __name__ == "__main__":
    main()

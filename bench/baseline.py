"""The baseline's consumer: the minimal redis-py loop, as one process.

    python -m bench.baseline REDIS_URL QUEUE READY_FILE

Pops up to 100 messages at a time (``BLMPOP``), decodes each (orjson), runs ``add``, and stores every
result with one pipelined ``SET <uuid> <state JSON> EX 3600`` per message (the state JSON has the size of
Machinery's SUCCESS state). A message with a ``ReplyTo`` key also gets its result ``RPUSH``ed there (the
latency round trip). Writes the wall-clock time to READY_FILE just before its first pop. Runs until killed.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import orjson
import redis

from .systems import result_template


def main(argv: list[str]) -> None:
    url, queue, ready_file = argv
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    client: Any = redis.Redis.from_url(url)
    template = result_template()
    client.ping()
    with open(ready_file, "w") as f:
        f.write(f"{time.time():.6f}\n")
    while True:
        popped = client.blmpop(1, 1, queue, direction="LEFT", count=100)
        if not popped:
            continue
        pipe = client.pipeline(transaction=False)
        for raw in popped[1]:
            msg = orjson.loads(raw)
            value = sum(arg["Value"] for arg in msg["Args"])
            state = dict(template)
            state["TaskUUID"] = msg["UUID"]
            state["Results"] = [{"Type": "int64", "Value": value}]
            body = orjson.dumps(state)
            pipe.set(msg["UUID"], body, ex=3600)
            reply = msg.get("ReplyTo")
            if reply:
                pipe.rpush(reply, body)
                pipe.expire(reply, 60)
        pipe.execute()


if __name__ == "__main__":
    main(sys.argv[1:])

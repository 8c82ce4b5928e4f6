"""The cost of message signing: µs per message to sign (producer) and to verify (worker), next to the
codec's own encode + decode of the same message. No server; a few seconds.

    .venv/bin/python bench/signing.py            # prints a Markdown table
    .venv/bin/python bench/signing.py --n 20000

The message is bench's ``add(x, y)`` task with a uuid, a queue and a traceparent header: what the
throughput benchmark sends. ``make bench`` runs this too and the table goes into its report.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from machinery import Config, Signature
from machinery.codec import decode_signature, encode_signature
from machinery.signature import Arg
from machinery.signing import signer_for

KEY = "bench-signing-key-0123456789abcdef"


def _message() -> Signature:
    sig = Signature("add", args=[Arg(1, "int64"), Arg(2, "int64")], headers={"traceparent": "00-" + "a" * 49})
    sig.routing_key = "machinery_tasks"
    sig.ensure_uuid()
    return sig


def _per_message(fn: Callable[[], object], n: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean µs per call of ``fn`` over ``n`` calls."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def measure(n: int) -> dict[str, float]:
    signer = signer_for(Config(signing_keys=[KEY]))
    assert signer is not None
    sig = _message()
    signed = _message()
    signer.sign(signed)
    received = decode_signature(encode_signature(signed))
    assert signer.problem(received) is None
    body = encode_signature(sig)
    return {
        "encode + decode (no signing)": _per_message(lambda: decode_signature(encode_signature(sig)), n),
        "sign": _per_message(lambda: signer.sign(sig), n),
        "verify": _per_message(lambda: signer.problem(received), n),
        "message bytes": float(len(body)),
        "signed message bytes": float(len(encode_signature(signed))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="messages per repeat (5 repeats)")
    figures = measure(parser.parse_args().n)
    print("| signing cost (one message, this machine) | µs |\n|---|---:|")
    for name, value in figures.items():
        unit = "" if "bytes" in name else " µs"
        print(f"| {name} | {value:.1f}{unit} |" if unit else f"| {name} | {value:.0f} |")
    total = figures["sign"] + figures["verify"]
    print(f"| **sign + verify** | **{total:.1f} µs** |")


if __name__ == "__main__":
    main()

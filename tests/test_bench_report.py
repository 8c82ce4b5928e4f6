"""bench/report.py: each row's ratios are taken against its own baseline (issue 24's transport rows)."""

from __future__ import annotations

import math
from typing import Any

from bench import report
from bench.rawloop import raw_label


def _run(system: str, rnd: int, processed: float, baseline: str | None = None) -> dict[str, Any]:
    outcome: dict[str, Any] = {metric: 1.0 for metric in report.METRICS}
    outcome.update(system=system, n=100, error="", notes=[], timed_out=False, processed_per_s=processed)
    run: dict[str, Any] = {"round": rnd, "key": system, "outcome": outcome}
    if baseline is not None:
        run["baseline"] = baseline
    return run


def test_a_transport_row_is_compared_with_its_raw_loop_round_by_round() -> None:
    raw = raw_label("sqs", "dynamodb")
    runs = [
        _run(report.BASELINE, 0, 10_000.0),  # older runs carry no "baseline": the Redis loop
        _run("machinery redis/redis", 0, 2_000.0),
        _run(raw, 0, 100.0, raw),
        _run("machinery sqs/dynamodb", 0, 25.0, raw),
        _run(raw, 1, 200.0, raw),
        _run("machinery sqs/dynamodb", 1, 100.0, raw),
    ]
    summ = report.summarise(runs)
    assert summ["machinery redis/redis"]["ratio"]["processed_per_s"] == 0.2
    # round 0: 0.25, round 1: 0.5 -> median 0.375 (not 25 / 10,000, nor medians divided)
    assert math.isclose(summ["machinery sqs/dynamodb"]["ratio"]["processed_per_s"], 0.375)
    assert report.order(summ) == [report.BASELINE, "machinery redis/redis", raw, "machinery sqs/dynamodb"]
    table = report.tables(summ)
    assert "| 37.5 % |" in table
    targets = {row["target"]: row for row in report.targets(summ)}
    below = next(row for text, row in targets.items() if text.startswith("machinery sqs/dynamodb"))
    assert below["met"] is False


def test_raw_loop_names_say_which_client_libraries() -> None:
    assert raw_label("pubsub", "redis") == "raw pubsub+redis loop (google-cloud-pubsub + redis-py)"
    assert raw_label("sqs", "dynamodb") == "raw sqs+dynamodb loop (boto3)"

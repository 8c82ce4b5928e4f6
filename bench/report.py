"""Summaries of a run: medians and ranges, ratios to the baseline, the markdown tables, the chart."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .harness import summary

BASELINE = "redis-py minimal loop"
#: Metrics summarised per system (Outcome fields).
METRICS = (
    "processed_per_s",
    "enqueue_one_per_s",
    "enqueue_batch_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "after_idle_ms",
    "worker_cpu_us_per_task",
    "server_cpu_us_per_task",
    "worker_peak_rss_mb",
    "idle_cpu_percent",
)
#: Metrics compared with the baseline, as ``system / baseline``.
RATIO_METRICS = (
    "processed_per_s",
    "enqueue_one_per_s",
    "enqueue_batch_per_s",
    "p50_ms",
    "after_idle_ms",
    "worker_cpu_us_per_task",
    "server_cpu_us_per_task",
)


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per system: each metric's median/min/max over its runs, and each ratio to the baseline.

    A system measured in the same round as the baseline (the interleaved Redis repeats) is compared
    round by round, and the median of those ratios reported; others against the baseline's median.
    """
    systems: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        systems.setdefault(run["outcome"]["system"], []).append(run)
    out: dict[str, dict[str, Any]] = {}
    for name, items in systems.items():
        baseline = items[0].get("baseline", BASELINE)  # runs of older results have none: the Redis loop
        base_by_round = {
            r["round"]: r["outcome"] for r in systems.get(baseline, []) if not r["outcome"]["error"]
        }
        good = [r for r in items if not r["outcome"]["error"]]
        entry: dict[str, Any] = {
            "baseline": baseline,
            "runs": len(items),
            "ok": len(good),
            "n": items[0]["outcome"]["n"],
            "errors": sorted({r["outcome"]["error"] for r in items if r["outcome"]["error"]}),
            "notes": sorted({note for r in items for note in r["outcome"]["notes"]}),
            "timed_out": any(r["outcome"]["timed_out"] for r in items),
            "version": items[0]["outcome"].get("version", ""),
        }
        for metric in METRICS:  # .get: results of older runs lack the newer metrics
            entry[metric] = summary([float(r["outcome"].get(metric, math.nan)) for r in good])
        ratios: dict[str, float] = {}
        for metric in RATIO_METRICS:
            paired = [
                float(r["outcome"].get(metric, math.nan)) / float(base_by_round[r["round"]][metric])
                for r in good
                if r["round"] in base_by_round and _finite(base_by_round[r["round"]].get(metric))
            ]
            if paired and all(_finite(v) for v in paired):
                ratios[metric] = summary(paired)["median"]
            elif base_by_round:
                base = summary([float(b.get(metric, math.nan)) for b in base_by_round.values()])["median"]
                ratios[metric] = entry[metric]["median"] / base if _finite(base) and base else math.nan
        entry["ratio"] = ratios
        out[name] = entry
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value != 0


# ------------------------------------------------------------------------------------------------ text
def _num(value: float, digits: int = 0) -> str:
    if not math.isfinite(value):
        return "\u2013"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _cell(stat: dict[str, float], digits: int = 0) -> str:
    text = _num(stat["median"], digits)
    if stat.get("n", 0) > 1 and math.isfinite(stat["min"]):
        text += f" ({_num(stat['min'], digits)}\u2013{_num(stat['max'], digits)})"
    return text


def _pct(ratio: float) -> str:
    return "\u2013" if not math.isfinite(ratio) else f"{ratio * 100:.1f} %"


def _times(ratio: float) -> str:
    return "\u2013" if not math.isfinite(ratio) else f"{ratio:.2f}\u00d7"


def is_baseline(name: str, summ: dict[str, dict[str, Any]]) -> bool:
    return name == BASELINE or summ[name].get("baseline") == name


def order(summ: dict[str, dict[str, Any]]) -> list[str]:
    """The Redis loop and the rows compared with it, then each raw transport loop followed by its rows."""

    def key(name: str) -> tuple[int, str, int, str]:
        base = summ[name].get("baseline", BASELINE)
        if base != BASELINE:
            return (4, base, 0 if name == base else 1, name)
        if name == BASELINE:
            return (0, "", 0, name)
        if name.startswith("machinery redis"):
            return (1, "", 0, name)
        if name.startswith("machinery"):
            return (2, "", 0, name)
        return (3, "", 0, name)

    return sorted(summ, key=key)


def tables(summ: dict[str, dict[str, Any]]) -> str:
    """The two result tables (throughput/latency, resources) in markdown."""
    lines = [
        "| system | tasks | processed/s | vs baseline | enqueue/s one by one | vs baseline | "
        "enqueue/s batched | vs baseline | send→result p50 ms | vs baseline | p90 / p99 ms | "
        "after 1 s idle ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in order(summ):
        e = summ[name]
        r = e["ratio"]
        label = name + (f" {e['version']}" if e["version"] else "")
        if e["ok"] == 0:
            lines.append(f"| {label} | \u2013 | failed: {'; '.join(e['errors'])[:120]} |" + " |" * 9)
            continue
        tasks = f"{2 * e['n']:,}" + (f" \u00d7{e['ok']}" if e["ok"] > 1 else "")
        tasks += " (cut)" if e["timed_out"] else ""
        is_base = is_baseline(name, summ)
        lines.append(
            f"| {label} | {tasks} | {_cell(e['processed_per_s'])} | "
            f"{'=' if is_base else _pct(r.get('processed_per_s', math.nan))} | "
            f"{_cell(e['enqueue_one_per_s'])} | "
            f"{'=' if is_base else _pct(r.get('enqueue_one_per_s', math.nan))} | "
            f"{_cell(e['enqueue_batch_per_s'])} | "
            f"{'=' if is_base else _pct(r.get('enqueue_batch_per_s', math.nan))} | "
            f"{_cell(e['p50_ms'], 2)} | {'=' if is_base else _times(r.get('p50_ms', math.nan))} | "
            f"{_num(e['p90_ms']['median'], 2)} / {_num(e['p99_ms']['median'], 2)} | "
            f"{_num(e['after_idle_ms']['median'], 2)} |"
        )
    lines += [
        "",
        "| system | worker CPU µs/task | vs baseline | server CPU µs/task | vs baseline | "
        "worker peak RSS MB | idle worker CPU % of a core |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in order(summ):
        e = summ[name]
        if e["ok"] == 0:
            continue
        r = e["ratio"]
        lines.append(
            f"| {name} | {_cell(e['worker_cpu_us_per_task'])} | "
            f"{'=' if is_baseline(name, summ) else _times(r.get('worker_cpu_us_per_task', math.nan))} | "
            f"{_cell(e['server_cpu_us_per_task'])} | "
            f"{'=' if is_baseline(name, summ) else _times(r.get('server_cpu_us_per_task', math.nan))} | "
            f"{_num(e['worker_peak_rss_mb']['median'], 1)} | {_num(e['idle_cpu_percent']['median'], 2)} |"
        )
    return "\n".join(lines)


def targets(summ: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 24's targets (and issue 10's that still stand), each with the measured value and whether
    it is met (None: not measured)."""
    ours = summ.get("machinery redis/redis")
    ours4 = summ.get("machinery redis/redis, prefetch x4")
    ours2 = summ.get("machinery redis/redis, 2 processes")
    sqlite = summ.get("machinery sqlite/sqlite")
    amqp = summ.get("machinery amqp/redis")
    amqp3 = summ.get("machinery amqp/redis, Go's prefetch_count 3")
    dramatiq = next((v for k, v in summ.items() if k.startswith("dramatiq (")), None)
    dramatiq_mq = next((v for k, v in summ.items() if k.startswith("dramatiq rabbitmq")), None)
    celery = next((v for k, v in summ.items() if k.startswith("celery")), None)
    huey = next((v for k, v in summ.items() if k.startswith("huey")), None)
    rows: list[dict[str, Any]] = []

    def add(text: str, value: float, shown: str, ok: bool | None) -> None:
        met = ok if math.isfinite(value) else None
        rows.append({"target": text, "value": value, "shown": shown, "met": met})

    def versus(text: str, mine: dict[str, Any], peer: dict[str, Any], key: str, at_least: float) -> None:
        v = mine[key]["median"] / peer[key]["median"]
        add(text, v, _times(v), v >= at_least)

    if ours and ours["ok"]:
        r = ours["ratio"]
        v = r.get("processed_per_s", math.nan)
        add("Redis processed/s ≥ 0.30\u00d7 the minimal loop", v, _times(v), v >= 0.30)
        v = r.get("enqueue_batch_per_s", math.nan)
        add("Redis batch enqueue ≥ 0.50\u00d7 the minimal batch", v, _times(v), v >= 0.50)
        v = ours["p50_ms"]["median"]
        add("Redis send→result p50 ≤ 0.6 ms", v, f"{_num(v, 2)} ms", v <= 0.6)
        v = ours["worker_cpu_us_per_task"]["median"]
        add("Redis worker CPU ≤ 60 µs per task", v, f"{_num(v)} µs", v <= 60)
        v = ours["idle_cpu_percent"]["median"]
        add("Redis idle worker CPU ≈ 0 (< 0.5 % of a core)", v, f"{_num(v, 2)} %", v < 0.5)
        for name, peer in (("Dramatiq", dramatiq), ("Celery", celery)):
            if peer and peer["ok"]:
                v = ours["processed_per_s"]["median"] / peer["processed_per_s"]["median"]
                add(f"(reference) Redis processed/s vs {name}'s", v, _times(v), None)
    if ours and ours["ok"] and ours2 and ours2["ok"]:
        v = ours2["processed_per_s"]["median"] / ours["processed_per_s"]["median"]
        add("(reference) Redis, 2 worker processes: processed/s vs one process", v, _times(v), None)
    if ours4 and ours4["ok"]:
        v = ours4["ratio"].get("processed_per_s", math.nan)
        add("Redis, prefetch x4: processed/s ≥ 0.50\u00d7 the minimal loop", v, _times(v), v >= 0.50)
    if sqlite and sqlite["ok"]:
        v = sqlite["processed_per_s"]["median"]
        add("sqlite:// ≥ 5,000 tasks/s processed", v, f"{_num(v)}/s", v >= 5000)
        if huey and huey["ok"]:
            versus(
                "sqlite:// one-by-one enqueue ≥ Huey's (SqliteHuey)", sqlite, huey, "enqueue_one_per_s", 1.0
            )
            v = sqlite["processed_per_s"]["median"] / huey["processed_per_s"]["median"]
            add("(reference) sqlite:// processed/s vs Huey's", v, _times(v), None)
    if amqp and amqp["ok"] and dramatiq_mq and dramatiq_mq["ok"]:
        versus(
            "RabbitMQ processed/s ≥ 1.0\u00d7 Dramatiq's (RabbitMQ, Redis results)",
            amqp,
            dramatiq_mq,
            "processed_per_s",
            1.0,
        )
        versus(
            "RabbitMQ one-by-one enqueue ≥ 1.0\u00d7 Dramatiq's", amqp, dramatiq_mq, "enqueue_one_per_s", 1.0
        )
    if amqp3 and amqp3["ok"] and dramatiq_mq and dramatiq_mq["ok"]:
        v = amqp3["processed_per_s"]["median"] / dramatiq_mq["processed_per_s"]["median"]
        add("(reference) RabbitMQ, Go's prefetch_count 3: processed/s vs Dramatiq's", v, _times(v), None)
    for name in order(summ):
        e = summ[name]
        if e["baseline"] == BASELINE or is_baseline(name, summ) or not e["ok"]:
            continue
        v = e["ratio"].get("processed_per_s", math.nan)
        text = f"{name} processed/s ≥ 0.5\u00d7 its raw loop (issue 24; below: bench/README.md says why)"
        add(text, v, _times(v), v >= 0.5)
    return rows


def targets_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| target (issues 10, 24) | measured | met |", "|---|---:|:---:|"]
    for row in rows:
        mark = "\u2013" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(f"| {row['target']} | {row['shown']} | {mark} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ chart
def _or0(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def chart(summ: dict[str, dict[str, Any]], path: str, subtitle: str) -> None:
    """Two bar charts: processed tasks/s (log scale) and send→result p50, with the range of repeats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in order(summ) if summ[n]["ok"]][::-1]
    colours = [
        "#888888" if is_baseline(n, summ) else ("#1f77b4" if n.startswith("machinery") else "#ff7f0e")
        for n in names
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.55 * len(names) + 2.2))
    for ax, metric, title, log in (
        (axes[0], "processed_per_s", "processed tasks/s (one worker process, log scale)", True),
        (axes[1], "p50_ms", "send → result p50, ms (idle worker)", False),
    ):
        med = [summ[n][metric]["median"] for n in names]
        vals = [m if math.isfinite(m) else 0.0 for m in med]
        lo = [max(0.0, v - _or0(summ[n][metric]["min"])) for n, v in zip(names, vals, strict=True)]
        hi = [max(0.0, _or0(summ[n][metric]["max"]) - v) for n, v in zip(names, vals, strict=True)]
        ax.barh(names, vals, xerr=[lo, hi], color=colours, capsize=3)
        for y, (v, up) in enumerate(zip(vals, hi, strict=True)):
            label = f"  {v:,.0f}" if metric == "processed_per_s" else f"  {v:.2f}"
            ax.text(v + up, y, label, va="center", fontsize=8)
        ax.margins(x=0.12)
        if log:
            ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[1].set_yticklabels([])
    fig.suptitle("Machinery for Python: add(x, y), results stored, one local Redis\n" + subtitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

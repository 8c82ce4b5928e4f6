"""What the kit prints at the end of a pytest session: per combination, tests run, skips and metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest

__all__ = ["REPORT_KEY", "ComboReport", "KitReport"]

CAPABILITY_PREFIX = "capability "
NOT_APPLICABLE_PREFIX = "not applicable"
FIXTURE_PREFIX = "fixture "


@dataclass
class ComboReport:
    """One combination (a test class, or its ``contract_name``)."""

    name: str
    outcomes: dict[str, str] = field(default_factory=dict)  # nodeid -> passed/failed/skipped/error
    reasons: dict[str, str] = field(default_factory=dict)  # nodeid -> skip reason
    seconds: float = 0.0
    metrics: list[tuple[str, str]] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)

    @property
    def run(self) -> int:
        return sum(1 for o in self.outcomes.values() if o != "skipped")

    def skip_reasons(self) -> Counter[str]:
        return Counter(self.reasons[n] for n, o in self.outcomes.items() if o == "skipped")


@dataclass
class KitReport:
    """Collected during the session by :mod:`machinery.testing.plugin`."""

    combos: dict[str, ComboReport] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)  # nodeid -> combination

    def combo(self, name: str) -> ComboReport:
        if name not in self.combos:
            self.combos[name] = ComboReport(name)
        return self.combos[name]

    def record(self, combination: str, metric: str, text: str) -> None:
        self.combo(combination).metrics.append((metric, text))

    def on_report(self, report: pytest.TestReport) -> None:
        name = self.nodes.get(report.nodeid)
        if name is None:
            return
        combo = self.combo(name)
        combo.seconds += report.duration
        current = combo.outcomes.get(report.nodeid)
        if report.skipped:
            if current is None or report.when == "call":
                combo.outcomes[report.nodeid] = "skipped"
                combo.reasons[report.nodeid] = _skip_reason(report)
        elif report.failed:
            combo.outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
        elif report.when == "call":
            combo.outcomes[report.nodeid] = "passed"

    def lines(self) -> list[str]:
        out: list[str] = []
        for combo in self.combos.values():
            parts = [f"{combo.count('passed')} passed"]
            for outcome in ("failed", "error"):
                if combo.count(outcome):
                    parts.append(f"{combo.count(outcome)} {outcome}")
            skipped = combo.count("skipped")
            out.append(
                f"{combo.name}: {combo.run} tests run ({', '.join(parts)}), {skipped} skipped, "
                f"{combo.seconds:.1f}s"
            )
            for reason, n in sorted(combo.skip_reasons().items()):
                kind = "capability skip" if reason.startswith(CAPABILITY_PREFIX) else "skip"
                out.append(f"    {kind} x{n}: {reason}")
            for metric, text in combo.metrics:
                out.append(f"    {metric}: {text}")
        return out


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


REPORT_KEY = pytest.StashKey[KitReport]()

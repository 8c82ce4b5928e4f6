"""pytest plugin entry point (``pytest11``): the kit's markers and its end-of-session report.

Loaded automatically when machinery-core is installed with pytest. Disable with ``-p no:machinery``.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from ._report import REPORT_KEY, KitReport

__all__ = [
    "pytest_configure",
    "pytest_itemcollected",
    "pytest_runtest_makereport",
    "pytest_terminal_summary",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "machinery_requires(capability, of): a contract test that runs only when the broker, backend "
        "or lock declares the capability",
    )
    config.addinivalue_line(
        "markers",
        "machinery_fault: a contract fault test (kills workers, restarts servers); "
        "deselect with -m 'not machinery_fault'",
    )
    config.stash[REPORT_KEY] = KitReport()


def pytest_itemcollected(item: pytest.Item) -> None:
    cls = getattr(item, "cls", None)
    if cls is None:
        return
    from ._base import ContractBase, combination_name

    if isinstance(cls, type) and issubclass(cls, ContractBase):
        item.config.stash[REPORT_KEY].nodes[item.nodeid] = combination_name(cls)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if item.nodeid in item.config.stash[REPORT_KEY].nodes:
        item.config.stash[REPORT_KEY].on_report(report)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    report = config.stash.get(REPORT_KEY, None)
    if report is None or not report.combos:
        return
    terminalreporter.section("machinery contract kit")
    for line in report.lines():
        terminalreporter.write_line(line)

"""The kit tests itself: broken transports must fail the contract tests meant to catch them.

One child pytest runs the chosen tests of selftest_cases.py (PYTHONPATH=tests/contract, so worker
processes can load broken_plugins); each case then checks its outcome in the JUnit XML.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CASES = HERE / "selftest_cases.py"

#: node (class::test) -> (expected outcome, a text the failure or skip message must contain)
EXPECTED: dict[str, tuple[str, str]] = {
    "TestDoubleChordBackend::test_backend_trigger_chord_once": ("failed", "must be true exactly once"),
    "TestDoubleChordBackend::test_backend_trigger_chord_race_threads": ("failed", "more than once"),
    "TestDroppingBroker::test_broker_many_producers_and_consumers": ("failed", "messages lost"),
    "TestNeverRedeliversBroker::test_broker_redelivery_after_connection_loss": (
        "failed",
        "did not come back",
    ),
    "TestAckEarlyBroker::test_broker_nack_requeue": ("failed", "did not come back"),
    "TestAckEarlyBroker::test_broker_redelivery_after_consumer_killed": ("failed", "did not come back"),
    "TestAckEarlyBroker::test_fault_sigkill_worker_with_started_tasks": ("failed", "not finished"),
    "TestPollingPushBackend::test_backend_push_wait": ("failed", "that is polling"),
    # issue 15: each new check, and a check of the same transport that must still pass (the defect
    # is caught by the test meant for it, not by accident)
    "TestNoRenewalBroker::test_worker_task_longer_than_the_lease_runs_once": (
        "failed",
        "the lease is not renewed while the task runs",
    ),
    "TestNoRenewalBroker::test_worker_send_task[thread]": ("passed", ""),
    "TestNoopAckBroker::test_broker_ack_is_final": ("failed", "ack() did not remove it"),
    "TestNoopAckBroker::test_broker_close_gives_back_at_once": ("passed", ""),
    "TestNoopAckManyBroker::test_broker_ack_many_is_final": (
        "failed",
        "acked by ack_many, yet delivered again",
    ),
    "TestNoopAckManyBroker::test_broker_ack_is_final": ("passed", ""),
    "TestCloseKeepsLeasesBroker::test_broker_close_gives_back_at_once": (
        "failed",
        "close() keeps unsettled messages leased",
    ),
    "TestCloseKeepsLeasesBroker::test_broker_nack_requeue": ("passed", ""),
    "TestRaisingConsumeBroker::test_broker_malformed_message": ("failed", "consume must not raise"),
    "TestRaisingConsumeBroker::test_broker_publish_consume_ack": ("passed", ""),
    "TestLocalEtaBroker::test_broker_requeued_message_reaches_another_consumer": (
        "failed",
        "Polling consumers need jitter",
    ),
    "TestLocalEtaBroker::test_broker_publish_consume_ack": ("passed", ""),
    "TestSingleActiveConsumerBroker::test_broker_consumers_share_a_queue": ("failed", "one consumer starves"),
    "TestSingleActiveConsumerBroker::test_broker_nack_requeue": ("passed", ""),
    # the answered questions (core/PLUGINS.md)
    "TestFreshAfterNackBroker::test_broker_nack_requeue": ("failed", "redelivered must be True"),
    "TestPurgeKeepsEtaBroker::test_broker_purge": ("failed", "must purge them too"),
    "TestUnknownChordFalseBackend::test_backend_unknown_group": ("failed", "must raise UnknownGroupError"),
    # how the kit reports what it cannot run
    "TestDroppingBroker::test_broker_redelivery_after_connection_loss": (
        "skipped",
        "capability redelivery not declared by DroppingBroker",
    ),
    "TestStrictMissingFixture::test_fault_server_restart": ("failed", "fixture restart_server not provided"),
    "TestLenientMissingFixture::test_fault_server_restart": (
        "skipped",
        "fixture restart_server not provided",
    ),
}


@pytest.fixture(scope="module")
def selftest_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, tuple[str, str]], str]:
    out = tmp_path_factory.mktemp("selftest")
    xml = out / "junit.xml"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH", "")]))
    nodes = [f"{CASES}::{node}" for node in EXPECTED]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *nodes,
            "-p",
            "no:cacheprovider",
            "-q",
            f"--junitxml={xml}",
            "--basetemp",
            str(out / "tmp"),
            "-o",
            "addopts=",
        ],
        cwd=HERE.parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    results: dict[str, tuple[str, str]] = {}
    assert xml.exists(), f"the child pytest wrote no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for case in ET.parse(xml).getroot().iter("testcase"):
        node = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        outcome, text = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                text = (found.get("message") or "") + "\n" + (found.text or "")
        results[node] = (outcome, text)
    return results, proc.stdout


@pytest.mark.parametrize("node", list(EXPECTED))
def test_broken_transport_is_caught(selftest_run: tuple[dict[str, tuple[str, str]], str], node: str) -> None:
    results, stdout = selftest_run
    expected_outcome, expected_text = EXPECTED[node]
    assert node in results, f"{node} did not run:\n{stdout[-3000:]}"
    outcome, text = results[node]
    assert outcome == expected_outcome, f"{node}: {outcome}, expected {expected_outcome}\n{text[-2000:]}"
    assert expected_text in text, f"{node}: expected {expected_text!r} in:\n{text[-2000:]}"


def test_summary_lists_combinations_and_capability_skips(
    selftest_run: tuple[dict[str, tuple[str, str]], str],
) -> None:
    _, stdout = selftest_run
    assert "machinery contract kit" in stdout
    assert "TestDroppingBroker: 1 tests run (0 passed, 1 failed), 1 skipped" in stdout
    assert "capability skip x1: capability redelivery not declared by DroppingBroker" in stdout
    assert "lenient: 0 tests run (0 passed), 1 skipped" in stdout

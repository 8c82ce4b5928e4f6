"""``machinery inspect workers | task | group`` and ``purge`` progress, with click's CliRunner on sqlite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from machinery import Chord, Group, Machinery, Signature
from machinery.cli import cli
from machinery.testing._util import eventually

from .events_testlib import running, sqlite_app

APP = """
from machinery import Config, Machinery
app = Machinery(Config(broker={url!r}, result_backend={url!r}))
"""


def app_file(tmp_path: Path, url: str) -> str:
    path = tmp_path / "inspected.py"
    path.write_text(APP.format(url=url))
    return f"{path}:app"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def app(tmp_path: Path) -> Machinery:
    application = sqlite_app(tmp_path)

    @application.task(name="total")
    def total(*values: int) -> int:
        return sum(values)

    return application


def test_inspect_workers_task_and_group(app: Machinery, tmp_path: Path) -> None:
    spec = app_file(tmp_path, app.config.broker)
    worker = app.worker(concurrency=2, queue="machinery_tasks")
    with running(worker):
        ok = app.send_task(Signature("add", [1, 2]))
        bad = app.send_task(Signature("boom"))
        chord = app.send_chord(
            Chord(Group([Signature("add", [1, 1]), Signature("add", [2, 2])]), Signature("total"))
        )
        assert ok.get(timeout=10) == 3 and chord.get(timeout=10) == 6
        store = app.backend
        eventually(lambda: len(store.task_events(bad.uuid)) == 3, 10, "the failed event")  # type: ignore[attr-defined]
        eventually(lambda: any(b.processed >= 5 for b in store.workers()), 10, "a heartbeat")  # type: ignore[attr-defined]

        table = run("inspect", "workers", "-A", spec)
        assert table.exit_code == 0, table.output
        assert worker.events.worker_id in table.output and " live " in table.output
        assert "2/2" in table.output or "/2 " in table.output
        assert table.output.rstrip().endswith("1 live, 0 lost, 0 stopped")
        [row] = json.loads(run("inspect", "workers", "-A", spec, "--json").output)
        assert (row["worker"], row["status"], row["concurrency"]) == (worker.events.worker_id, "live", 2)
    [row] = json.loads(run("inspect", "workers", "-A", spec, "--json").output)
    assert row["status"] == "stopped", "a worker that stopped cleanly is not lost"
    lines = run("inspect", "task", "-A", spec, bad.uuid).output.splitlines()
    assert lines[:3] == [f"uuid     {bad.uuid}", "name     boom", "state    FAILURE"]
    assert [line.split()[1] for line in lines if line.startswith("20")] == ["received", "started", "failed"]
    assert any(line.rstrip().endswith("boom") and "failed" in line for line in lines)
    data = json.loads(run("inspect", "task", "-A", spec, ok.uuid, "--json").output)
    assert data["state"]["state"] == "SUCCESS" and data["state"]["result"] == 3
    assert [e["kind"] for e in data["events"]] == ["received", "started", "succeeded"]
    assert data["events"][-1]["runtime"] >= 0 and data["events"][-1]["worker"] == worker.events.worker_id

    group = run("inspect", "group", "-A", spec, chord.group.group_uuid)
    assert group.exit_code == 0
    assert (
        f"group {chord.group.group_uuid}: 2/2 done (2 succeeded, 0 failed); chord triggered: yes"
        in group.output
    )
    data = json.loads(run("inspect", "group", "-A", spec, chord.group.group_uuid, "--json").output)
    assert (data["done"], data["total"], data["chord_triggered"]) == (2, 2, True)
    assert [m["result"] for m in data["members"]] == [2, 4]


def test_inspect_group_in_progress_and_unknown(app: Machinery, tmp_path: Path) -> None:
    spec = app_file(tmp_path, app.config.broker)
    chord = app.send_chord(
        Chord(Group([Signature("add", [1, 1]), Signature("add", [2, 2])]), Signature("total"))
    )
    out = run("inspect", "group", "-A", spec, chord.group.group_uuid).output
    assert "0/2 done (0 succeeded, 0 failed); chord triggered: no" in out and out.count("PENDING") == 2
    unknown = CliRunner().invoke(cli, ["inspect", "group", "-A", spec, "group_nope"])
    assert unknown.exit_code == 1 and "unknown" in unknown.output
    missing = CliRunner().invoke(cli, ["inspect", "task", "-A", spec, "task_nope"])
    assert missing.exit_code == 1 and "task task_nope is unknown" in missing.output


def test_a_backend_without_events_says_so(tmp_path: Path) -> None:
    path = tmp_path / "noevents.py"
    path.write_text(
        "from machinery import Config, Machinery\n"
        "app = Machinery(Config(broker='memory://x', result_backend='null'))\n"
    )
    result = CliRunner().invoke(cli, ["inspect", "workers", "-A", f"{path}:app"])
    assert result.exit_code == 1
    assert "the result backend (NullBackend) keeps no events" in result.output


def test_purge_shows_progress_and_counts(
    app: Machinery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = app_file(tmp_path, app.config.broker)
    app.broker.publish_many([Signature("add", [i, i], routing_key="big") for i in range(300)])
    import machinery.cli as cli_module
    from machinery.transports.sqlite.broker import SQLiteBroker

    slow_purge = SQLiteBroker.purge

    def purge(self: SQLiteBroker, queue: str) -> None:  # a long purge: the progress lines must show
        import time

        time.sleep(0.3)
        slow_purge(self, queue)

    monkeypatch.setattr(SQLiteBroker, "purge", purge)
    monkeypatch.setattr(cli_module, "PURGE_PROGRESS_EVERY", 0.05)
    result = CliRunner().invoke(cli, ["purge", "-A", spec, "--queue", "big", "--yes"])
    assert result.exit_code == 0, result.output
    assert "purging big: 0/300 deleted" in result.stderr
    assert result.stdout.strip() == "purged queue big: 300 tasks deleted"
    assert app.broker.depth("big") == 0  # type: ignore[attr-defined]

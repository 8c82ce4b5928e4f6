"""The ``machinery`` command line: help, plugins, send/result/inspect/purge, errors, and a real
worker process stopped by signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner, Result

from machinery import AsyncResult, Config, Machinery, Signature, State
from machinery.cli import cli, parse_value

APP_SOURCE = """
import time

from machinery import Config, Machinery

app = Machinery(Config(broker={url!r}, result_backend={url!r}))
not_an_app = 42


@app.task
def add(*args: int) -> int:
    return sum(args)


@app.task
def fail(message: str) -> None:
    raise Exception(message)


@app.task
def echo(*args: object, **kwargs: object) -> list[object]:
    return [list(args), kwargs]


@app.task
def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
"""


def write_app(directory: Path, url: str) -> str:
    """Write an app module into ``directory``; returns its (unique) module name."""
    name = f"cliapp_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(APP_SOURCE.format(url=url))
    return name


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def isolated_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """sys.path and sys.modules restored after the test (the CLI adds the cwd to sys.path)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("MACHINERY_APP", raising=False)
    return tmp_path


@pytest.fixture
def app_module(isolated_path: Path, memory_url: str) -> Iterator[ModuleType]:
    """A module defining ``app`` on a private memory:// store, importable by name."""
    name = write_app(isolated_path, memory_url)
    __import__(name)
    module = sys.modules[name]
    yield module
    module.app.close()
    sys.modules.pop(name, None)


@pytest.fixture
def spec(app_module: ModuleType) -> str:
    return f"{app_module.__name__}:app"


@pytest.fixture
def worker_thread(app_module: ModuleType) -> Iterator[None]:
    worker = app_module.app.worker("cli-test", concurrency=2)
    thread = worker.launch_async()
    yield
    worker.quit()
    thread.join(10)
    assert not thread.is_alive()


def invoke(runner: CliRunner, *args: str, input: str | None = None) -> Result:
    return runner.invoke(cli, list(args), input=input, catch_exceptions=False)


def assert_one_line_error(result: Result, *fragments: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]


# --- help and plugins ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["worker"],
        ["send"],
        ["result"],
        ["inspect"],
        ["inspect", "pending"],
        ["inspect", "delayed"],
        ["purge"],
        ["plugins"],
        ["beat"],
    ],
)
def test_every_command_has_help_with_an_example(runner: CliRunner, command: list[str]) -> None:
    result = invoke(runner, *command, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.output
    assert "Example" in result.output
    assert "machinery " + command[0] in result.output


def test_top_level_help_lists_the_commands(runner: CliRunner) -> None:
    result = invoke(runner, "--help")
    assert result.exit_code == 0
    for command in ("worker", "send", "result", "inspect", "purge", "plugins", "beat"):
        assert f"  {command} " in result.output


def test_plugins_table_lists_the_builtins(runner: CliRunner) -> None:
    result = invoke(runner, "plugins")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["SCHEME", "PROVIDES", "DISTRIBUTION"]
    for scheme in ("memory://", "sqlite://"):
        row = next(line for line in lines if line.startswith(scheme))
        assert row.split(None, 1)[1].split() == ["broker,", "backend,", "lock", "machinery-core"]


def test_plugins_json(runner: CliRunner) -> None:
    result = invoke(runner, "plugins", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    for scheme in ("memory", "sqlite"):
        for kind in ("broker", "backend", "lock"):
            assert {"scheme": scheme, "kind": kind, "distribution": "machinery-core"} in rows


# --- send, result, inspect, purge -------------------------------------------------------------


def test_parse_value_json_or_string() -> None:
    assert parse_value("1") == 1
    assert parse_value("2.5") == 2.5
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value('{"a": 1}') == {"a": 1}
    assert parse_value("true") is True
    assert parse_value('"1"') == "1"
    assert parse_value("foo") == "foo"
    assert parse_value("") == ""


def test_send_then_inspect_pending_then_purge(runner: CliRunner, spec: str, app_module: ModuleType) -> None:
    sent = invoke(runner, "send", "-A", spec, "add", "1", "2")
    assert sent.exit_code == 0, sent.output
    assert sent.output.startswith("sent add task_")
    assert "to queue machinery_tasks" in sent.output
    task_uuid = sent.output.split()[2]

    listed = invoke(runner, "inspect", "pending", "-A", spec)
    assert listed.exit_code == 0
    assert task_uuid in listed.output
    assert "1 pending in queue machinery_tasks" in listed.output

    as_json = json.loads(invoke(runner, "inspect", "pending", "-A", spec, "--json").output)
    assert [(t["uuid"], t["name"], t["args"], t["queue"]) for t in as_json] == [
        (task_uuid, "add", [1, 2], "machinery_tasks")
    ]

    state = invoke(runner, "result", "-A", spec, task_uuid, "--json")
    assert json.loads(state.output)["state"] == "PENDING"

    declined = invoke(runner, "purge", "-A", spec, "--queue", "machinery_tasks", input="n\n")
    assert declined.exit_code == 1
    assert len(app_module.app.broker.pending("machinery_tasks")) == 1

    purged = invoke(runner, "purge", "-A", spec, "--queue", "machinery_tasks", "--yes")
    assert purged.exit_code == 0
    assert purged.output.strip() == "purged queue machinery_tasks: 1 tasks deleted"
    empty = invoke(runner, "inspect", "pending", "-A", spec)
    assert empty.output.strip() == "no pending tasks in queue machinery_tasks"


def test_send_options_reach_the_signature(runner: CliRunner, spec: str, app_module: ModuleType) -> None:
    sent = invoke(
        runner,
        "send",
        "-A",
        spec,
        "echo",
        "1",
        "foo",
        "[1, 2]",
        '"7"',
        "--kwarg",
        "name=Ada",
        "-k",
        "n=3",
        "--queue",
        "other",
        "--retry-count",
        "2",
        "--json",
    )
    assert sent.exit_code == 0, sent.output
    info = json.loads(sent.output)
    assert info["queue"] == "other"
    (sig,) = app_module.app.broker.pending("other")
    assert sig.uuid == info["uuid"]
    assert sig.arg_values == [1, "foo", [1, 2], "7"]
    assert sig.kwargs == {"name": "Ada", "n": 3}
    assert sig.retry_count == 2


def test_send_negative_numbers_after_double_dash(
    runner: CliRunner, spec: str, app_module: ModuleType
) -> None:
    sent = invoke(runner, "send", "-A", spec, "add", "--", "-1", "-2")
    assert sent.exit_code == 0, sent.output
    (sig,) = app_module.app.broker.pending("machinery_tasks")
    assert sig.arg_values == [-1, -2]


def test_send_countdown_shows_in_inspect_delayed(runner: CliRunner, spec: str) -> None:
    sent = invoke(runner, "send", "-A", spec, "add", "1", "--countdown", "60", "--json")
    task_uuid = json.loads(sent.output)["uuid"]
    assert json.loads(sent.output)["eta"] is not None
    delayed = invoke(runner, "inspect", "delayed", "-A", spec)
    assert delayed.exit_code == 0
    assert task_uuid in delayed.output
    assert "(in 5" in delayed.output or "(in 6" in delayed.output
    other = invoke(runner, "inspect", "delayed", "-A", spec, "--queue", "elsewhere")
    assert other.output.strip() == "no delayed tasks in queue elsewhere"
    as_json = json.loads(invoke(runner, "inspect", "delayed", "-A", spec, "--json").output)
    assert [t["uuid"] for t in as_json] == [task_uuid]
    assert invoke(runner, "inspect", "pending", "-A", spec, "--json").output.strip() == "[]"


def test_send_bad_kwarg_and_both_eta_options_are_usage_errors(runner: CliRunner, spec: str) -> None:
    assert invoke(runner, "send", "-A", spec, "add", "--kwarg", "oops").exit_code == 2
    result = invoke(runner, "send", "-A", spec, "add", "--countdown", "1", "--eta", "2030-01-01T00:00:00Z")
    assert result.exit_code == 2
    assert "--countdown or --eta" in result.output


def test_send_unregistered_name_warns_but_sends(runner: CliRunner, spec: str, app_module: ModuleType) -> None:
    result = invoke(runner, "send", "-A", spec, "nosuchtask")
    assert result.exit_code == 0
    assert "not registered in this app" in result.stderr
    assert [s.name for s in app_module.app.broker.pending("machinery_tasks")] == ["nosuchtask"]


@pytest.mark.usefixtures("worker_thread")
def test_send_wait_prints_value_and_fails_on_failure(runner: CliRunner, spec: str) -> None:
    ok = invoke(runner, "send", "-A", spec, "add", "1", "2", "--wait", "--timeout", "10")
    assert ok.exit_code == 0, ok.output
    assert ok.output.split()[0] == "add"
    assert ok.output.split()[2:] == ["SUCCESS", "3"]

    bad = invoke(runner, "send", "-A", spec, "fail", "Test error", "--wait", "--json")
    assert bad.exit_code == 1
    record = json.loads(bad.output)
    assert (record["state"], record["error"], record["result"]) == ("FAILURE", "Test error", None)


@pytest.mark.usefixtures("worker_thread")
def test_result_of_a_finished_task(runner: CliRunner, spec: str, app_module: ModuleType) -> None:
    app: Machinery = app_module.app
    sent = app.send_task(app.tasks["add"].s(2, 3))
    shown = invoke(runner, "result", "-A", spec, sent.uuid, "--wait", "--timeout", "10")
    assert shown.exit_code == 0, shown.output
    fields = dict(line.split(None, 1) for line in shown.output.strip().splitlines())
    assert fields["uuid"] == sent.uuid
    assert fields["name"] == "add"
    assert fields["state"] == "SUCCESS"
    assert fields["result"] == "5"
    record = json.loads(invoke(runner, "result", "-A", spec, sent.uuid, "--json").output)
    assert record["result"] == 5
    assert record["results"] == [{"type": "int64", "value": 5}]
    assert record["created_at"].endswith("Z")


def test_result_unknown_uuid_is_an_error(runner: CliRunner, spec: str) -> None:
    for extra in ([], ["--wait", "--timeout", "30"]):
        started = time.monotonic()
        result = invoke(runner, "result", "-A", spec, "task_nope", *extra)
        assert_one_line_error(result, "unknown task uuid 'task_nope'")
        assert time.monotonic() - started < 5


def test_result_wait_timeout_exits_3(runner: CliRunner, spec: str, app_module: ModuleType) -> None:
    sent = app_module.app.send_task(app_module.app.tasks["add"].s(1))  # no worker: stays PENDING
    result = invoke(runner, "result", "-A", spec, sent.uuid, "--wait", "--timeout", "0.2")
    assert_one_line_error(result, "not finished after 0.2s", code=3)
    send_wait = invoke(runner, "send", "-A", spec, "add", "1", "--wait", "--timeout", "0.2")
    assert_one_line_error(send_wait, "not finished after 0.2s", code=3)


# --- loading the app and errors ---------------------------------------------------------------


def test_app_from_env_and_default_attribute(
    runner: CliRunner, app_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MACHINERY_APP", app_module.__name__)  # no ":app": the attribute defaults to app
    result = invoke(runner, "inspect", "pending")
    assert result.exit_code == 0, result.output
    assert "no pending tasks" in result.output


def test_app_from_a_file_path(runner: CliRunner, isolated_path: Path, memory_url: str) -> None:
    name = write_app(isolated_path, memory_url)
    try:
        result = invoke(runner, "send", "-A", f"{isolated_path / name}.py:app", "add", "1")
        assert result.exit_code == 0, result.output
    finally:
        sys.modules.pop(name, None)


def test_app_from_the_current_directory(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_url: str
) -> None:
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    name = write_app(tmp_path, memory_url)
    try:
        result = invoke(runner, "inspect", "pending", "-A", f"{name}:app")
        assert result.exit_code == 0, result.output
    finally:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("command", [["send", "add"], ["result", "x"], ["inspect", "pending"], ["worker"]])
def test_missing_app_is_a_clear_error(runner: CliRunner, isolated_path: Path, command: list[str]) -> None:
    assert_one_line_error(invoke(runner, *command), "no app given", "MACHINERY_APP")


def test_bad_app_specs(runner: CliRunner, app_module: ModuleType) -> None:
    name = app_module.__name__
    cases = {
        "no_such_module_xyz:app": "no module named 'no_such_module_xyz'",
        f"{name}:nope": f"{name} has no attribute 'nope'",
        f"{name}:not_an_app": "not_an_app is a int, not a Machinery app",
        f"{name}:1bad": "expected module:attribute",
        "/no/such/file.py:app": "no such file",
    }
    for spec, message in cases.items():
        for command in (["send", "-A", spec, "add"], ["worker", "-A", spec]):
            assert_one_line_error(invoke(runner, *command), message)


def test_app_module_that_fails_to_import(runner: CliRunner, isolated_path: Path) -> None:
    (isolated_path / "broken_cli_app.py").write_text("import no_such_dependency_xyz\n")
    try:
        result = invoke(runner, "send", "-A", "broken_cli_app:app", "add")
        assert_one_line_error(result, "cannot load app 'broken_cli_app:app'", "no_such_dependency_xyz")
        with pytest.raises(ModuleNotFoundError):
            runner.invoke(
                cli, ["--traceback", "send", "-A", "broken_cli_app:app", "add"], catch_exceptions=False
            )
    finally:
        sys.modules.pop("broken_cli_app", None)


def test_unknown_scheme_names_the_installed_ones_and_hides_the_password(
    runner: CliRunner, isolated_path: Path
) -> None:
    name = write_app(isolated_path, "nosuch://user:s3cret@host:1/0")
    result = invoke(runner, "send", "-A", f"{name}:app", "add", "1")
    assert_one_line_error(result, "nosuch://", "installed schemes: ")
    installed = result.stderr.split("installed schemes: ")[1].rstrip(")\n").split(", ")
    assert {"memory", "sqlite"} <= set(installed)
    assert "s3cret" not in result.output


def test_first_party_scheme_names_the_package(
    runner: CliRunner, isolated_path: Path, uninstalled_scheme: str
) -> None:
    from machinery.plugins import FIRST_PARTY

    scheme = uninstalled_scheme
    name = write_app(isolated_path, f"{scheme}://:s3cret@localhost:1234/0")
    result = invoke(runner, "inspect", "pending", "-A", f"{name}:app")
    assert_one_line_error(result, f"pip install {FIRST_PARTY[scheme]}")
    assert "s3cret" not in result.output


def test_unreachable_store_is_a_one_line_error(runner: CliRunner, isolated_path: Path) -> None:
    name = write_app(isolated_path, "sqlite:////nonexistent-dir-for-machinery/x/tasks.db")
    result = invoke(runner, "send", "-A", f"{name}:app", "add", "1")
    assert_one_line_error(result, "/nonexistent-dir-for-machinery/x/tasks.db")


# --- a real worker process --------------------------------------------------------------------


def start_worker(directory: Path, module: str, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(directory))
    env.pop("MACHINERY_APP", None)
    return subprocess.Popen(
        [sys.executable, "-m", "machinery", "worker", "-A", f"{module}:app", "-c", "2", *extra],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_state(result: AsyncResult, state: State, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while result.state is not state:
        assert time.monotonic() < deadline, f"{result} never reached {state}"
        time.sleep(0.02)


@pytest.fixture
def sqlite_app(isolated_path: Path) -> Iterator[tuple[str, Machinery]]:
    url = f"sqlite:///{isolated_path / 'tasks.db'}"
    name = write_app(isolated_path, url)
    app = Machinery(Config(broker=url, result_backend=url))
    yield name, app
    app.close()


def test_worker_process_runs_tasks_and_exits_0_on_sigterm(
    runner: CliRunner, isolated_path: Path, sqlite_app: tuple[str, Machinery]
) -> None:
    name, _ = sqlite_app
    worker = start_worker(isolated_path, name, "--queue", "machinery_tasks,other", "--consumer-tag", "w-test")
    try:
        sent = invoke(runner, "send", "-A", f"{name}:app", "add", "1", "2", "--json")
        task_uuid = json.loads(sent.output)["uuid"]
        waited = invoke(
            runner, "result", "-A", f"{name}:app", task_uuid, "--wait", "--timeout", "20", "--json"
        )
        assert json.loads(waited.output)["result"] == 3, waited.output
        other = invoke(runner, "send", "-A", f"{name}:app", "add", "5", "6", "--queue", "other", "--wait")
        assert other.output.split()[2:] == ["SUCCESS", "11"], other.output
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=15)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, output
    assert "Traceback" not in output
    assert "tasks (4)    add, echo, fail, sleepy" in output  # the start-up banner
    assert "worker w-test (machinery-core" in output
    assert "queues       machinery_tasks, other" in output


def test_sigterm_drains_the_running_task_then_exits_0(
    isolated_path: Path, sqlite_app: tuple[str, Machinery]
) -> None:
    name, app = sqlite_app
    worker = start_worker(isolated_path, name)
    try:
        running = app.send_task(Signature("sleepy", args=[1.5]))
        wait_for_state(running, State.STARTED)
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, output
    assert running.state is State.SUCCESS  # finished during the drain, not returned to the queue
    assert app.broker.pending("machinery_tasks") == []


def test_second_signal_aborts_with_130_and_returns_the_task(
    isolated_path: Path, sqlite_app: tuple[str, Machinery]
) -> None:
    name, app = sqlite_app
    worker = start_worker(isolated_path, name)
    try:
        running = app.send_task(Signature("sleepy", args=[30]))
        wait_for_state(running, State.STARTED)
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert worker.poll() is None  # draining: waits for the running task
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=15)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 130, output
    assert [s.uuid for s in app.broker.pending("machinery_tasks")] == [running.uuid]


def test_python_dash_m_machinery_matches_the_console_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "machinery", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.startswith("Usage: machinery ")


def test_errors_in_a_real_process_are_one_line_on_stderr(
    sqlite_app: tuple[str, Machinery], tmp_path: Path
) -> None:
    name, _ = sqlite_app
    env = dict(os.environ, PYTHONPATH=str(tmp_path), MACHINERY_APP=f"{name}:app")
    out = subprocess.run(
        [sys.executable, "-m", "machinery", "result", "task_nope"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        "Error: unknown task uuid 'task_nope' (never sent, purged, or its result expired)"
    ]

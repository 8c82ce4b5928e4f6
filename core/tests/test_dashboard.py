"""The dashboard's routes with Starlette's TestClient on memory:// (no server, no browser): what the pages
show, the token rules for actions and pages, redaction, and the backend without an events store.
The browser tests are in test_dashboard_browser.py."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="needs the dashboard extra: pip install 'machinery-core[dashboard]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

import httpx
from click.testing import CliRunner
from starlette.testclient import TestClient

from machinery import Machinery, Signature
from machinery.cli import cli
from machinery.codec import signature_to_dict
from machinery.config import Config
from machinery.dashboard.server import TokenRequiredError, is_loopback, settings_for
from machinery.dashboard.web import DashboardSettings, create_app
from machinery.events import SupportsEvents, TaskEvent, WorkerHeartbeat
from machinery.signature import State, TaskState
from machinery.transports.null import NullBackend

TOKEN = "t0ken-for-tests"
SECRET = "hunter2"


def make_app(record_args: bool = False) -> Machinery:
    name = uuid.uuid4().hex  # memory:// stores are shared by name: one per test
    config = Config()
    config.broker = f"memory://user:{SECRET}@{name}"
    config.result_backend = f"memory://{name}"
    config.events.record_args = record_args
    return Machinery(config)


def store_of(app: Machinery) -> SupportsEvents:
    assert isinstance(app.backend, SupportsEvents)
    return app.backend


def client(app: Machinery, **settings: object) -> TestClient:
    return TestClient(create_app(app, DashboardSettings(**settings)))  # type: ignore[arg-type]


def event(kind: str, uuid: str, at: float, **fields: object) -> TaskEvent:
    return TaskEvent(kind, uuid, "add", "machinery_tasks", "host:1:ab12", at, **fields)  # type: ignore[arg-type]


def fail_task(app: Machinery, uuid: str, sig: Signature | None = None) -> None:
    """A task that failed in a worker: its FAILURE state and its events (with the message when given)."""
    now = time.time()
    app.backend.set_state(TaskState(uuid, State.FAILURE, task_name="add", error="boom"))
    wire = signature_to_dict(sig) if sig is not None else None
    store_of(app).record_events(
        [
            event("received", uuid, now - 1, signature=wire),
            event("failed", uuid, now, runtime=0.5, error=f"cannot reach redis://:{SECRET}@cache:6379/0"),
        ]
    )


def in_a_minute() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=60)


@pytest.fixture
def app() -> Iterator[Machinery]:
    the_app = make_app()
    yield the_app
    the_app.close()


# ------------------------------------------------------------------------------------------ pages


def test_overview_shows_workers_queues_and_recent_tasks(app: Machinery) -> None:
    now = time.time()
    store = store_of(app)
    store.record_heartbeat(
        WorkerHeartbeat("live:1:aa", "live", 1, ("machinery_tasks",), 4, 1, 7, 2, "0.2", now - 60, now, 5)
    )
    store.record_heartbeat(
        WorkerHeartbeat("gone:2:bb", "gone", 2, ("emails",), 2, 0, 3, 0, "0.2", now - 600, now - 100, 5)
    )
    store.record_heartbeat(
        WorkerHeartbeat(
            "done:3:cc", "done", 3, ("emails",), 2, 0, 3, 0, "0.2", now - 900, now - 100, 5, stopped=True
        )
    )
    store.record_events(
        [event("started", "task_a", now - 2), event("succeeded", "task_a", now - 1, runtime=0.012)]
    )
    app.send_task(Signature("add", args=[1, 2]))
    app.send_task(Signature("add", args=[1, 2], routing_key="emails"))
    app.send_task(Signature("add", args=[3], eta=in_a_minute()))
    page = client(app).get("/")
    assert page.status_code == 200
    html = page.text
    assert re.search(r"live:1:aa</code></td>\s*<td><span class=\"state state-LIVE\">live", html)
    assert re.search(r"gone:2:bb</code></td>\s*<td><span class=\"state state-LOST\">lost", html)
    assert re.search(r"done:3:cc</code></td>\s*<td><span class=\"state state-STOPPED\">stopped", html)
    assert html.index("live:1:aa") < html.index("gone:2:bb") < html.index("done:3:cc")
    counts = r'<td class="pending">1</td>\s*<td class="delayed">1</td>'
    assert re.search(r'data-queue="machinery_tasks">\s*<td>machinery_tasks</td>\s*' + counts, html)
    assert re.search(r'data-queue="emails">\s*<td>emails</td>\s*<td class="pending">1</td>', html)
    assert 'data-uuid="task_a"' in html and "state-SUCCESS" in html and "12 ms" in html
    assert "Re-send" not in html and "Purge" not in html, "no token: no actions"


def test_the_partial_request_renders_only_the_live_part(app: Machinery) -> None:
    page = client(app).get("/", headers={"X-Dashboard-Partial": "1"})
    assert page.status_code == 200
    assert "<html" not in page.text and "<h2>Queues</h2>" in page.text


def test_secrets_are_never_shown(app: Machinery) -> None:
    fail_task(app, "task_f", Signature("add", args=[SECRET], uuid="task_f"))
    web = client(app)
    pages = [web.get(path).text for path in ("/", "/tasks", "/tasks/task_f", "/dead-letters")]
    assert all(SECRET not in html for html in pages)
    assert f"memory://{app.config.result_backend[9:]}" in pages[0], "the broker URL is shown redacted"
    assert "cannot reach redis://cache:6379/0" in pages[2]
    assert "Config.events.record_args is off" in pages[2]


def test_task_page_shows_arguments_only_when_recorded() -> None:
    app = make_app(record_args=True)
    fail_task(app, "task_f", Signature("add", args=[1, 2], kwargs={"scale": 3}, uuid="task_f"))
    html = client(app).get("/tasks/task_f").text
    assert '<code class="args">1, 2, scale=3</code>' in html
    assert "FAILURE" in html and "Retries</th><td>0" in html
    app.close()


def test_task_page_links_its_trace_when_a_url_template_is_set(app: Machinery) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    store_of(app).record_events([event("succeeded", "task_t", time.time(), trace_id=trace)])
    plain = client(app).get("/tasks/task_t").text
    assert f"<code>{trace}</code>" in plain and 'class="trace"' not in plain
    linked = client(app, trace_url="http://jaeger:16686/trace/{trace_id}").get("/tasks/task_t").text
    assert f'<a class="trace" href="http://jaeger:16686/trace/{trace}" rel="noreferrer">{trace}</a>' in linked
    with_password = client(app, trace_url=f"https://u:{SECRET}@tempo.example/trace/{{trace_id}}")
    assert f'href="https://tempo.example/trace/{trace}"' in with_password.get("/tasks/task_t").text
    with pytest.raises(ValueError, match="trace_id"):
        DashboardSettings(trace_url="http://jaeger/trace/")
    with pytest.raises(ValueError, match="http"):
        DashboardSettings(trace_url="javascript:alert('{trace_id}')")


def test_task_page_shows_group_progress_chord_callback_and_retries(app: Machinery) -> None:
    members = ["task_m1", "task_m2", "task_m3"]
    app.backend.init_group("group_g", members)
    app.backend.set_state(TaskState("task_m1", State.SUCCESS, task_name="add"))
    app.backend.set_state(TaskState("task_m2", State.STARTED, task_name="add"))
    sig = Signature(
        "add", uuid="task_m1", group_uuid="group_g", chord_callback=Signature("total", uuid="task_cb")
    )
    sig.on_success = [Signature("notify", uuid="task_next")]
    now = time.time()
    store_of(app).record_events(
        [
            event(
                "retried",
                "task_m1",
                now - 2,
                error="try later",
                group_uuid="group_g",
                signature=signature_to_dict(sig),
            ),
            event("succeeded", "task_m1", now - 1, runtime=0.1, group_uuid="group_g"),
        ]
    )
    html = client(app).get("/tasks/task_m1").text
    assert "1 of 3 done (1 succeeded, 0 failed)" in html
    assert '<a href="/tasks/task_cb">total</a>' in html and "waits for every member" in html
    assert 'on success: <a href="/tasks/task_next">notify</a>' in html
    assert "Retries</th><td>1" in html
    app.backend.set_state(TaskState("task_m2", State.SUCCESS, task_name="add"))
    app.backend.set_state(TaskState("task_m3", State.SUCCESS, task_name="add"))
    assert app.backend.trigger_chord("group_g")
    html = client(app).get("/tasks/task_m1").text
    assert "3 of 3 done (3 succeeded, 0 failed)" in html and "total</a>\n  (sent)" in html


def test_unknown_task_is_a_404_page(app: Machinery) -> None:
    page = client(app).get("/tasks/task_nope")
    assert page.status_code == 404 and "Unknown task" in page.text


def test_recent_tasks_are_paginated_and_filtered(app: Machinery) -> None:
    now = time.time()
    events = [event("succeeded" if i % 2 else "failed", f"task_{i:03d}", now - 1000 + i) for i in range(120)]
    store_of(app).record_events(events)
    web = client(app)
    first = web.get("/tasks").text
    assert first.index("task_119") < first.index("task_070") and "task_069" not in first
    second = web.get("/tasks?page=2").text
    assert "task_069" in second and "task_119" not in second and "← newer" in second
    failed = web.get("/tasks?state=FAILURE").text
    assert "task_118" in failed and "task_119" not in failed
    assert web.get("/tasks?state=BOGUS").status_code == 400


def test_a_backend_without_events_store_says_so_plainly() -> None:
    config = Config()
    config.broker = f"memory://{uuid.uuid4().hex}"
    app = Machinery(config, backend=NullBackend(config))
    web = client(app)
    for path in ("/", "/tasks"):
        page = web.get(path)
        assert page.status_code == 200
        assert "keeps no events: no worker heartbeats or task history are available" in page.text
    assert "<h2>Queues</h2>" in web.get("/").text, "queues come from the broker: still shown"


def test_dead_letters_page_lists_them(app: Machinery) -> None:
    app.send_task(Signature("add", args=[1], uuid="task_dl"))
    (delivery,) = app.broker.consume("machinery_tasks", 1, 1.0)
    delivery.nack(requeue=False, reason=f"poison: see amqp://u:{SECRET}@mq/")
    html = client(app).get("/dead-letters").text
    assert 'href="/tasks/task_dl"' in html and "poison: see amqp://mq/" in html and SECRET not in html


# ------------------------------------------------------------------------------------------ actions


def test_actions_do_not_exist_without_a_token(app: Machinery) -> None:
    app.send_task(Signature("add", args=[1]))
    page = client(app).post("/actions/purge", data={"queue": "machinery_tasks", "token": ""})
    assert page.status_code in (404, 405)
    assert len(app.broker.pending("machinery_tasks")) == 1


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        ({}, {}),
        ({"token": "wrong"}, {}),
        ({"token": TOKEN}, {"Origin": "http://evil.example"}),
    ],
    ids=["missing", "wrong", "other-origin"],
)
def test_actions_are_refused_without_the_right_token_from_this_site(
    app: Machinery, data: dict[str, str], headers: dict[str, str]
) -> None:
    app.send_task(Signature("add", args=[1]))
    web = client(app, token=TOKEN)
    web.cookies.set("machinery_dashboard", "anything")  # a cookie never authorises an action
    page = web.post("/actions/purge", data={"queue": "machinery_tasks", **data}, headers=headers)
    assert page.status_code == 403 and "token is missing or wrong" in page.text
    assert len(app.broker.pending("machinery_tasks")) == 1, "a refused action changes nothing"


def test_purge_with_the_token_empties_the_queue(app: Machinery) -> None:
    app.send_task(Signature("add", args=[1]))
    web = client(app, token=TOKEN)
    assert "Purge" in web.get("/").text
    page = web.post("/actions/purge", data={"queue": "machinery_tasks", "token": TOKEN, "next": "/"})
    assert page.status_code == 200 and "purged queue machinery_tasks" in page.text
    assert app.broker.pending("machinery_tasks") == []
    by_header = web.post(
        "/actions/purge", data={"queue": "machinery_tasks"}, headers={"X-Machinery-Token": TOKEN}
    )
    assert by_header.status_code == 200


def test_resend_failed_task_publishes_its_recorded_message_with_the_same_uuid(app: Machinery) -> None:
    fail_task(app, "task_f", Signature("add", args=[4, 5], uuid="task_f", routing_key="machinery_tasks"))
    web = client(app, token=TOKEN)
    assert "Re-send" in web.get("/tasks/task_f").text
    page = web.post("/actions/resend-task", data={"uuid": "task_f", "token": TOKEN})
    assert page.status_code == 200 and "re-sent failed task add task_f" in page.text
    (sent,) = app.broker.pending("machinery_tasks")
    assert (sent.uuid, sent.arg_values) == ("task_f", [4, 5])
    state = app.backend.get_state("task_f")
    assert state is not None and state.state is State.PENDING
    again = web.post("/actions/resend-task", data={"uuid": "task_f", "token": TOKEN})
    assert again.status_code == 409 and "not FAILURE" in again.text


def test_resend_needs_a_recorded_message(app: Machinery) -> None:
    fail_task(app, "task_f")  # record_args off: no message recorded
    web = client(app, token=TOKEN)
    assert "Re-send" not in web.get("/tasks/task_f").text
    page = web.post("/actions/resend-task", data={"uuid": "task_f", "token": TOKEN})
    assert page.status_code == 409 and "record_args" in page.text
    assert app.broker.pending("machinery_tasks") == []


def test_resend_dead_letter(app: Machinery) -> None:
    app.send_task(Signature("add", args=[1], uuid="task_dl"))
    (delivery,) = app.broker.consume("machinery_tasks", 1, 1.0)
    delivery.nack(requeue=False, reason="poison")
    web = client(app, token=TOKEN)
    form = {"queue": "machinery_tasks", "uuid": "task_dl", "token": TOKEN}
    page = web.post("/actions/resend-dead-letter", data=form)
    assert page.status_code == 200 and "re-sent dead letter add task_dl" in page.text
    assert [s.uuid for s in app.broker.pending("machinery_tasks")] == ["task_dl"]
    missing = web.post("/actions/resend-dead-letter", data={**form, "uuid": "task_other"})
    assert missing.status_code == 409


def test_action_redirect_target_stays_on_this_site(app: Machinery) -> None:
    web = client(app, token=TOKEN)
    page = web.post("/actions/purge", data={"queue": "q", "token": TOKEN, "next": "//evil.example/x"})
    assert 'href="/" id="back"' in page.text


# ------------------------------------------------------------------------------------------ beyond localhost


def test_listening_beyond_localhost_needs_a_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with pytest.raises(TokenRequiredError, match="give a token"):
        settings_for("0.0.0.0", None)
    assert settings_for("0.0.0.0", TOKEN).pages_need_token
    assert not settings_for("127.0.0.1", None).pages_need_token


def test_beyond_localhost_every_page_needs_the_token(app: Machinery) -> None:
    web = TestClient(create_app(app, settings_for("0.0.0.0", TOKEN)))
    for path in ("/", "/tasks", "/tasks/task_x", "/dead-letters"):
        page = web.get(path, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
    assert web.get("/", headers={"X-Dashboard-Partial": "1"}).status_code == 401
    login = web.get("/login")
    assert login.status_code == 200 and "memory://" not in login.text, "the login page tells nothing"
    assert web.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert web.post("/login", data={"token": "wrong"}).status_code == 403
    ok = web.post("/login?next=/tasks", data={"token": TOKEN}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/tasks"
    cookie = ok.headers["set-cookie"]
    assert (
        "HttpOnly" in cookie
        and "SameSite=strict" in cookie.replace("Strict", "strict")
        and TOKEN not in cookie
    )
    assert web.get("/").status_code == 200, "the session cookie opens the pages"
    app.send_task(Signature("add", args=[1]))
    refused = web.post("/actions/purge", data={"queue": "machinery_tasks"})
    assert refused.status_code == 403, "the cookie alone never authorises an action"


def test_pages_forbid_framing_and_foreign_scripts(app: Machinery) -> None:
    headers = client(app).get("/").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


# ------------------------------------------------------------------------------------------ the command


def test_command_refuses_a_public_address_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MACHINERY_DASHBOARD_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["dashboard", "-A", "nowhere:app", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "beyond localhost: give a token" in result.output
    bad = CliRunner().invoke(cli, ["dashboard", "-A", "nowhere:app", "--trace-url", "http://x/"])
    assert bad.exit_code == 2 and "{trace_id}" in bad.output


# ------------------------------------------------------------------------------------------ a full store


def test_pages_stay_responsive_with_100k_events_in_sqlite(tmp_path: Path) -> None:
    """The store at its default bound (100,000 events): the pages read a window, never the whole store."""
    config = Config()
    config.broker = config.result_backend = f"sqlite:///{tmp_path / 'machinery.db'}"
    app = Machinery(config)
    store = store_of(app)
    start = time.time() - 1200  # within results_expire_in (1 h by default)
    kinds = ("received", "started", "succeeded", "failed")
    batch: list[TaskEvent] = []
    for i in range(100_000):
        kind = kinds[i % 4]
        batch.append(
            event(kind, f"task_{i // 4:06d}", start + i * 0.01, runtime=0.002 if i % 4 > 1 else None)
        )
        if len(batch) == 5000:
            store.record_events(batch)
            batch = []
    web = client(app, token=TOKEN)
    timings = {}
    for path in ("/", "/tasks", "/tasks?page=20", "/tasks?state=FAILURE", "/tasks/task_000007"):
        began = time.perf_counter()
        page = web.get(path)
        timings[path] = time.perf_counter() - began
        assert page.status_code == 200, path
    assert "task_024999" in web.get("/tasks").text, "the newest task is on the first page"
    print(
        "\n100k events in sqlite://, render times: "
        + ", ".join(f"{p} {t * 1000:.0f} ms" for p, t in timings.items())
    )
    app.close()


def test_command_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "machinery.dashboard.server", None)  # as if starlette were missing
    result = CliRunner().invoke(cli, ["dashboard", "-A", "nowhere:app"])
    assert result.exit_code == 1 and "pip install 'machinery-core[dashboard]'" in result.output


@pytest.mark.services
def test_memcache_results_show_the_sentence_and_still_the_queues() -> None:
    """The issue's example of a backend without an events store: machinery-memcache on a real memcached."""
    pytest.importorskip("machinery_memcache", reason="machinery-memcache is not installed")
    from machinery.testing import require_env

    config = Config()
    config.broker = f"memory://{uuid.uuid4().hex}"
    config.result_backend = require_env("MEMCACHE_URL", "memcached")
    app = Machinery(config)
    app.send_task(Signature("add", args=[1]))
    html = client(app).get("/").text
    assert "keeps no events: no worker heartbeats or task history are available" in html
    assert '<td class="pending">1</td>' in html
    app.close()


def test_the_command_serves_the_dashboard(tmp_path: Path) -> None:
    """`machinery dashboard` in its own process: it logs where it listens, serves pages, guards actions."""
    (tmp_path / "dashapp.py").write_text(
        "from machinery import Machinery\nfrom machinery.config import Config\n"
        f"app = Machinery(Config(broker='sqlite:///{tmp_path}/m.db', result_backend='sqlite:///{tmp_path}/m.db'))\n"
    )
    with socket.socket() as probe:  # a free port (the command takes a number, not a socket)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "MACHINERY_DASHBOARD_TOKEN": TOKEN}
    command = [sys.executable, "-m", "machinery", "dashboard", "-A", "dashapp:app", "--port", str(port)]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:  # until uvicorn says it listens (or the process ends)
            lines.append(line)
            if "Uvicorn running on" in line:
                break
        assert any(f"on http://127.0.0.1:{port} (pages open on localhost, actions on" in x for x in lines), (
            lines
        )
        base = f"http://127.0.0.1:{port}"
        assert "<h2>Queues</h2>" in httpx.get(base + "/").text
        assert httpx.post(base + "/actions/purge", data={"queue": "q"}).status_code == 403
        assert httpx.post(base + "/actions/purge", data={"queue": "q", "token": TOKEN}).status_code == 200
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=10)[1]
    # uvicorn shuts down gracefully on SIGTERM (recent versions then re-raise the signal: exit -15)
    assert "Finished server process" in rest and proc.returncode in (0, -signal.SIGTERM)


@pytest.mark.services
def test_redis_events_store_feeds_the_pages() -> None:
    """A second real events store (machinery-redis: a capped stream) behind the same pages."""
    pytest.importorskip("machinery_redis", reason="machinery-redis is not installed")
    from redis_testlib import require_env as redis_env
    from redis_testlib import with_db

    name = uuid.uuid4().hex
    config = Config()
    config.broker = f"memory://{name}"
    config.result_backend = with_db(redis_env("REDIS_URL", "redis"))
    app = Machinery(config)
    store = store_of(app)
    now = time.time()
    store.record_heartbeat(
        WorkerHeartbeat(f"r:1:{name[:4]}", "r", 1, (name,), 2, 0, 1, 0, "0.2", now, now, 5)
    )
    task = f"task_{name}"
    store.record_events([event("started", task, now - 1), event("succeeded", task, now, runtime=0.25)])
    web = client(app)
    overview = web.get("/").text
    assert (
        f"r:1:{name[:4]}" in overview
        and f'data-uuid="{task}"' in overview
        and f'data-queue="{name}"' in overview
    )
    page = web.get(f"/tasks/{task}").text
    assert "<td>started</td>" in page and "<td>succeeded</td>" in page and "250 ms" in page
    app.close()


def test_a_failing_broker_is_a_clear_page_not_a_crash(
    app: Machinery, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_: object) -> list[Signature]:
        raise ConnectionError(f"cannot reach amqp://u:{SECRET}@mq:5672/")

    monkeypatch.setattr(app.broker, "delayed", down)
    monkeypatch.setattr(app.broker, "purge", down)
    page = client(app).get("/")
    assert page.status_code == 503
    assert (
        "the broker or the result backend failed: ConnectionError: cannot reach amqp://mq:5672/" in page.text
    )
    assert SECRET not in page.text
    action = client(app, token=TOKEN).post("/actions/purge", data={"queue": "q", "token": TOKEN})
    assert action.status_code == 503 and SECRET not in action.text

"""End to end: a Machinery app with the AMQP broker (and the AMQP or SQLite backend) running
Go Machinery's example workflows with its expected values."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from amqp_apps import make_app
from amqp_testlib import Admin, Names

from machinery import Chain, Chord, Group, Machinery
from machinery.plugins import list_schemes

pytestmark = pytest.mark.services


def backends() -> list[str]:
    kinds = ["amqp"]
    if any(row.scheme == "sqlite" and row.kind == "backend" for row in list_schemes()):
        kinds.append("sqlite")
    return kinds


@pytest.fixture(params=backends())
def app(
    request: pytest.FixtureRequest, amqp_url: str, names: Names, admin: Admin, tmp_path: Path
) -> Iterator[Machinery]:
    backend = amqp_url if request.param == "amqp" else f"sqlite:///{tmp_path / 'results.db'}"
    application = make_app(amqp_url, backend, names.suffix)
    worker = application.worker(concurrency=4)
    thread = worker.launch_async()
    yield application
    worker.quit()
    thread.join(15)
    application.close()
    assert not thread.is_alive()


def test_machinery_example_values(app: Machinery) -> None:
    add, multiply = app.get_task("add"), app.get_task("multiply")
    assert app.send_task(add.s(1, 1)).get(timeout=20) == 2

    group = Group([add.s(1, 1), add.s(2, 2), add.s(5, 6)])
    assert sorted(app.send_group(group, concurrency=2).get(timeout=20)) == [2, 4, 11]

    chord = Chord(Group([add.s(1, 1), add.s(2, 2), add.s(5, 6)]), multiply.s())
    assert app.send_chord(chord, concurrency=10).get(timeout=20) == 88

    chain = Chain([add.s(1, 1), add.s(2, 2), add.s(5, 6), multiply.s(4)])
    assert app.send_chain(chain).get(timeout=20) == 68


def test_many_tasks_from_several_threads(app: Machinery) -> None:
    add = app.get_task("add")
    results: list[object] = []

    def send(base: int) -> None:
        rs = [app.send_task(add.s(base, i)) for i in range(20)]
        results.extend(r.get(timeout=30) for r in rs)

    threads = [threading.Thread(target=send, args=(b * 100,)) for b in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted(b * 100 + i for b in range(4) for i in range(20))


def test_chord_of_many_members_fires_once(app: Machinery) -> None:
    add, multiply = app.get_task("add"), app.get_task("multiply")
    chord = Chord(Group([add.s(1, 0) for _ in range(12)]), multiply.s())
    result = app.send_chord(chord, concurrency=4)
    assert result.get(timeout=30) == 1

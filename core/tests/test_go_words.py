"""Go Machinery's bare words in URLs: ``eager`` (broker, backend, lock) and the ``null`` backend."""

from __future__ import annotations

import pytest

from machinery import Chain, Config, Group, Machinery
from machinery.transports.memory.lock import MemoryLock
from machinery.transports.null import NoResultBackendError, NullBackend


def test_eager_broker_word_runs_tasks_in_process() -> None:
    app = Machinery(Config(broker="eager", result_backend="eager", lock="eager"))

    @app.task
    def add(*args: int) -> int:
        return sum(args)

    assert app.config.eager is True
    assert app.send_task(add.s(2, 3)).get(timeout=5) == 5
    assert isinstance(app.lock, MemoryLock)
    app.close()


def test_go_words_match_by_prefix_as_go_does() -> None:
    app = Machinery(Config(broker="eager_mode", result_backend="null_backend"))
    assert app.config.eager is True
    assert isinstance(app.backend, NullBackend)
    app.close()


def test_null_backend_discards_results_and_says_so() -> None:
    app = Machinery(Config(broker="memory://", result_backend="null"))

    @app.task
    def add(*args: int) -> int:
        return sum(args)

    result = app.send_task(add.s(1, 1))  # sending works: the state is discarded
    with pytest.raises(NoResultBackendError, match="'null'"):
        result.get(timeout=1)
    with pytest.raises(NoResultBackendError, match="groups, chords and chains"):
        app.send_group(Group([add.s(1), add.s(2)]))
    with pytest.raises(NoResultBackendError, match="chains need stored results"):
        app.send_chain(Chain([add.s(1), add.s(2)]))
    assert app.broker.pending(app.config.default_queue) and len(app.broker.pending("machinery_tasks")) == 1
    app.close()

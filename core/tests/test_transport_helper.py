"""machinery.plugins.transport(): the hooks of a transport package, generated."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery import Config, Machinery, builtin
from machinery.errors import PluginNotFoundError
from machinery.plugins import (
    SchemeRow,
    Transport,
    _distribution_of,
    get_plugin_manager,
    list_schemes,
    resolve_backend,
    resolve_broker,
    transport,
)
from machinery.transports.memory.broker import MemoryBroker

# A third-party package in the module form: the entry point names the module holding `plugin`.
PACKAGE = {
    "machinery_zeta/__init__.py": "",
    "machinery_zeta/plugin.py": """
        from machinery.plugins import hookimpl, transport

        plugin = transport(
            ["zeta", "zetas"],
            broker="machinery_zeta.classes:ZetaBroker",
            backend="machinery_zeta.classes:ZetaBackend",
        )
        calls = []


        @hookimpl
        def machinery_publish_with_states(broker, backend, signatures, states):
            calls.append(len(signatures))
            return None
    """,
    "machinery_zeta/classes.py": """
        from machinery.transports.memory.backend import MemoryBackend
        from machinery.transports.memory.broker import MemoryBroker


        class ZetaBroker(MemoryBroker):
            @classmethod
            def from_url(cls, url, config):
                return cls(config, name="zeta")


        class ZetaBackend(MemoryBackend):
            @classmethod
            def from_url(cls, url, config):
                return cls(config, name="zeta")
    """,
}


@pytest.fixture
def zeta(tmp_path: Path) -> Iterator[None]:
    """Install distribution 'machinery-zeta' the way pip would (dist-info with an entry point)."""
    for name, text in PACKAGE.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    dist_info = tmp_path / "machinery_zeta-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: machinery-zeta\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[machinery]\nzeta = machinery_zeta.plugin\n")
    sys.path.insert(0, str(tmp_path))
    get_plugin_manager(refresh=True)
    yield
    sys.path.remove(str(tmp_path))
    for module in [m for m in sys.modules if m.startswith("machinery_zeta")]:
        del sys.modules[module]
    get_plugin_manager(refresh=True)


def test_module_form_registers_the_transport_and_reads_the_distribution(zeta: None) -> None:
    rows = list_schemes()
    for scheme in ("zeta", "zetas"):
        assert SchemeRow(scheme, "broker", "machinery-zeta") in rows
        assert SchemeRow(scheme, "backend", "machinery-zeta") in rows
    assert not any(r.scheme == "zeta" and r.kind == "lock" for r in rows)


def test_classes_are_imported_on_first_use_only(zeta: None) -> None:
    list_schemes()
    assert "machinery_zeta.classes" not in sys.modules, "listing plugins must not import the classes"
    broker = resolve_broker("ZETA://x", Config())
    assert type(broker).__name__ == "ZetaBroker"
    assert "machinery_zeta.classes" in sys.modules


def test_a_generated_plugin_runs_tasks_next_to_its_own_hooks(zeta: None) -> None:
    app = Machinery(Config(broker="zeta://x", result_backend="zeta://x"))

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    worker = app.worker(concurrency=1)
    thread = worker.launch_async()
    try:
        assert app.send_task(add.s(2, 3)).get(timeout=5) == 5
    finally:
        worker.quit()
        thread.join(5)
    assert sys.modules["machinery_zeta.plugin"].calls == [1], "the module's own hook was asked"
    assert type(resolve_backend("zeta://x", Config())).__name__ == "ZetaBackend"


def test_other_schemes_and_missing_kinds_are_not_claimed() -> None:
    t = transport(["x"], broker="machinery.transports.memory.broker:MemoryBroker")
    assert t.machinery_broker("y://a", Config()) is None
    assert t.machinery_backend("x://a", Config()) is None
    assert t.machinery_lock("x://a", Config()) is None
    assert isinstance(t.machinery_broker("x://a", Config()), MemoryBroker)


def test_a_matcher_decides_for_urls_the_scheme_cannot_tell_apart() -> None:
    def by_host(url: str) -> bool:
        return url.startswith("https://queue.example.com/")

    t = transport(
        ["x", "https://queue"],
        broker="machinery.transports.memory.broker:MemoryBroker",
        distribution="machinery-x",
        matches=by_host,
    )
    assert isinstance(t.machinery_broker("https://queue.example.com/123", Config()), MemoryBroker)
    assert t.machinery_broker("https://other.example.com/123", Config()) is None, "same scheme, other host"
    assert t.machinery_broker("x://a", Config()) is None, "the matcher decides alone once given"
    assert t.machinery_backend("https://queue.example.com/123", Config()) is None, "no backend declared"
    assert SchemeRow("https://queue", "broker", "machinery-x") in t.machinery_schemes()
    with pytest.raises(ValueError, match="matches"):
        transport(["x"], broker="a.b:C", matches="https://queue")  # type: ignore[arg-type]


def test_sqs_urls_resolve_through_its_transports() -> None:
    pytest.importorskip("machinery_sqs")
    config = Config()
    go_form = "https://sqs.eu-west-1.amazonaws.com/123456789012"
    assert type(resolve_broker(go_form, config)).__name__ == "SQSBroker"
    assert type(resolve_broker("sqs://", config)).__name__ == "SQSBroker"
    assert (
        type(resolve_backend("https://dynamodb.eu-west-1.amazonaws.com", config)).__name__
        == "DynamoDBBackend"
    )
    with pytest.raises(PluginNotFoundError):
        resolve_broker("https://example.com/not/a/queue", config)
    rows = list_schemes()
    assert SchemeRow("https://sqs", "broker", "machinery-sqs") in rows
    assert SchemeRow("dynamodb", "backend", "machinery-sqs") in rows
    assert SchemeRow("dynamodb", "broker", "machinery-sqs") not in rows, "each kind lists its own schemes"


def test_builtins_use_it_and_name_machinery_core() -> None:
    assert isinstance(builtin.memory, Transport) and isinstance(builtin.sqlite, Transport)
    assert SchemeRow("sqlite", "lock", "machinery-core") in builtin.sqlite.machinery_schemes()


def test_distribution_comes_from_the_entry_points_metadata() -> None:
    assert _distribution_of("machinery") == "machinery-core"
    assert _distribution_of("no_such_package_here") == "no-such-package-here"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schemes": []}, "scheme"),
        ({"schemes": ["x"]}, "at least one"),
        ({"schemes": ["x"], "broker": "pkg.mod.Cls"}, "package.module:Class"),
    ],
)
def test_mistakes_are_explained(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        transport(**kwargs)  # type: ignore[arg-type]


def test_settings_are_collected_without_importing_the_broker() -> None:
    t = transport(
        ["x"],
        broker="machinery_no_such_module.broker:Nope",
        settings="machinery.transports.memory.store:shared",
    )
    from machinery.transports.memory.store import shared

    assert t.machinery_settings() == [shared]
    assert transport(["x"], broker="a.b:C").machinery_settings() == []
    with pytest.raises(ValueError, match="settings"):
        transport(["x"], broker="a.b:C", settings="nocolon")


def test_first_result_calls_implementations_like_pluggy() -> None:
    import pluggy

    from machinery.plugins import MachinerySpec, first_result, hookimpl

    class Old:
        @hookimpl
        def machinery_publish_with_states(self, broker: object, states: object) -> bool | None:
            return None  # declares a subset of the arguments, as pluggy allows

    class New:
        seen: list[object] = []

        @hookimpl
        def machinery_publish_with_states(self, broker: object, backend: object) -> bool | None:
            New.seen.append((broker, backend))
            return True

    pm = pluggy.PluginManager("machinery")
    pm.add_hookspecs(MachinerySpec)
    hook = pm.hook.machinery_publish_with_states
    args = {"broker": "b", "backend": "k", "signatures": [], "states": []}
    assert first_result(hook, **args) is None
    pm.register(Old())
    assert first_result(hook, **args) is None
    pm.register(New())
    assert first_result(hook, **args) is True and New.seen == [("b", "k")]
    assert first_result(hook, **args) == hook(**args)

    class Wrapper:
        @hookimpl(wrapper=True)
        def machinery_publish_with_states(self) -> object:
            result = yield
            return not result

    pm.register(Wrapper())
    assert first_result(hook, **args) is False, "a hook with wrappers goes through pluggy"

"""Plugin-owned settings: a section declared once (machinery.settings) drives env, YAML, validation,
reload and display, for the core's sections and for a third-party plugin's alike."""

from __future__ import annotations

import ast
import inspect
import logging
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest

from machinery import config as config_module
from machinery.config import Config, reloadable_fields
from machinery.errors import ConfigError
from machinery.plugins import get_plugin_manager, hookimpl
from machinery.settings import Check, Section, Spec, above, not_empty, setting
from machinery_amqp.settings import AMQPSettings
from machinery_redis.settings import RedisSettings


@dataclass(repr=False)
class FooSettings(Section):
    """A third-party plugin's section, declared the way the plugin guide shows."""

    name = "foo"

    #: a Python addition: MACHINERY_FOO_LEASE
    lease: float = setting(30.0, reload=True, check=above(0, " seconds"))
    #: a "Go" name: FOO_FOO_QUEUE (wins) or FOO_QUEUE; YAML queue_name (Go's spelling) or queue
    queue: str = setting("foo_tasks", go_env="FOO_QUEUE", yaml=("queue_name", "queue"), check=not_empty("x"))
    #: an extra accepted env name after MACHINERY_FOO_RETRIES
    retries: int = setting(3, env="FOO_RETRIES_ALIAS")
    api_token: str = setting("")
    options: dict[str, Any] = setting(factory=dict)
    client: Any = None

    def problems(self, valid: AbstractSet[str]) -> Iterable[str]:
        if {"lease", "retries"} <= valid and self.retries > self.lease:
            yield f"foo.retries ({self.retries}) must not exceed foo.lease ({self.lease:g})"


class FooPlugin:
    @hookimpl
    def machinery_settings(self) -> list[type[Section]]:
        return [FooSettings]


@pytest.fixture
def foo_plugin() -> Iterator[None]:
    manager = get_plugin_manager()
    plugin = FooPlugin()
    manager.register(plugin, name="test-settings-foo")
    try:
        yield
    finally:
        manager.unregister(plugin)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ URL query options


def test_query_options_apply_over_a_section_read_as_env_values() -> None:
    base = FooSettings(lease=10.0)
    updated = base.with_query({"lease": "2.5", "retries": "2", "queue": "q"}, "foo://h/0")
    assert (updated.lease, updated.retries, updated.queue) == (2.5, 2, "q")
    assert base.lease == 10.0, "the section itself is left alone"
    assert base.with_query({}, "foo://h/0") is base
    assert base.with_query({"retries": ""}, "foo://h/0").retries == 3, "an empty number keeps the value"
    typed = base.with_query({"lease": "5"}, "foo://h/0", values={"retries": 4, "client": object()})
    assert (typed.lease, typed.retries) == (5.0, 4)


@pytest.mark.parametrize(
    ("options", "values", "says"),
    [
        (
            {"colour": "blue"},
            {},
            "unknown option 'colour' (no foo setting has that name); known options: lease,",
        ),
        ({"lease": "soon"}, {}, "option lease='soon' is not a number"),
        ({"retries": "2.5"}, {}, "option retries='2.5' is not a whole number"),
        ({"lease": "0"}, {}, "option lease='0': foo.lease (env MACHINERY_FOO_LEASE) must be > 0 seconds"),
        ({"lease": "1", "retries": "5"}, {}, "foo.retries (5) must not exceed foo.lease (1)"),
        ({"api_token": "x" * 3, "retries": "many"}, {}, "option retries='many'"),
        ({}, {"retries": "2"}, "foo.retries (env FOO_RETRIES_ALIAS) must be an int; got '2' (str)"),
        ({}, {"colour": 1}, "unknown foo setting 'colour'"),
    ],
)
def test_bad_query_options_name_the_option_and_the_url(
    options: dict[str, str], values: dict[str, Any], says: str
) -> None:
    url = "foo://admin:hunter2@h:1/0?" + "&".join(f"{k}={v}" for k, v in options.items())
    with pytest.raises(ConfigError) as info:
        FooSettings().with_query(options, url, values=values)
    message = str(info.value)
    assert says in message
    assert message.startswith("URL 'foo://h:1/0"), "the URL is named, redacted"
    assert "hunter2" not in message


def test_secret_query_values_are_never_shown() -> None:
    @dataclass(repr=False)
    class Vault(Section):
        name = "vault"
        port: int = setting(1)
        token: str = setting("", check=Check(lambda v: len(v) > 8, "must be longer than 8 characters"))

    with pytest.raises(ConfigError) as info:
        Vault().with_query({"token": "s3cr3t"}, "vault://h")
    assert "option token='***'" in str(info.value) and "s3cr3t" not in str(info.value)


def test_a_section_may_read_more_text_forms() -> None:
    @dataclass(repr=False)
    class Sized(Section):
        name = "sized"
        size: int = setting(1024)

        def parse_option(self, spec: Spec, text: str) -> Any:
            if text.endswith("k"):
                return int(text[:-1]) * 1024
            return super().parse_option(spec, text)

    assert Sized().with_query({"size": "2k"}, "sized://h").size == 2048
    assert Sized().with_query({"size": "7"}, "sized://h").size == 7
    with pytest.raises(ConfigError, match="option size='2x' is not a whole number"):
        Sized().with_query({"size": "2x"}, "sized://h")


# ------------------------------------------------------------------------------------------ a plugin section


def test_plugin_section_is_present_with_defaults_and_typed(foo_plugin: None) -> None:
    cnf = Config()
    foo = FooSettings.of(cnf)
    assert foo is cnf.foo and foo == FooSettings()
    assert "foo" in cnf.sections()
    given = Config(foo=FooSettings(lease=5.0))
    assert FooSettings.of(given).lease == 5.0
    assert given != cnf and given.snapshot() == given
    assert pickle.loads(pickle.dumps(given)) == given


def test_plugin_section_from_env(foo_plugin: None, caplog: pytest.LogCaptureFixture) -> None:
    cnf = Config.from_env(
        {
            "MACHINERY_FOO_LEASE": "12.5",
            "FOO_QUEUE": "plain",
            "FOO_FOO_QUEUE": "prefixed",
            "FOO_RETRIES_ALIAS": "4",
        }
    )
    foo = FooSettings.of(cnf)
    assert (foo.lease, foo.queue, foo.retries) == (12.5, "prefixed", 4)
    assert "FOO_FOO_QUEUE and FOO_QUEUE are both set" in caplog.text
    assert Config.from_env({"MACHINERY_FOO_OPTIONS": "a:1,b:x"}).foo.options == {"a": 1, "b": "x"}
    with pytest.raises(ConfigError, match="MACHINERY_FOO_LEASE='soon' is not valid: expected a number"):
        Config.from_env({"MACHINERY_FOO_LEASE": "soon"})


def test_plugin_section_from_yaml(foo_plugin: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "c.yml", "foo:\n  lease: 9\n  queue_name: qq\n  options: {a: 1}\n  lase: 2\n")
    cnf = Config.from_yaml(path)
    foo = FooSettings.of(cnf)
    assert (foo.lease, foo.queue, foo.options) == (9.0, "qq", {"a": 1})
    assert isinstance(foo.lease, float)
    assert "unknown key 'foo.lase' ignored (did you mean foo.lease?)" in caplog.text
    write(path, "foo:\n  queue: a\n  queue_name: b\n")
    with pytest.raises(
        ConfigError, match="foo.queue and foo.queue_name both set foo.queue to different values"
    ):
        Config.from_yaml(path)


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("lease", 0.0, "foo.lease (env MACHINERY_FOO_LEASE) must be > 0 seconds; got 0.0"),
        ("queue", "", "foo.queue (YAML foo.queue_name, env FOO_QUEUE) must not be empty"),
        ("retries", "3", "foo.retries (env FOO_RETRIES_ALIAS) must be an int"),
        ("retries", 99, "foo.retries (99) must not exceed foo.lease (30)"),
        ("api_token", 5, "foo.api_token (env MACHINERY_FOO_API_TOKEN) must be a string; got '***'"),
    ],
)
def test_plugin_section_validation(foo_plugin: None, name: str, value: Any, needle: str) -> None:
    cnf = Config()
    setattr(cnf.foo, name, value)
    with pytest.raises(ConfigError) as info:
        cnf.validate()
    assert needle in str(info.value)


def test_plugin_section_reload(foo_plugin: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert "foo.lease" in reloadable_fields() and "foo.queue" not in reloadable_fields()
    path = write(tmp_path / "c.yml", "foo: {lease: 10, queue: a}\n")
    cnf = Config.from_yaml(path)
    write(path, "foo: {lease: 20, queue: b, api_token: hunter2}\n")
    event = cnf.reload()
    assert event.applied == {"foo.lease": (10.0, 20.0)}
    assert event.restart_required == {"foo.queue": ("a", "b"), "foo.api_token": ("", "***")}
    assert (cnf.foo.lease, cnf.foo.queue, cnf.foo.api_token) == (20.0, "a", "")
    assert "field foo.queue changed" in caplog.text and "hunter2" not in caplog.text


def test_plugin_section_never_shows_secrets(foo_plugin: None) -> None:
    cnf = Config(foo=FooSettings(api_token="hunter2", client=object()))
    assert "hunter2" not in repr(cnf) and "hunter2" not in str(cnf.redacted())
    assert cnf.redacted()["foo"]["api_token"] == "***"
    assert cnf.redacted()["foo"]["client"] == "<builtins.object>"


def test_section_registered_after_the_config_was_made() -> None:
    cnf = Config()
    with pytest.raises(AttributeError, match="'foo'"):
        _ = cnf.foo
    manager = get_plugin_manager()
    plugin = FooPlugin()
    manager.register(plugin)
    try:
        assert FooSettings.of(cnf) == FooSettings()  # defaults, created on first use
    finally:
        manager.unregister(plugin)


# ------------------------------------------------------------------------------------ sections nobody owns


def test_unclaimed_yaml_sections_are_kept_and_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, uninstalled_scheme: str
) -> None:
    path = write(tmp_path / "c.yml", "broker: memory://\nbar: {x: 1}\nbaz: {y: hunter2, z: 3}\nmemcache:\n")
    with caplog.at_level(logging.WARNING, logger="machinery.config"):
        cnf = Config.from_yaml(path)
    assert cnf.broker == "memory://"
    assert cnf.unclaimed == {"bar": {"x": 1}, "baz": {"y": "hunter2", "z": 3}, "memcache": {}}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "'bar' (1 setting)" in warnings[0] and "'baz' (2 settings)" in warnings[0]
    assert "'memcache' (0 settings; pip install machinery-memcache)" in warnings[0]
    assert "hunter2" not in caplog.text
    assert cnf.snapshot().unclaimed == cnf.unclaimed


def test_unclaimed_env_sections_are_kept_and_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    env = {"MACHINERY_BAR_X": "1", "MACHINERY_BAR_Y": "2", "MACHINERY_APP": "tasks", "REDIS_URL": "x"}
    cnf = Config.from_env(env)
    assert cnf.unclaimed == {"bar": {"MACHINERY_BAR_X": "1", "MACHINERY_BAR_Y": "2"}}
    assert caplog.text.count("kept but unused") == 1 and "'bar' (2 settings)" in caplog.text


def test_moved_section_without_its_plugin_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, uninstalled_scheme: str
) -> None:
    with pytest.raises(AttributeError, match=r"machinery-memcache \(pip install machinery-memcache\)"):
        _ = Config().memcache
    monkeypatch.setitem(sys.modules, "machinery_redis.settings", None)  # "not installed"
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ImportError, match=r"RedisConfig .* machinery-redis .* pip install machinery-redis"),
    ):
        from machinery.config import RedisConfig  # noqa: F401


# ---------------------------------------------------------------------------------------- compatibility


def test_old_section_names_still_work_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="machinery_redis.settings.RedisSettings"):
        from machinery.config import RedisConfig
    with pytest.warns(DeprecationWarning, match="machinery_amqp.settings.AMQPSettings"):
        from machinery.config import AMQPConfig
    assert RedisConfig is RedisSettings and AMQPConfig is AMQPSettings
    cnf = Config(redis=RedisConfig(lease=60.0), amqp=AMQPConfig(exchange="ex"))
    assert (RedisSettings.of(cnf).lease, cnf.amqp.exchange) == (60.0, "ex")
    cnf.validate()


def test_bad_section_keywords() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'brokr'; did you mean 'broker'"):
        Config(brokr="memory://")  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"Config\(redis=...\) takes a machinery_redis.settings.RedisSettings"
    ):
        Config(redis=AMQPSettings())
    with pytest.raises(ConfigError, match="config.redis is a AMQPSettings, expected a RedisSettings"):
        cnf = Config()
        cnf.redis = AMQPSettings()
        RedisSettings.of(cnf)


def test_retry_window_is_a_redis_setting() -> None:
    assert Config.from_env({"MACHINERY_REDIS_RETRY_WINDOW": "3"}).redis.retry_window == 3.0
    with pytest.raises(ConfigError, match="redis.retry_window"):
        Config.from_env({"MACHINERY_REDIS_RETRY_WINDOW": "0"})


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("norepr", id="dataclass-repr"),
        pytest.param("tls", id="name-taken"),
        pytest.param("notdataclass", id="not-a-dataclass"),
    ],
)
def test_broken_plugin_sections_are_refused_clearly(bad: str) -> None:
    @dataclass  # repr=True would show secrets
    class Shows(Section):
        name = "shows"
        api_token: str = setting("")

    @dataclass(repr=False)
    class TakesTLS(Section):
        name = "tls"

    class Plain(Section):
        name = "plain"

    chosen: type = {"norepr": Shows, "tls": TakesTLS, "notdataclass": Plain}[bad]
    expected: type[Exception] = ConfigError if bad == "tls" else TypeError

    class Broken:
        @hookimpl
        def machinery_settings(self) -> list[type]:
            return [chosen]

    manager = get_plugin_manager()
    plugin = Broken()
    manager.register(plugin)
    try:
        with pytest.raises(expected, match="repr=False|named 'tls'"):
            Config()
    finally:
        manager.unregister(plugin)


# ------------------------------------------------------------------------------- one declaration per setting


def test_every_field_of_every_section_is_a_declared_setting(foo_plugin: None) -> None:
    """Adding a setting is one setting(...) line: the tables below come from it, nothing else to edit."""
    cnf = Config()
    table = config_module._table_of(cnf)
    for name, section in [("", cnf), *cnf.sections().items()]:
        declared = {spec.name: spec for spec in table.specs if spec.section == name}
        for f in fields(section):
            if name == "" and f.name in cnf.sections():
                continue
            if f.name == "client" or f.name.endswith("_client"):  # client objects: code only, never text
                assert f.name not in declared
                continue
            spec = declared.pop(f.name, None)
            assert spec is not None, f"{name}.{f.name} is a field but not declared with setting()"
            assert spec.env and spec.yaml
            assert all(table.yaml_keys[name][key] is spec for key in spec.yaml)
            assert all(env_name in table.env_names for env_name in spec.env)
            assert (spec.dotted in reloadable_fields()) is spec.reload
        assert not declared, f"declared but not fields: {declared}"


def test_config_signature_for_type_checkers_names_every_field() -> None:
    """Config's typed __init__ (for mypy) lists exactly its dataclass fields, then **sections."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Config)))
    stubs = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "__init__"]
    assert len(stubs) == 1
    args = stubs[0].args
    assert [a.arg for a in args.args[1:]] == [f.name for f in fields(Config)]
    assert args.kwarg is not None and args.kwarg.arg == "sections"


def test_listing_settings_does_not_import_brokers_or_clients() -> None:
    code = (
        "import sys\n"
        "from machinery.config import Config, registered_sections\n"
        "assert {'redis', 'amqp'} <= set(registered_sections())\n"
        "Config.from_env({'REDIS_MAX_IDLE': '5', 'AMQP_EXCHANGE': 'x'})\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(out.split())
    assert {"machinery_redis.settings", "machinery_amqp.settings"} <= loaded
    heavy = {"redis", "pika", "machinery_redis.broker", "machinery_amqp.broker", "machinery_amqp.connection"}
    assert not heavy & loaded, heavy & loaded

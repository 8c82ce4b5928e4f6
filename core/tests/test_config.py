"""Config: env and YAML loading (Machinery's names), validation, live reload and redaction."""

from __future__ import annotations

import copy
import logging
import math
import os
import pickle
import queue
import random
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from machinery import config as config_module
from machinery.backend import NEVER_HORIZON, BaseBackend
from machinery.config import (
    NEVER_EXPIRE,
    RELOADABLE_FIELDS,
    Config,
    ReloadEvent,
    TLSConfig,
)
from machinery.errors import ConfigError
from machinery.redact import redact_url
from machinery_amqp.settings import AMQPSettings as AMQPConfig  # moved to its plugin

DATA = Path(__file__).parent / "data" / "config"
WAIT = 10.0  # generous upper bound for the watcher; tests finish as soon as the event arrives


def read_env_file(path: Path) -> dict[str, str]:
    """Go's env_test: KEY=VALUE lines (comments and blank lines skipped)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


# ------------------------------------------------------------------------------------------------ env


def test_defaults_are_valid_and_empty_env_changes_nothing() -> None:
    Config().validate()
    assert Config.from_env({}) == Config()


def test_every_env_var_round_trips() -> None:
    cnf = Config.from_env(read_env_file(DATA / "test.env"))
    assert cnf.broker == "amqp://guest:guest@broker-host:5672/"
    assert cnf.default_queue == "default_queue"
    assert cnf.result_backend == "redis://:backend-pw@backend-host:6379/1"
    assert cnf.results_expire_in == 123456
    assert cnf.lock == "redis://lock-host:6379"
    assert cnf.multiple_broker_separator == ";"
    assert cnf.no_unix_signals is True
    assert cnf.eager is True
    assert cnf.timezone == "Europe/Berlin"
    assert cnf.amqp == AMQPConfig(
        exchange="exchange",
        exchange_type="exchange_type",
        queue_declare_args={"x-max-priority": 10},
        queue_binding_args={"image-type": "png", "x-match": "any"},
        binding_key="binding_key",
        prefetch_count=123,
        auto_delete=True,
        delayed_queue="delayed_queue",
        wait_for_confirms=True,
    )
    assert type(cnf.amqp.queue_declare_args["x-max-priority"]) is int
    assert (cnf.sqs.wait_time_seconds, cnf.sqs.visibility_timeout, cnf.sqs.visibility_heartbeat) == (
        12,
        456,
        False,
    )
    r = cnf.redis
    assert (r.max_idle, r.max_active, r.idle_timeout, r.wait) == (12, 123, 456, True)
    assert (r.read_timeout, r.write_timeout, r.connect_timeout) == (17, 19, 21)
    assert (r.normal_tasks_poll_period, r.delayed_tasks_poll_period) == (1001, 23)
    assert (r.delayed_tasks_key, r.client_name, r.master_name) == (
        "delayed_tasks_key",
        "client_name",
        "master_name",
    )
    assert r.cluster_mode is True
    assert r.sentinel_password == "sentinel-secret"
    assert (cnf.dynamodb.task_states_table, cnf.dynamodb.group_metas_table) == (
        "task_states_table",
        "group_metas_table",
    )
    assert (cnf.sqlite.lease, cnf.sqlite.renew) == (45.5, 5.0)
    w = cnf.worker
    assert (w.default_concurrency, w.shutdown_grace) == (3, 2.5)
    assert (w.unregistered_requeue_limit, w.unregistered_requeue_seconds) == (7, 9.5)
    assert w.store_intermediate_states is False
    assert w.poll_timeout == 0.25
    assert w.prefetch_multiplier == 3
    assert (r.lease, r.heartbeat, r.priority) == (20.5, 5.0, True)
    assert (r.delayed_tasks_mover, r.go_compatible_chords) == (False, False)
    assert r.retry_window == 4.5
    assert cnf.mongodb.database == "mongo_db"
    assert cnf.gcppubsub.max_extension == 120.0
    m = cnf.memcache
    assert (m.hashing, m.connect_timeout, m.timeout, m.max_item_size) == ("rendezvous", 4.5, 5.5, 2097152)
    assert (m.poll_min, m.poll_max, m.tls, m.tls_verify, m.go_lock_patience) == (0.01, 0.5, True, False, 20.0)
    assert (m.tls_ca, m.tls_cert, m.tls_key) == ("/etc/mc/ca.pem", "/etc/mc/client.pem", "/etc/mc/client.key")
    sqs = cnf.sqs
    assert (sqs.create_missing, sqs.dead_letter_queue, sqs.max_receive_count) == (False, "{queue}_dead", 4)
    assert (sqs.delay_hop_seconds, sqs.message_group_id) == (300, "group_id")
    assert sqs.stop_task_deletion_on_error is True
    assert (cnf.dynamodb.create_missing, cnf.dynamodb.max_poll_interval) == (False, 1.5)
    assert cnf.dynamodb.locks_table == "lk"
    assert cnf.tls == TLSConfig()  # loading env never turns TLS on (Go #517)


def test_test_env_covers_every_field_that_has_an_env_name() -> None:
    env = read_env_file(DATA / "test.env")
    defaults = Config()
    loaded = Config.from_env(env)
    untouched = [
        spec.dotted
        for spec in config_module._table_of(defaults).specs
        if config_module._get_value(loaded, spec.path) == config_module._get_value(defaults, spec.path)
    ]
    # The TLS files need real files (tested below); insecure_skip_verify is set to its default on purpose.
    assert sorted(untouched) == ["tls.ca_file", "tls.cert_file", "tls.insecure_skip_verify", "tls.key_file"]


@pytest.mark.parametrize(
    ("name", "raw", "path", "expected"),
    [
        ("AMQP_AMQP_EXCHANGE", "x", ("amqp", "exchange"), "x"),
        ("REDIS_REDIS_MAX_IDLE", "5", ("redis", "max_idle"), 5),
        ("SQS_SQS_WAIT_TIME_SECONDS", "3", ("sqs", "wait_time_seconds"), 3),
        ("DYNAMODB_TASK_STATES_TABLE", "ts", ("dynamodb", "task_states_table"), "ts"),
        ("DYNAMODB_GROUP_METAS_TABLE", "gm", ("dynamodb", "group_metas_table"), "gm"),
        ("MULTIPLE_BROKEN_SEPARATOR", ",", ("multiple_broker_separator",), ","),
        ("REDIS_CLUSTER_ENABLED", "true", ("redis", "cluster_mode"), True),
        ("REDIS_REDIS_CLUSTER_ENABLED", "1", ("redis", "cluster_mode"), True),
        ("TLS_INSECURE_SKIP_VERIFY", "yes", ("tls", "insecure_skip_verify"), True),
        ("SQS_VISIBILITY_TIMEOUT", "", ("sqs", "visibility_timeout"), None),
        ("AMQP_QUEUE_DECLARE_ARGS", '{"x-max-priority": 9, "x-queue-mode": "lazy"}',
         ("amqp", "queue_declare_args"), {"x-max-priority": 9, "x-queue-mode": "lazy"}),
        ("AMQP_QUEUE_DECLARE_ARGS", "x-message-ttl:1.5, x-single-active-consumer:true, x-dlx:x",
         ("amqp", "queue_declare_args"),
         {"x-message-ttl": 1.5, "x-single-active-consumer": True, "x-dlx": "x"}),
        ("AMQP_QUEUE_BINDING_ARGS", "n:1,url:http://x", ("amqp", "queue_binding_args"), {"n": "1", "url": "http://x"}),
        ("AMQP_QUEUE_BINDING_ARGS", "", ("amqp", "queue_binding_args"), {}),
    ],
)  # fmt: skip
def test_env_alternative_names_and_forms(name: str, raw: str, path: tuple[str, ...], expected: Any) -> None:
    cnf = Config.from_env({name: raw})
    assert config_module._get_value(cnf, path) == expected


def test_prefixed_env_name_wins_like_envconfig(caplog: pytest.LogCaptureFixture) -> None:
    cnf = Config.from_env({"AMQP_AMQP_EXCHANGE": "prefixed", "AMQP_EXCHANGE": "plain"})
    assert cnf.amqp.exchange == "prefixed"
    assert "AMQP_AMQP_EXCHANGE and AMQP_EXCHANGE are both set" in caplog.text


def test_correct_separator_spelling_wins_over_go_typo() -> None:
    cnf = Config.from_env({"MULTIPLE_BROKER_SEPARATOR": "|", "MULTIPLE_BROKEN_SEPARATOR": ","})
    assert cnf.multiple_broker_separator == "|"


def test_same_meaning_under_two_names_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    cnf = Config.from_env({"REDIS_CLUSTER_MODE": "true", "REDIS_CLUSTER_ENABLED": "1"})
    assert cnf.redis.cluster_mode is True
    assert "both set" not in caplog.text


@pytest.mark.parametrize("raw", ["true", "TRUE", "True", "1", "yes", "YES", "on", "t", " y "])
def test_env_true_values(raw: str) -> None:
    assert Config.from_env({"NO_UNIX_SIGNALS": raw}).no_unix_signals is True


@pytest.mark.parametrize("raw", ["false", "FALSE", "0", "no", "No", "off", "f", "n"])
def test_env_false_values(raw: str) -> None:
    assert Config.from_env({"REDIS_WAIT": "1", "AMQP_AUTO_DELETE": raw}).amqp.auto_delete is False


def test_empty_number_or_bool_means_not_set() -> None:
    cnf = Config.from_env({"RESULTS_EXPIRE_IN": "", "NO_UNIX_SIGNALS": " ", "DEFAULT_QUEUE": "q"})
    assert (cnf.results_expire_in, cnf.no_unix_signals, cnf.default_queue) == (3600, False, "q")


@pytest.mark.parametrize(
    ("name", "raw", "form"),
    [
        ("NO_UNIX_SIGNALS", "maybe", "true/false, 1/0 or yes/no"),
        ("RESULTS_EXPIRE_IN", "1h", "a whole number"),
        ("AMQP_PREFETCH_COUNT", "2.5", "a whole number"),
        ("MACHINERY_SQLITE_LEASE", "abc", "a number"),
        ("SQS_VISIBILITY_TIMEOUT", "none", "a whole number, or empty"),
        ("AMQP_QUEUE_BINDING_ARGS", "x-match=any", "k:v,k:v"),
        ("AMQP_QUEUE_DECLARE_ARGS", "{not json", "JSON"),
        ("AMQP_QUEUE_DECLARE_ARGS", "[1, 2]", "k:v,k:v"),
    ],
)
def test_bad_env_value_names_variable_and_form(name: str, raw: str, form: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({name: raw})
    assert name in str(info.value)
    assert form in str(info.value)


def test_tls_files_from_env_do_not_change_schemes(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cnf = Config.from_env(
        {"BROKER": "redis://h:6379/0", "TLS_CA_FILE": str(ca), "MACHINERY_TLS_CERT_FILE": str(ca)}
    )
    assert cnf.tls.ca_file == str(ca) and cnf.tls.cert_file == str(ca)
    assert cnf.tls.configured
    assert cnf.broker == "redis://h:6379/0"
    other = Config.from_env(
        {"MACHINERY_TLS_CA_FILE": str(ca), "TLS_CA_FILE": "/elsewhere", "TLS_KEY_FILE": ""}
    )
    assert other.tls.ca_file == str(ca)


def test_tls_ssl_context() -> None:
    assert not TLSConfig().configured
    ctx = TLSConfig(insecure_skip_verify=True).ssl_context()
    assert ctx.check_hostname is False
    with pytest.raises(ConfigError, match=r"tls\.ca_file"):
        TLSConfig(ca_file="/nonexistent/ca.pem").ssl_context()


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFAULT_QUEUE", "from_os_environ")
    assert Config.from_env().default_queue == "from_os_environ"


# ------------------------------------------------------------------------------------------------ validate


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"results_expire_in": -2}, "RESULTS_EXPIRE_IN"),
        ({"default_queue": ""}, "default_queue"),
        ({"broker": ""}, "must be set to a broker URL"),
        ({"broker": "amqp://a;;amqp://b", "multiple_broker_separator": ";"}, "empty URL"),
        ({"results_expire_in": "3600"}, "must be an int"),
        ({"no_unix_signals": 1}, "must be a bool"),
    ],
)
def test_validate_top_level(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Config(**change).validate()


@pytest.mark.parametrize(
    ("section", "name", "value", "needle"),
    [
        ("worker", "default_concurrency", 0, ">= 1"),
        ("worker", "shutdown_grace", -1.0, ">= 0"),
        ("worker", "unregistered_requeue_limit", -1, "MACHINERY_WORKER_UNREGISTERED_REQUEUE_LIMIT"),
        ("sqs", "wait_time_seconds", 21, "between 0 and 20"),
        ("sqs", "visibility_timeout", -5, "43200"),
        ("amqp", "prefetch_count", -1, "follow the worker"),
        ("redis", "max_idle", -1, "REDIS_MAX_IDLE"),
        ("redis", "idle_timeout", -1, "YAML redis.max_idle_timeout"),
        ("redis", "delayed_tasks_key", "", "must not be empty"),
        ("sqlite", "lease", 0.0, "> 0"),
        ("sqlite", "renew", 60.0, "shorter than sqlite.lease"),
        ("tls", "ca_file", "/nonexistent/ca.pem", "does not exist"),
        ("tls", "key_file", __file__, "without tls.cert_file"),
        ("gcppubsub", "max_extension", float("nan"), "finite"),
        ("amqp", "queue_declare_args", {1: 2}, "str keys"),
    ],
)
def test_validate_sections(section: str, name: str, value: Any, needle: str) -> None:
    cnf = Config()
    setattr(getattr(cnf, section), name, value)
    with pytest.raises(ConfigError, match=needle):
        cnf.validate()


def test_validate_lists_every_problem() -> None:
    cnf = Config(results_expire_in=-2, default_queue="")
    cnf.worker.default_concurrency = 0
    with pytest.raises(ConfigError) as info:
        cnf.validate()
    text = str(info.value)
    assert text.count("\n  - ") == 3
    assert "results_expire_in" in text and "default_queue" in text and "worker.default_concurrency" in text


def test_results_expire_in_minus_one_means_never_and_zero_the_default() -> None:
    """-1 (NEVER_EXPIRE) is valid and means no expiry at all; 0 means 3600 s, as in Go; -2 is refused
    with a message that names both."""
    never = Config.from_env({"RESULTS_EXPIRE_IN": "-1"})
    assert never.results_expire_in == NEVER_EXPIRE == -1
    backend = BaseBackend(never)
    assert backend.never_expires
    assert backend.expires_at(100.0) == math.inf
    assert backend.expires_in == NEVER_HORIZON  # only for marks that need a finite lifetime
    default = BaseBackend(Config(results_expire_in=0))
    assert not default.never_expires
    assert (default.expires_in, default.expires_at(100.0)) == (3600, 3700.0)
    assert BaseBackend(Config(results_expire_in=5)).expires_at(100.0) == 105.0
    with pytest.raises(ConfigError, match=r"-1 means never expire") as info:
        Config.from_env({"RESULTS_EXPIRE_IN": "-2"})
    assert "0 means the default, 3600" in str(info.value)


def test_eager_needs_no_broker() -> None:
    Config(broker="", eager=True).validate()


def test_from_env_validates() -> None:
    with pytest.raises(ConfigError, match="RESULTS_EXPIRE_IN"):
        Config.from_env({"RESULTS_EXPIRE_IN": "-10"})


# ------------------------------------------------------------------------------------------------ YAML


def test_go_testconfig_yml_round_trips() -> None:
    cnf = Config.from_yaml(DATA / "testconfig.yml")
    assert (cnf.broker, cnf.default_queue, cnf.result_backend) == (
        "broker",
        "default_queue",
        "result_backend",
    )
    assert cnf.results_expire_in == 123456
    assert cnf.amqp.queue_declare_args == {"x-max-priority": 10}
    assert type(cnf.amqp.queue_declare_args["x-max-priority"]) is int
    assert cnf.amqp.queue_binding_args == {"image-type": "png", "x-match": "any"}
    assert (cnf.amqp.binding_key, cnf.amqp.exchange, cnf.amqp.exchange_type, cnf.amqp.prefetch_count) == (
        "binding_key",
        "exchange",
        "exchange_type",
        123,
    )
    assert (cnf.sqs.wait_time_seconds, cnf.sqs.visibility_timeout, cnf.sqs.visibility_heartbeat) == (
        12,
        456,
        False,
    )
    r = cnf.redis
    assert (r.max_idle, r.max_active, r.idle_timeout, r.wait) == (12, 123, 456, False)
    assert (r.read_timeout, r.write_timeout, r.connect_timeout) == (17, 19, 21)
    assert (r.normal_tasks_poll_period, r.delayed_tasks_poll_period, r.delayed_tasks_key) == (
        1001,
        23,
        "delayed_tasks_key",
    )
    assert (r.master_name, r.cluster_mode, r.sentinel_password) == ("master_name", True, "sentinel-secret")
    assert cnf.no_unix_signals is True
    assert (cnf.dynamodb.task_states_table, cnf.dynamodb.group_metas_table) == (
        "task_states_table",
        "group_metas_table",
    )
    assert cnf.source == str((DATA / "testconfig.yml").resolve())
    assert not cnf.reloading


FULL_YAML = """\
# every key, with the sane spellings, all values different from the defaults
broker: 'amqp://guest:guest@rabbit:5672/;amqp://guest:guest@rabbit2:5672/'
multiple_broker_separator: ';'
default_queue: q
result_backend: redis://:pw@redis:6379/1
results_expire_in: 60
dead_letter_expire_in: 120
lock: redis://redis:6379/2
eager: true
no_unix_signals: true
timezone: Asia/Tokyo
signing_keys: [yaml-signing-key-0123456789]
signing_max_age: 90
amqp:
  exchange: ex
  exchange_type: topic
  queue_declare_args: {x-max-priority: 10, x-queue-mode: lazy}
  queue_binding_args: {x-match: any}
  binding_key: bk
  prefetch_count: 1
  auto_delete: true
  delayed_queue: dq
  wait_for_confirms: true
sqs:
  wait_time_seconds: 5
  visibility_timeout: 120
  visibility_heartbeat: false
  create_missing: false
  dead_letter_queue: "{queue}.dead"
  max_receive_count: 3
  delay_hop_seconds: 600
  message_group_id: g
  stop_task_deletion_on_error: true
redis:
  max_idle: 1
  max_active: 2
  idle_timeout: 3
  wait: true
  read_timeout: 4
  write_timeout: 5
  connect_timeout: 6
  normal_tasks_poll_period: 7
  delayed_tasks_poll_period: 8
  delayed_tasks_key: dk
  client_name: cn
  master_name: mn
  cluster_mode: true
  sentinel_password: sp
  lease: 12
  heartbeat: 3
  priority: true
  delayed_tasks_mover: false
  go_compatible_chords: false
  retry_window: 7.5
dynamodb:
  task_states_table: ts
  group_metas_table: gm
  locks_table: lk
  create_missing: false
  max_poll_interval: 2
tls:
  ca_file: {ca}
  cert_file: {ca}
  key_file: {ca}
  insecure_skip_verify: true
sqlite:
  lease: 12.5
  renew: 2
worker:
  default_concurrency: 2
  shutdown_grace: 1.5
  unregistered_requeue_limit: 3
  unregistered_requeue_seconds: 4.5
  store_intermediate_states: false
  poll_timeout: 0.5
  prefetch_multiplier: 2
  max_deliveries: 3
  retry_later_limit: 50
  heartbeat_interval: 2.5
events:
  enabled: false
  record_args: true
  max_events: 500
mongodb:
  database: mdb
gcppubsub:
  max_extension: 30
  ack_deadline: 20
  hold_window: 120
  create_missing: false
  max_delivery_attempts: 10
  message_ordering: true
  subscription_name: w-{queue}
  dead_letter_topic: dl-{queue}
memcache:
  hashing: rendezvous
  connect_timeout: 2
  timeout: 4
  max_item_size: 4194304
  poll_min: 0.004
  poll_max: 1
  tls: true
  tls_verify: false
  tls_ca: /mc/ca.pem
  tls_cert: /mc/c.pem
  tls_key: /mc/k.pem
  go_lock_patience: 5
example:
  lease: 12.5
  renew: 2.5
"""


def test_yaml_round_trip_of_every_key_in_a_file_over_1000_bytes(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    text = FULL_YAML.replace("{ca}", str(ca))
    # Go read at most 1000 bytes: pad the front so most keys sit beyond byte 1000.
    text = (
        "".join(f"# padding line {i:04d} ......................................\n" for i in range(40)) + text
    )
    path = tmp_path / "machinery.yml"
    path.write_text(text)
    assert len(text.encode()) > 3000
    cnf = Config.from_yaml(path)
    expected = Config(
        broker="amqp://guest:guest@rabbit:5672/;amqp://guest:guest@rabbit2:5672/",
        multiple_broker_separator=";",
        default_queue="q",
        result_backend="redis://:pw@redis:6379/1",
        results_expire_in=60,
        lock="redis://redis:6379/2",
        eager=True,
        no_unix_signals=True,
        timezone="Asia/Tokyo",
        signing_keys=["yaml-signing-key-0123456789"],
        signing_max_age=90,
    )
    declare = {"x-max-priority": 10, "x-queue-mode": "lazy"}
    expected.amqp = AMQPConfig("ex", "topic", declare, {"x-match": "any"}, "bk", 1, True, "dq", True)
    expected.sqs.wait_time_seconds, expected.sqs.visibility_timeout, expected.sqs.visibility_heartbeat = (
        5,
        120,
        False,
    )
    for i, name in enumerate(["max_idle", "max_active", "idle_timeout"], start=1):  # 1, 2, 3 as in the file
        setattr(expected.redis, name, i)
    r = expected.redis
    r.wait, r.read_timeout, r.write_timeout, r.connect_timeout = True, 4, 5, 6
    r.normal_tasks_poll_period, r.delayed_tasks_poll_period, r.delayed_tasks_key = 7, 8, "dk"
    r.client_name, r.master_name, r.cluster_mode, r.sentinel_password = "cn", "mn", True, "sp"
    r.lease, r.heartbeat, r.priority, r.delayed_tasks_mover, r.go_compatible_chords = (
        12.0,
        3.0,
        True,
        False,
        False,
    )
    r.retry_window = 7.5
    expected.dynamodb.task_states_table, expected.dynamodb.group_metas_table = "ts", "gm"
    expected.sqs.create_missing, expected.sqs.dead_letter_queue, expected.sqs.max_receive_count = (
        False,
        "{queue}.dead",
        3,
    )
    expected.sqs.delay_hop_seconds, expected.sqs.message_group_id = 600, "g"
    expected.sqs.stop_task_deletion_on_error = True
    expected.dynamodb.create_missing, expected.dynamodb.max_poll_interval = False, 2.0
    expected.dynamodb.locks_table = "lk"
    expected.tls = TLSConfig(str(ca), str(ca), str(ca), True)
    expected.sqlite.lease, expected.sqlite.renew = 12.5, 2.0
    w = expected.worker
    w.default_concurrency, w.shutdown_grace, w.unregistered_requeue_limit = 2, 1.5, 3
    w.unregistered_requeue_seconds, w.store_intermediate_states = 4.5, False
    w.poll_timeout = 0.5
    w.prefetch_multiplier = 2
    w.max_deliveries = 3
    w.retry_later_limit = 50
    w.heartbeat_interval = 2.5
    expected.events.enabled, expected.events.record_args, expected.events.max_events = False, True, 500
    expected.dead_letter_expire_in = 120
    expected.mongodb.database = "mdb"
    expected.example.lease, expected.example.renew = 12.5, 2.5  # the plugin template (examples/plugin)
    g = expected.gcppubsub
    g.max_extension, g.ack_deadline, g.hold_window, g.create_missing = 30.0, 20, 120.0, False
    g.max_delivery_attempts, g.message_ordering = 10, True
    g.subscription_name, g.dead_letter_topic = "w-{queue}", "dl-{queue}"
    m = expected.memcache
    m.hashing, m.connect_timeout, m.timeout, m.max_item_size = "rendezvous", 2.0, 4.0, 4194304
    m.poll_min, m.poll_max, m.tls, m.tls_verify, m.go_lock_patience = 0.004, 1.0, True, False, 5.0
    m.tls_ca, m.tls_cert, m.tls_key = "/mc/ca.pem", "/mc/c.pem", "/mc/k.pem"
    assert cnf == expected
    assert isinstance(cnf.sqlite.renew, float) and isinstance(cnf.gcppubsub.max_extension, float)


def test_every_yaml_key_is_exercised_by_the_fixtures() -> None:
    yaml = pytest.importorskip("yaml")
    seen: set[tuple[str, str]] = set()
    for doc in (
        yaml.safe_load(FULL_YAML.replace("{ca}", "x")),
        yaml.safe_load((DATA / "testconfig.yml").read_text()),
    ):
        for key, value in doc.items():
            if isinstance(value, dict) and key in Config().sections():
                seen.update((key, sub) for sub in value)
            else:
                seen.add(("", key))
    table = config_module._table_of(Config())
    known = {(section, key) for section, keys in table.yaml_keys.items() for key in keys}
    missing = known - seen
    # The Go-only spellings not in testconfig.yml are covered by test_yaml_go_spellings.
    assert missing <= {("sqs", "visibility_hearth_beat"), ("redis", "cluster_mode"), ("redis", "client_name")}


def write(path: Path, text: str) -> None:
    """Replace a file atomically, as editors and config-management tools do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_yaml_go_spellings(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    write(path, "sqs: {visibility_hearth_beat: false}\nredis: {cluster_mode: true, client_name: 2024}\n")
    cnf = Config.from_yaml(path)
    assert cnf.sqs.visibility_heartbeat is False
    assert cnf.redis.cluster_mode is True
    assert cnf.redis.client_name == "2024"


def test_yaml_without_amqp_section_keeps_amqp_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    write(path, "broker: redis://localhost:6379\namqp:\nredis:\n  max_idle: 9\n")
    cnf = Config.from_yaml(path)
    assert cnf.amqp == AMQPConfig()
    assert cnf.redis.max_idle == 9
    assert cnf.redis.idle_timeout == 240  # the rest of a partly given section keeps its defaults


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    write(path, "# nothing\n")
    assert Config.from_yaml(path) == Config()


def test_unknown_yaml_keys_warn_and_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.yml"
    write(path, "brokr: redis://x\nredis:\n  max_idel: 5\nfancy_section: {a: 1}\n")
    with caplog.at_level(logging.WARNING, logger="machinery.config"):
        cnf = Config.from_yaml(path)
    assert cnf == Config()
    assert "unknown key 'brokr' ignored (did you mean broker?)" in caplog.text
    assert "unknown key 'redis.max_idel' ignored (did you mean redis.max_idle?)" in caplog.text
    assert "'fancy_section'" in caplog.text


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("results_expire_in: soon\n", "results_expire_in must be a whole number"),
        ("redis:\n  max_idle: 1.5\n", "redis.max_idle must be a whole number"),
        ("redis:\n  wait: maybe\n", "redis.wait must be true or false"),
        (
            "sqs:\n  receive_visibility_timeout: [1]\n",
            "sqs.receive_visibility_timeout must be a whole number or null",
        ),
        ("sqlite:\n  lease: true\n", "sqlite.lease must be a number"),
        ("amqp:\n  queue_declare_args: [x-max-priority]\n", "amqp.queue_declare_args must be a mapping"),
        ("broker: [a, b]\n", "broker must be a string"),
        ("redis: 5\n", "'redis' must be a mapping"),
        ("- a\n- b\n", "expected a mapping of settings at the top level"),
        ("redis:\n  idle_timeout: 1\n  max_idle_timeout: 2\n", "both set redis.idle_timeout"),
        ("results_expire_in: -5\n", "results_expire_in"),
    ],
)
def test_bad_yaml_values_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.yml"
    write(path, text)
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_same_value_under_both_spellings_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    write(path, "redis:\n  idle_timeout: 7\n  max_idle_timeout: 7\n")
    assert Config.from_yaml(path).redis.idle_timeout == 7


def test_invalid_yaml_error_does_not_echo_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    write(path, 'broker: "redis://:hunter2@host\nqueue: x\n')
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(path)
    assert "invalid YAML" in str(info.value) and "line" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_wrong_type_error_does_not_echo_secrets(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    write(path, "redis:\n  sentinel_password: [hunter2]\n")
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(path)
    assert "hunter2" not in str(info.value)


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Config.from_yaml(tmp_path / "nope.yml")


def test_missing_pyyaml_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yml"
    write(path, "broker: x://y\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes "import yaml" raise ImportError
    with pytest.raises(ConfigError, match=r"pip install 'machinery-core\[yaml\]'"):
        Config.from_yaml(path)


# ------------------------------------------------------------------------------------------------ reload


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    path = tmp_path / "machinery.yml"
    write(
        path,
        "broker: redis://:pw@old-host:6379/0\nresults_expire_in: 100\nworker:\n  default_concurrency: 4\n",
    )
    return path


@pytest.fixture
def watched(yaml_file: Path) -> Iterator[tuple[Config, queue.Queue[ReloadEvent]]]:
    events: queue.Queue[ReloadEvent] = queue.Queue()
    cnf = Config.from_yaml(yaml_file, reload=True, reload_interval=0.05)
    cnf.on_reload(events.put)
    yield cnf, events
    cnf.stop_reloading()


def next_event(events: queue.Queue[ReloadEvent]) -> ReloadEvent:
    try:
        return events.get(timeout=WAIT)
    except queue.Empty:
        pytest.fail(f"no reload event within {WAIT}s")


def test_reload_applies_safe_field_and_keeps_unsafe_one(
    yaml_file: Path, watched: tuple[Config, queue.Queue[ReloadEvent]], caplog: pytest.LogCaptureFixture
) -> None:
    cnf, events = watched
    assert cnf.reloading
    caplog.set_level(logging.INFO, logger="machinery.config")
    write(
        yaml_file,
        "broker: redis://:newpw@new-host:6379/0\nresults_expire_in: 200\n"
        "worker:\n  default_concurrency: 4\n  shutdown_grace: 2\nredis:\n  normal_tasks_poll_period: 50\n",
    )
    event = next_event(events)
    assert event.error is None and event.changed
    assert dict(event.applied) == {
        "results_expire_in": (100, 200),
        "worker.shutdown_grace": (30.0, 2.0),
        "redis.normal_tasks_poll_period": (1000, 50),
    }
    assert (cnf.results_expire_in, cnf.worker.shutdown_grace, cnf.redis.normal_tasks_poll_period) == (
        200,
        2.0,
        50,
    )
    # broker needs a restart: warned about, not applied, and the warning shows no password
    assert cnf.broker == "redis://:pw@old-host:6379/0"
    assert dict(event.restart_required) == {"broker": ("redis://old-host:6379/0", "redis://new-host:6379/0")}
    assert f"field broker changed in {yaml_file}; restart to apply" in caplog.text
    assert "newpw" not in caplog.text and ":pw@" not in caplog.text
    assert "newpw" not in repr(event)


def test_unsafe_warning_is_not_repeated_for_unrelated_edits(
    yaml_file: Path, watched: tuple[Config, queue.Queue[ReloadEvent]], caplog: pytest.LogCaptureFixture
) -> None:
    cnf, events = watched
    write(yaml_file, "broker: redis://new:6379/0\nresults_expire_in: 100\n")
    assert "broker" in next_event(events).restart_required
    caplog.clear()
    write(yaml_file, "broker: redis://new:6379/0\nresults_expire_in: 300\n")
    event = next_event(events)
    assert dict(event.restart_required) == {}
    assert "restart to apply" not in caplog.text
    assert cnf.results_expire_in == 300
    assert cnf.worker.default_concurrency == 8  # removed from the file: back to the default (a safe field)


def test_broken_yaml_on_reload_keeps_old_values(
    yaml_file: Path, watched: tuple[Config, queue.Queue[ReloadEvent]], caplog: pytest.LogCaptureFixture
) -> None:
    cnf, events = watched
    before = cnf.snapshot()
    write(yaml_file, "results_expire_in: [unclosed\n")
    event = next_event(events)
    assert event.error and "invalid YAML" in event.error and not event.changed
    assert cnf == before
    assert "Could not reload" in caplog.text and "keeping the running configuration" in caplog.text
    # an invalid value is refused the same way
    write(yaml_file, "results_expire_in: -2\n")
    assert "results_expire_in" in (next_event(events).error or "")
    write(yaml_file, "")
    assert "empty" in (next_event(events).error or "")
    assert cnf == before
    # and a good file afterwards is applied again
    write(yaml_file, "broker: redis://:pw@old-host:6379/0\nresults_expire_in: 5\n")
    assert next_event(events).applied["results_expire_in"] == (100, 5)


def test_unknown_keys_on_reload_warn_but_apply_the_rest(
    yaml_file: Path, watched: tuple[Config, queue.Queue[ReloadEvent]], caplog: pytest.LogCaptureFixture
) -> None:
    cnf, events = watched
    write(yaml_file, "broker: redis://:pw@old-host:6379/0\nresults_expire_in: 7\nbogus: 1\n")
    assert next_event(events).changed
    assert cnf.results_expire_in == 7
    assert "unknown key 'bogus'" in caplog.text


def test_value_set_in_code_survives_reload_of_other_fields(
    yaml_file: Path, watched: tuple[Config, queue.Queue[ReloadEvent]]
) -> None:
    cnf, events = watched
    cnf.sqs.wait_time_seconds = 3
    write(yaml_file, "broker: redis://:pw@old-host:6379/0\nresults_expire_in: 8\n")
    next_event(events)
    assert cnf.sqs.wait_time_seconds == 3


def test_readers_see_old_or_new_values_during_reloads(
    yaml_file: Path, watched: tuple[Config, queue.Queue[ReloadEvent]]
) -> None:
    cnf, events = watched
    seen: set[tuple[int, int]] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            snap = cnf.snapshot()
            seen.add((snap.results_expire_in, snap.worker.default_concurrency))
            assert cnf.results_expire_in in (100, 200)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        write(
            yaml_file,
            "broker: redis://:pw@old-host:6379/0\nresults_expire_in: 200\nworker: {default_concurrency: 6}\n",
        )
        next_event(events)
    finally:
        stop.set()
        thread.join()
    assert seen <= {(100, 4), (200, 6)}  # the snapshot never mixes old and new
    assert (cnf.results_expire_in, cnf.worker.default_concurrency) == (200, 6)


def test_failing_listener_does_not_stop_the_watcher(
    yaml_file: Path, watched: tuple[Config, queue.Queue[ReloadEvent]], caplog: pytest.LogCaptureFixture
) -> None:
    cnf, events = watched

    def boom(event: ReloadEvent) -> None:
        raise RuntimeError("listener bug")

    unsubscribe = cnf.on_reload(boom)
    after_boom = threading.Event()  # listeners run in order: this one runs once boom has raised
    cnf.on_reload(lambda event: after_boom.set())
    write(yaml_file, "broker: redis://:pw@old-host:6379/0\nresults_expire_in: 9\n")
    next_event(events)
    assert after_boom.wait(WAIT)
    assert "listener bug" in caplog.text
    unsubscribe()
    unsubscribe()  # idempotent
    caplog.clear()
    write(yaml_file, "broker: redis://:pw@old-host:6379/0\nresults_expire_in: 10\n")
    next_event(events)
    assert cnf.results_expire_in == 10
    assert "listener bug" not in caplog.text


def test_listeners_run_outside_the_lock(
    yaml_file: Path, watched: tuple[Config, queue.Queue[ReloadEvent]]
) -> None:
    cnf, events = watched
    results: list[int] = []

    def read_from_another_thread(event: ReloadEvent) -> None:
        thread = threading.Thread(target=lambda: results.append(cnf.snapshot().results_expire_in))
        thread.start()
        thread.join(WAIT)  # would time out if listeners were called with the config lock held
        assert not thread.is_alive()

    cnf.on_reload(read_from_another_thread)
    write(yaml_file, "broker: redis://:pw@old-host:6379/0\nresults_expire_in: 13\n")
    next_event(events)
    write(yaml_file, "results_expire_in: [broken\n")
    assert next_event(events).error
    # the listener runs after events.put; a further event proves it has finished for both reloads
    write(yaml_file, "broker: redis://:pw@old-host:6379/0\nresults_expire_in: 14\n")
    next_event(events)
    write(yaml_file, "broker: redis://:pw@old-host:6379/0\nresults_expire_in: 15\n")
    next_event(events)
    assert results[:3] == [13, 13, 14]


def test_deleted_file_is_reported_and_config_kept(
    yaml_file: Path, watched: tuple[Config, queue.Queue[ReloadEvent]], caplog: pytest.LogCaptureFixture
) -> None:
    cnf, events = watched
    got_warning = threading.Event()

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "not found" in record.getMessage():
                got_warning.set()

    spy = Spy()
    logging.getLogger("machinery.config").addHandler(spy)
    try:
        yaml_file.unlink()
        assert got_warning.wait(WAIT)
    finally:
        logging.getLogger("machinery.config").removeHandler(spy)
    assert cnf.results_expire_in == 100 and cnf.reloading
    write(yaml_file, "broker: redis://:pw@old-host:6379/0\nresults_expire_in: 11\n")
    assert next_event(events).applied["results_expire_in"] == (100, 11)


def running(cnf: Config) -> bool:
    return cnf.reloading  # a call, so mypy does not narrow the property across statements


def test_stop_reloading(yaml_file: Path) -> None:
    with Config.from_yaml(yaml_file, reload=True, reload_interval=0.05) as cnf:
        assert running(cnf)
        thread = cnf._reloader
    assert not running(cnf)
    assert thread is not None and not thread.is_alive()
    cnf.stop_reloading()  # idempotent
    cnf.start_reloading(0.05)
    assert running(cnf)
    cnf.stop_reloading()
    assert not running(cnf)


def test_manual_reload_without_watcher(yaml_file: Path) -> None:
    cnf = Config.from_yaml(yaml_file)
    assert not cnf.reloading
    write(yaml_file, "broker: redis://:pw@old-host:6379/0\nresults_expire_in: 12\nlock: redis://l:6379\n")
    event = cnf.reload()
    # default_concurrency left the file, so it goes back to its default
    assert event.applied == {"results_expire_in": (100, 12), "worker.default_concurrency": (4, 8)}
    assert event.restart_required == {"lock": ("", "redis://l:6379")}
    assert (cnf.results_expire_in, cnf.lock) == (12, "")
    assert cnf.reload() == ReloadEvent(path=str(yaml_file))  # nothing changed
    yaml_file.unlink()
    assert "not found" in (cnf.reload().error or "")


def test_reload_needs_a_yaml_source() -> None:
    with pytest.raises(ConfigError, match="from_yaml"):
        Config().reload()
    with pytest.raises(ConfigError, match="from_yaml"):
        Config().start_reloading()
    Config().stop_reloading()  # harmless


def test_bad_reload_interval(yaml_file: Path) -> None:
    with pytest.raises(ConfigError, match="reload_interval"):
        Config.from_yaml(yaml_file, reload=True, reload_interval=0)


def test_reloadable_field_list() -> None:
    assert "results_expire_in" in RELOADABLE_FIELDS
    assert {"redis.normal_tasks_poll_period", "redis.delayed_tasks_poll_period", "sqs.wait_time_seconds"} <= (
        RELOADABLE_FIELDS
    )
    assert {f"worker.{name}" for name in vars(Config().worker)} <= RELOADABLE_FIELDS
    for restart_only in ("broker", "result_backend", "lock", "default_queue", "amqp.prefetch_count",
                         "redis.delayed_tasks_key", "redis.sentinel_password", "tls.ca_file"):  # fmt: skip
        assert restart_only not in RELOADABLE_FIELDS


# ------------------------------------------------------------------------------------------------ copies


def test_copies_share_clients_and_drop_the_watcher(yaml_file: Path) -> None:
    client = object()
    with Config.from_yaml(yaml_file, reload=True, reload_interval=0.05) as cnf:
        cnf.redis.client = client
        cnf.amqp.queue_declare_args["x-max-priority"] = 5
        for other in (copy.copy(cnf), copy.deepcopy(cnf), cnf.snapshot()):
            assert other == cnf and other is not cnf
            assert other.redis.client is client
            assert other.amqp.queue_declare_args is not cnf.amqp.queue_declare_args
            assert other.source is None and not other.reloading
    plain = Config(broker="redis://:pw@h/0")
    restored = pickle.loads(pickle.dumps(plain))
    assert restored == plain and restored.source is None


# ------------------------------------------------------------------------------------------------ redaction


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@localhost:5672", "amqp://localhost:5672"),  # Go's RedactURL test
        ("amqp://guest:guest@localhost:5672/vhost", "amqp://localhost:5672/vhost"),
        ("redis://:pw@h1:1,h2:2/0", "redis://h1:1,h2:2/0"),
        ("redis://pw@localhost:6379", "redis://localhost:6379"),
        ("redis+socket://pw@/tmp/x.sock", "redis+socket:///tmp/x.sock"),
        ("redis+socket://pw@/path/to/file.sock:/0", "redis+socket:///path/to/file.sock:/0"),
        ("redis://h:6379/0?password=x", "redis://h:6379/0"),
        ("redis://h:6379/0?db=1&password=x&ssl_cert_reqs=none", "redis://h:6379/0?db=1&ssl_cert_reqs=none"),
        ("redis://:pw@[::1]:6379/0", "redis://[::1]:6379/0"),
        ("amqp://u:p@[2001:db8::1]/", "amqp://[2001:db8::1]/"),
        ("mongodb://u:p@h1,h2/db?authSource=admin&replicaSet=rs", "mongodb://h1,h2/db?authSource=admin&replicaSet=rs"),
        ("https://sqs.us-east-1.amazonaws.com/123/q?X-Amz-Credential=a&X-Amz-Signature=b",
         "https://sqs.us-east-1.amazonaws.com/123/q"),
        ("amqp://u:p1@h1/;amqp://u:p2@h2/", "amqp://h1/;amqp://h2/"),
        ("sqlite:///machinery.db", "sqlite:///machinery.db"),
        ("sqlite:///tmp/a@b.db", "sqlite:///tmp/a@b.db"),
        ("memory://", "memory://"),
        ("eager", "eager"),
        ("", ""),
        ("guest:guest@localhost:5672", "localhost:5672"),
        ("redis://h/0#secret-fragment", "redis://h/0"),
        ("::::@@@", ""),
        ("://", "://"),
        ("redis://[::1", "redis://[::1"),
    ],
)  # fmt: skip
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


SPECIALS = "@/?#:%&=+,;![]~$'()*"


@pytest.mark.parametrize(
    "template",
    [
        "redis://:{pw}@host:6379/0",
        "amqp://user:{pw}@host:5672/vh",
        "redis://user:{pw}@h1:1,h2:2/0?db=1",
        "redis+socket://{pw}@/tmp/redis.sock:/0",
        "rediss://:{pw}@[::1]:6380",
        "mongodb+srv://u:{pw}@cluster0.example.net/db?retryWrites=true",
        "amqp://u:{pw}@h1/;amqp://u:{pw}@h2/",
        "cannot connect to redis://:{pw}@h:6379/0: connection refused",
    ],
)
def test_redact_url_never_leaks_random_passwords(template: str) -> None:
    rng = random.Random(template)
    for _ in range(300):
        body = "".join(rng.choice("abcXYZ019" + SPECIALS) for _ in range(rng.randint(0, 16)))
        pw = f"S3cr{body}Zq9"
        if "://" in pw:
            continue  # documented limit: a raw "://" in a password reads as the start of a second URL
        out = redact_url(template.replace("{pw}", pw))
        assert "S3cr" not in out and "Zq9" not in out, (pw, out)


@pytest.mark.parametrize("value", ["", "x", "\x00\x01", "a" * 10000, "%%%", "@" * 50, "::://@@//??##"])
def test_redact_url_garbage_never_raises(value: str) -> None:
    assert isinstance(redact_url(value), str)


def test_repr_and_redacted_never_show_passwords() -> None:
    cnf = Config(
        broker="amqp://guest:brokerpw@rabbit:5672/",
        result_backend="redis://:backendpw@redis:6379/1",
        lock="redis://:lockpw@redis:6379/2",
    )
    cnf.redis.sentinel_password = "sentinelpw"
    cnf.redis.client = object()
    cnf.sqs.client = object()
    text = repr(cnf) + str(cnf) + repr(cnf.redacted()) + repr(cnf.redis) + str(cnf.redacted())
    for secret in ("brokerpw", "backendpw", "lockpw", "sentinelpw", "guest"):
        assert secret not in text
    assert "amqp://rabbit:5672/" in repr(cnf)
    assert "sentinel_password='***'" in repr(cnf.redis)
    assert "client=<builtins.object>" in repr(cnf.redis)
    red = cnf.redacted()
    assert red["broker"] == "amqp://rabbit:5672/"
    assert red["redis"]["sentinel_password"] == "***"
    assert red["redis"]["client"] == "<builtins.object>"
    assert red["sqs"]["client"] == "<builtins.object>" and red["mongodb"]["client"] is None
    assert red["amqp"]["queue_declare_args"] == {}
    assert cnf.broker == "amqp://guest:brokerpw@rabbit:5672/"  # the config itself is untouched


def test_repr_of_env_config_hides_passwords() -> None:
    cnf = Config.from_env(read_env_file(DATA / "test.env"))
    text = repr(cnf)
    assert "backend-pw" not in text and "sentinel-secret" not in text and "guest:guest" not in text
    assert "redis://backend-host:6379/1" in text

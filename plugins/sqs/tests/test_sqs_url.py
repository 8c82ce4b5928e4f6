"""URL forms and settings: parsed without I/O, bad input is a clear ConfigError, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from machinery import Config
from machinery.errors import ConfigError
from machinery.plugins import resolve_backend, resolve_broker
from machinery_sqs import DynamoDBBackend, SQSBroker, SQSSettings, parse_backend_url, parse_broker_url
from machinery_sqs.settings import DynamoDBSettings
from machinery_sqs.url import is_dynamodb_url, is_sqs_url


def test_machinery_aws_form() -> None:
    target = parse_broker_url("https://sqs.eu-west-2.amazonaws.com/123456789012")
    assert (target.region, target.account) == ("eu-west-2", "123456789012")
    assert target.endpoint_url == "https://sqs.eu-west-2.amazonaws.com"
    china = parse_broker_url("https://sqs.cn-north-1.amazonaws.com.cn/123456789012")
    assert china.region == "cn-north-1"


def test_endpoint_form_of_local_servers() -> None:
    assert is_sqs_url("http://127.0.0.1:5000/123456789012")
    target = parse_broker_url("http://127.0.0.1:5000/123456789012?region=eu-central-1")
    assert (target.endpoint_url, target.account, target.region) == (
        "http://127.0.0.1:5000",
        "123456789012",
        "eu-central-1",
    )


def test_other_http_urls_need_go_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISABLE_STRICT_SQS_CHECK", raising=False)
    assert not is_sqs_url("http://localhost:9324/queue")
    assert not is_sqs_url("https://example.com/a/b")
    monkeypatch.setenv("DISABLE_STRICT_SQS_CHECK", "1")
    assert is_sqs_url("http://localhost:9324/queue")
    target = parse_broker_url("http://localhost:9324/queue")
    assert (target.endpoint_url, target.account) == ("http://localhost:9324", None)


def test_sqs_scheme_uses_boto3_configuration() -> None:
    target = parse_broker_url("sqs://")
    assert (target.endpoint_url, target.region, target.account) == (None, None, None)
    custom = parse_broker_url(
        "sqs://?region=us-west-1&endpoint_url=http://localhost:4566&visibility_timeout=60"
    )
    assert (custom.region, custom.endpoint_url) == ("us-west-1", "http://localhost:4566")
    assert custom.options == {"visibility_timeout": "60"}


def test_inline_credentials_never_shown() -> None:
    target = parse_broker_url("sqs://AKIAEXAMPLE:s3cret%2Fkey@")
    assert (target.access_key, target.secret_key) == ("AKIAEXAMPLE", "s3cret/key")
    assert "s3cret" not in repr(target)
    assert "s3cret" not in target.where
    with pytest.raises(ConfigError) as info:
        parse_broker_url("sqs://AKIAEXAMPLE:s3cret@somehost")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqs://somehost", "no host"),
        ("https://sqs.us-east-1.amazonaws.com/123456789012/myqueue", "routing key"),
        ("https://sqs.us-east-1.amazonaws.com/not-an-account", "12-digit"),
        ("sqs://?account=12", "12 digits"),
        ("http://127.0.0.1:notaport/123456789012", "invalid URL"),
        ("sqs://?region=a&region=b", "twice"),
    ],
)
def test_bad_broker_urls(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_broker_url(url)


def test_backend_forms() -> None:
    assert is_dynamodb_url("dynamodb://") and is_dynamodb_url("https://dynamodb.eu-west-1.amazonaws.com")
    assert not is_dynamodb_url("https://sqs.eu-west-1.amazonaws.com/123456789012")
    assert parse_backend_url("https://dynamodb.eu-west-1.amazonaws.com").region == "eu-west-1"
    target = parse_backend_url("dynamodb://?region=ap-south-1&task_states_table=states")
    assert target.region == "ap-south-1" and target.options == {"task_states_table": "states"}
    for bad in ("dynamodb://host", "https://dynamodb.eu-west-1.amazonaws.com/table"):
        with pytest.raises(ConfigError):
            parse_backend_url(bad)


def test_plugin_hooks_build_without_io() -> None:
    config = Config()
    broker = resolve_broker("http://127.0.0.1:1/123456789012", config)
    backend = resolve_backend("dynamodb://?endpoint_url=http://127.0.0.1:1", config)
    assert isinstance(broker, SQSBroker) and isinstance(backend, DynamoDBBackend)
    assert broker._clients._client is None and backend._clients._client is None, "from_url connected"
    assert isinstance(resolve_broker("https://sqs.us-east-1.amazonaws.com/123456789012", config), SQSBroker)
    assert isinstance(resolve_backend("https://dynamodb.us-east-1.amazonaws.com", config), DynamoDBBackend)
    broker.close()
    broker.close()
    backend.close()


def test_settings_sources() -> None:
    """Go's env and YAML names, this plugin's MACHINERY_SQS_* names, and the URL on top."""
    config = Config.from_env(
        {
            "SQS_VISIBILITY_TIMEOUT": "45",
            "SQS_WAIT_TIME_SECONDS": "5",
            "MACHINERY_SQS_CREATE_MISSING": "false",
            "MACHINERY_SQS_MAX_RECEIVE_COUNT": "5",
            "TASK_STATES_TABLE": "states",
            "MACHINERY_DYNAMODB_MAX_POLL_INTERVAL": "2.5",
        }
    )
    sqs = SQSSettings.of(config)
    assert (sqs.visibility_timeout, sqs.wait_time_seconds, sqs.create_missing) == (45, 5, False)
    broker = SQSBroker.from_url("sqs://?max_receive_count=7", config, delay_hop_seconds=60)
    assert (broker.settings.max_receive_count, broker.settings.delay_hop_seconds) == (7, 60)
    assert broker.settings.visibility_timeout == 45
    dynamodb = DynamoDBSettings.of(config)
    assert (dynamodb.task_states_table, dynamodb.max_poll_interval) == ("states", 2.5)


def test_settings_from_yaml_with_go_spellings(tmp_path: Path) -> None:
    pytest.importorskip("yaml")  # machinery-core[yaml]
    yaml_file = tmp_path / "machinery.yml"
    yaml_file.write_text(
        "broker: sqs://\nsqs:\n  receive_visibility_timeout: 30\n  visibility_hearth_beat: false\n"
        "dynamodb:\n  group_metas_table: groups\n"
    )
    from_yaml = Config.from_yaml(yaml_file)
    assert (from_yaml.sqs.visibility_timeout, from_yaml.sqs.visibility_heartbeat) == (30, False)
    assert from_yaml.dynamodb.group_metas_table == "groups"


def test_reloadable_settings_are_read_at_each_use() -> None:
    config = Config()
    broker = SQSBroker.from_url("sqs://?visibility_timeout=9", config)
    config.sqs.wait_time_seconds = 3
    config.sqs.visibility_timeout = 100
    assert broker._wait_seconds(10.0) == 3, "wait_time_seconds is reloadable"
    assert broker._live("visibility_timeout") == 9, "a URL parameter wins over the config"


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("nonsense=1", "unknown option 'nonsense' .no sqs setting"),
        ("create_missing=maybe", "option create_missing='maybe' is not a boolean"),
        ("visibility_timeout=soon", "option visibility_timeout='soon' is not a whole number"),
        ("delay_hop_seconds=901", "delay_hop_seconds"),
        ("dead_letter_queue=dlq", "{queue}"),
        ("max_receive_count=3&dead_letter_queue=", "needs a dead-letter queue"),
        ("client=x", "unknown option 'client'"),
    ],
)
def test_bad_settings(query: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        SQSBroker.from_url(f"sqs://?{query}", Config())


def test_bad_settings_in_the_environment() -> None:
    with pytest.raises(ConfigError, match="MACHINERY_SQS_DELAY_HOP_SECONDS"):
        Config.from_env({"MACHINERY_SQS_DELAY_HOP_SECONDS": "0"})


def test_dead_letter_names_keep_fifo_suffix() -> None:
    settings = SQSSettings()
    assert settings.dead_letter_name("jobs") == "jobs-dlq"
    assert settings.dead_letter_name("jobs.fifo") == "jobs-dlq.fifo"
    assert SQSSettings(dead_letter_queue="").dead_letter_name("jobs") == ""


def test_dynamodb_settings() -> None:
    config = Config()
    config.dynamodb.task_states_table = "states"
    backend = DynamoDBBackend.from_url("dynamodb://?group_metas_table=groups&create_missing=no", config)
    assert (backend.states_table, backend.groups_table, backend.settings.create_missing) == (
        "states",
        "groups",
        False,
    )
    with pytest.raises(ConfigError, match="max_poll_interval"):
        DynamoDBBackend.from_url("dynamodb://?max_poll_interval=0", config)

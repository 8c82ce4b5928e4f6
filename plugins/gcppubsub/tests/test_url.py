"""URL and settings parsing: no server."""

from __future__ import annotations

import pytest

from machinery import Config
from machinery.errors import ConfigError
from machinery_gcppubsub.broker import PubSubBroker
from machinery_gcppubsub.settings import GCPPubSubSettings
from machinery_gcppubsub.url import parse_url


def test_go_form_names_project_and_subscription() -> None:
    target = parse_url("gcppubsub://my-project/my-subscription")
    assert (target.project, target.subscription, target.options) == ("my-project", "my-subscription", {})


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("gcppubsub:///sub-one", "names no project"),
        ("gcppubsub://proj", "must name one subscription"),
        ("gcppubsub://proj/a/b", "must name one subscription"),
        ("gcppubsub://proj/1starts-with-digit", "not a valid Pub/Sub name"),
        ("gcppubsub://proj/goog-reserved", "not a valid Pub/Sub name"),
        ("gcppubsub://user:secret-pw@proj/sub-one", "credentials or a port"),
        ("gcppubsub://proj/sub-one?colour=red", "unknown parameter(s) colour"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_url(url)
    assert says in str(info.value)
    assert "secret-pw" not in str(info.value)


def test_query_overrides_settings_and_is_validated() -> None:
    config = Config()
    target = parse_url("gcppubsub://p/sub-one?ack_deadline=45&hold_window=5&create_missing=no")
    settings = GCPPubSubSettings.of(config).with_query(target.options, target.describe())
    assert (settings.ack_deadline, settings.hold_window, settings.create_missing) == (45, 5.0, False)
    assert settings.max_extension == config.gcppubsub.max_extension
    for bad in ("ack_deadline=601", "hold_window=0", "create_missing=maybe", "subscription_name=fixed"):
        target = parse_url(f"gcppubsub://p/sub-one?{bad}")
        with pytest.raises(ConfigError, match=rf"gcppubsub://p/sub-one.*option {bad.split('=')[0]}="):
            GCPPubSubSettings.of(config).with_query(target.options, target.describe())


def test_settings_come_from_env_and_yaml_as_a_plugin_section() -> None:
    config = Config.from_env(
        {"MACHINERY_GCPPUBSUB_ACK_DEADLINE": "45", "MACHINERY_GCPPUBSUB_CREATE_MISSING": "no"}
    )
    settings = GCPPubSubSettings.of(config)
    assert (settings.ack_deadline, settings.create_missing) == (45, False)
    with pytest.raises(ConfigError, match="ack_deadline"):
        Config.from_env({"MACHINERY_GCPPUBSUB_ACK_DEADLINE": "601"})


def test_queue_names_map_to_topics_and_subscriptions() -> None:
    config = Config(default_queue="machinery_tasks")
    broker = PubSubBroker.from_url("gcppubsub://proj/workers?subscription_name=sub-{queue}", config)
    assert broker.topic_path("machinery_tasks") == "projects/proj/topics/machinery_tasks"
    assert broker.subscription_path("machinery_tasks") == "projects/proj/subscriptions/workers"
    assert broker.subscription_path("emails") == "projects/proj/subscriptions/sub-emails"
    assert broker.dead_letter_path("emails") == "projects/proj/topics/emails-dead-letters"
    with pytest.raises(ConfigError, match="not a valid Pub/Sub name"):
        broker.topic_path("9lives")


def test_found_through_the_plugin_hook() -> None:
    from machinery import plugins

    broker = plugins.resolve_broker("gcppubsub://proj/sub-one", Config())
    assert isinstance(broker, PubSubBroker)
    assert ("gcppubsub", "broker", "machinery-gcppubsub") in plugins.list_schemes()

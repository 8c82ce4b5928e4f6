"""Unit tests of the URL and settings parsing (no store, no threads)."""

from __future__ import annotations

import pytest
from machinery_example.url import parse_url

from machinery.errors import ConfigError


def test_defaults_and_parameters() -> None:
    target = parse_url("example://jobs")
    assert (target.name, target.settings.lease, target.settings.renew) == ("jobs", 30.0, 10.0)
    short = parse_url("example://jobs?lease=3").settings
    assert (short.lease, short.renew) == (3.0, 1.0), "renew defaults to a third of a shorter lease"
    assert parse_url("example://a/b?lease=5&renew=2").settings.renew == 2.0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://x", "not an example:// URL"),
        ("example://", "name the store"),
        ("example://jobs?lease=soon", "lease must be a number of seconds"),
        ("example://jobs?lease=-1", "lease must be > 0 seconds"),
        ("example://jobs?lease=2&renew=2", "must be below example.lease"),
        ("example://jobs?leese=2", "unknown parameter(s) leese"),
    ],
)
def test_bad_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_url(url)


def test_errors_hide_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url("example://user:s3cret-pw@jobs?lease=x")
    assert "s3cret-pw" not in str(info.value)


def test_settings_come_from_the_config() -> None:
    """The section is declared through the settings hook: env, YAML and Config(example=...) reach it."""
    from machinery_example.settings import ExampleSettings

    from machinery import Config

    config = Config(example=ExampleSettings(lease=12.0, renew=4.0))
    assert ExampleSettings.of(config).lease == 12.0
    assert parse_url("example://jobs", config).settings.renew == 4.0
    assert parse_url("example://jobs?lease=6", config).settings.renew == 2.0  # a third of the URL's lease
    with pytest.raises(ConfigError, match="must be below example.lease"):
        Config(example=ExampleSettings(lease=1.0, renew=2.0)).validate()

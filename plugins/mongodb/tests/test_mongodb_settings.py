"""The ``mongodb`` settings section: declared by this plugin, read from env and YAML, validated."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from machinery import Config
from machinery.errors import ConfigError
from machinery.plugins import get_plugin_manager
from machinery_mongodb import MongoBackend
from machinery_mongodb.settings import MongoSettings


def test_the_plugin_declares_the_section() -> None:
    declared = [cls for result in get_plugin_manager().hook.machinery_settings() for cls in result]
    assert MongoSettings in declared
    config = Config()
    assert isinstance(config.mongodb, MongoSettings)
    assert MongoSettings.of(config).database == "machinery"


def test_database_from_the_environment() -> None:
    config = Config.from_env({"MACHINERY_MONGODB_DATABASE": "jobs"})
    assert MongoSettings.of(config).database == "jobs"
    assert MongoBackend.from_url("mongodb://h", config).conn.database_name == "jobs"


def test_database_from_yaml(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "config.yml"
    path.write_text("broker: sqlite:///x.db\nmongodb:\n  database: results\n")
    assert Config.from_yaml(path).mongodb.database == "results"


def test_an_invalid_database_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mongodb.database"):
        Config.from_env({"MACHINERY_MONGODB_DATABASE": "my.db"})


def test_the_old_core_name_still_works_deprecated() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from machinery.config import MongoDBConfig
    assert MongoDBConfig is MongoSettings
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)

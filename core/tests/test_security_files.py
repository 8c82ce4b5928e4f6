"""Private local files: what machinery creates for a user is 0600 whatever the umask (issue 21)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery.config import Config
from machinery.errors import ConfigError
from machinery.signature import Signature
from machinery.transports.sqlite.backend import SQLiteBackend
from machinery.transports.sqlite.broker import SQLiteBroker
from machinery.transports.sqlite.store import parse_sqlite_url


@pytest.fixture
def umask() -> Iterator[object]:
    """Restores the process umask the test changes (pytest runs tests one at a time in one thread)."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


SUFFIXES = ("", "-wal", "-shm", "-events", "-events-wal", "-events-shm")


def _modes(url: str) -> dict[str, int]:
    """Open a broker and a backend on ``url``, write, and read the permissions of the database, of its
    -wal and -shm files while they exist (the last connection to close removes them), and of the events
    file next to it."""
    config = Config(broker=url, result_backend=url)
    broker, backend = SQLiteBroker.from_url(url, config), SQLiteBackend.from_url(url, config)
    try:
        broker.publish(Signature(name="t"))
        backend.get_state("none")
        backend.workers()  # opens the events file
        path = parse_sqlite_url(url).path
        return {suffix: _mode(Path(path + suffix)) for suffix in SUFFIXES}
    finally:
        broker.close()
        backend.close()


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_database_wal_and_shm_are_owner_only_whatever_the_umask(
    tmp_path: Path, umask: object, mask: int
) -> None:
    os.umask(mask)
    assert _modes(f"sqlite:///{tmp_path}/private.db") == dict.fromkeys(SUFFIXES, 0o600)


def test_mode_parameter_widens_on_purpose_even_under_a_strict_umask(tmp_path: Path, umask: object) -> None:
    os.umask(0o077)
    assert _modes(f"sqlite:///{tmp_path}/shared.db?mode=0660") == dict.fromkeys(SUFFIXES, 0o660)


def test_an_existing_database_keeps_the_permissions_its_operator_chose(tmp_path: Path) -> None:
    path = tmp_path / "existing.db"
    path.touch()
    path.chmod(0o640)
    assert _modes(f"sqlite:///{path}")[""] == 0o640


@pytest.mark.parametrize("mode", ["0400", "0200", "abc", "1777", "-1", ""])
def test_bad_mode_is_a_clear_error(mode: str) -> None:
    with pytest.raises(ConfigError, match="mode=.*owner read and write"):
        parse_sqlite_url(f"sqlite:////tmp/x.db?mode={mode}")


def test_mode_is_octal() -> None:
    assert parse_sqlite_url("sqlite:////tmp/x.db?mode=660").mode == 0o660
    assert parse_sqlite_url("sqlite:////tmp/x.db").mode == 0o600

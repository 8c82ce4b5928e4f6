"""No secret is ever shown: the CLI's error paths, run for real, with a sentinel secret in every place a
secret can be (URL passwords and secret query parameters of every installed scheme, signing keys), with
and without ``--traceback`` and ``-v``; every byte of stdout and stderr is searched for the sentinel.

Bad URLs need no server; wrong passwords run against the real Redis and RabbitMQ of ``scripts/services``
(``REDIS_URL``, ``AMQP_URL``); unreachable servers are closed ports on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from machinery import Config
from machinery.plugins import list_schemes
from machinery.testing import require_env

SECRET = "S3ntinelPw"
#: a signing key holding the sentinel (long enough to be a valid key)
SIGNING_KEY = f"key-{SECRET}-0123456789"
CLOSED_PORT = 1  # nothing listens on 127.0.0.1:1; connecting is refused at once
MACHINERY = [sys.executable, "-m", "machinery"]

#: Bad URLs of every installed scheme, each holding the sentinel where a secret goes.
BAD_URLS = [
    f"sqlite://user:{SECRET}@host/x.db",  # the historical leak: "has a host part ('user:pw@host')"
    f"sqlite://:{SECRET}@/x.db",
    f"sqlite:////tmp/x.db?password={SECRET}",
    f"sqlite:////tmp/x.db?lease=zero&token={SECRET}",
    f"memory://user:{SECRET}@",
    f"redis://:{SECRET}@[not-an-ip",
    f"redis://:{SECRET}@127.0.0.1:notaport/0",
    f"redis://user:{SECRET}@127.0.0.1:6379/notadb",
    f"rediss://:{SECRET}@127.0.0.1:6380/0?ssl_cert_reqs=sometimes",
    f"redis+socket://{SECRET}@",
    f"redis+sentinel://:{SECRET}@127.0.0.1:{CLOSED_PORT}/",
    f"amqp://guest:{SECRET}@127.0.0.1:notaport/",
    f"amqps://guest:{SECRET}@[bad/",
    f"amqp://guest:{SECRET}@127.0.0.1:5672/?heartbeat=never",
    f"gcppubsub://user:{SECRET}@proj/",
    f"gcppubsub://proj/sub?token={SECRET}",
    f"nosuchscheme://user:{SECRET}@host/",
]

#: Servers that cannot be reached: connection refused.
UNREACHABLE_URLS = [
    f"redis://user:{SECRET}@127.0.0.1:{CLOSED_PORT}/0",
    f"rediss://:{SECRET}@127.0.0.1:{CLOSED_PORT}/0",
    f"amqp://guest:{SECRET}@127.0.0.1:{CLOSED_PORT}/",
]

APP = textwrap.dedent(
    """
    from machinery import Config, Machinery

    app = Machinery(Config.from_env())  # BROKER, RESULT_BACKEND, MACHINERY_SIGNING_KEYS...


    @app.task
    def add(a: int, b: int) -> int:
        return a + b
    """
)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("leakapp")
    (directory / "leakapp.py").write_text(APP)
    return directory


def _env(broker: str, backend: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MACHINERY_", "BROKER", "RESULT_"))}
    env.update(
        BROKER=broker,
        RESULT_BACKEND=backend or broker,
        MACHINERY_SIGNING_KEYS=SIGNING_KEY,
        REDIS_SENTINEL_PASSWORD=SECRET,  # a secret setting of a plugin section
        MACHINERY_APP="leakapp:app",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path, until: str = "") -> bytes:
    """Every byte the command wrote to stdout and stderr. With ``until`` (a worker, which retries for
    ever), SIGTERM once a line holding that text was written (or after 30 s), then read the rest."""
    proc = subprocess.Popen(
        [*MACHINERY, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    out = b""
    if until:
        timer = threading.Timer(30, proc.send_signal, (signal.SIGTERM,))
        timer.start()
        for line in proc.stdout:
            out += line
            if until.encode() in line:
                proc.send_signal(signal.SIGTERM)
                break
        timer.cancel()
    try:
        rest, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest, _ = proc.communicate()
    return out + rest


#: Each command, plain and with the output made as talkative as it gets.
COMMANDS = [
    ["send", "add", "1", "2", "--wait", "-t", "2"],
    ["-vvv", "--traceback", "send", "add", "1", "2", "--wait", "-t", "2"],
    ["-v", "--traceback", "result", "task_x"],
    ["--traceback", "inspect", "pending"],
    ["purge", "-Q", "q", "--yes"],
]


def _check_all(cases: list[tuple[list[str], dict[str, str], str]], cwd: Path) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(lambda case: _run(case[0], case[1], cwd, case[2]), cases))
    leaks = [
        f"machinery {' '.join(args)} with BROKER={env['BROKER'].replace(SECRET, '<secret>')} "
        f"RESULT_BACKEND={env['RESULT_BACKEND'].replace(SECRET, '<secret>')}:\n"
        f"{out.decode(errors='replace').replace(SECRET, '>>>SECRET<<<')}"
        for (args, env, _), out in zip(cases, outputs, strict=True)
        if SECRET.encode() in out or SECRET.lower().encode() in out.lower()
    ]
    assert not leaks, "the secret was shown:\n\n" + "\n\n".join(leaks)
    pairs = zip(cases, outputs, strict=True)
    silent = [f"machinery {' '.join(args)}" for (args, _, _), out in pairs if not out]
    assert not silent, f"printed nothing, so a leak could not be seen: {silent}"


def _generic_urls() -> list[str]:
    """One URL per installed scheme not named above (plugins installed later are covered too): a secret
    in the user info and in a query parameter, a closed port."""
    named = {url.split(":", 1)[0] for url in BAD_URLS}
    schemes = sorted({row.scheme for row in list_schemes()} - named)
    return [f"{scheme}://user:{SECRET}@127.0.0.1:{CLOSED_PORT}/x?token={SECRET}" for scheme in schemes]


def test_bad_urls_of_every_scheme(app_dir: Path) -> None:
    # every URL with the most talkative command; the plain one-line error for one URL per scheme
    cases = [(COMMANDS[1], _env(url), "") for url in BAD_URLS]
    first_of_scheme = {url.split(":", 1)[0]: url for url in reversed(BAD_URLS)}.values()
    cases += [(COMMANDS[0], _env(url), "") for url in first_of_scheme]
    # result-backend-only schemes (mongodb, memcache...) as the backend, behind a working sqlite broker
    broker = f"sqlite:///{app_dir}/leak.db"
    cases += [(COMMANDS[1], _env(broker, url), "") for url in _generic_urls()]
    cases += [(["worker", "-c", "1"], _env(BAD_URLS[0]), "")]
    _check_all(cases, app_dir)


def test_unreachable_servers(app_dir: Path) -> None:
    cases = [(args, _env(url), "") for url in UNREACHABLE_URLS for args in COMMANDS[:2]]
    cases += [(["worker", "-c", "1", "-l", "debug"], _env(url), "retrying") for url in UNREACHABLE_URLS]
    _check_all(cases, app_dir)


def _with_password(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{user}:{SECRET}@{host}").geturl()


@pytest.fixture
def wrong_password_urls() -> Iterator[list[str]]:
    redis_url = require_env("REDIS_URL", "redis")
    amqp_url = require_env("AMQP_URL", "rabbitmq")
    # Redis: a user that does not exist (WRONGPASS); RabbitMQ: the real user, a wrong password.
    yield [_with_password(redis_url, "nobody"), _with_password(amqp_url, "guest")]


@pytest.mark.services
def test_wrong_passwords_against_the_real_servers(app_dir: Path, wrong_password_urls: list[str]) -> None:
    cases = [(args, _env(url), "") for url in wrong_password_urls for args in COMMANDS]
    cases += [(["worker", "-c", "1", "-l", "debug"], _env(url), "retrying") for url in wrong_password_urls]
    _check_all(cases, app_dir)


def test_signing_key_errors_and_plugins_listing(app_dir: Path) -> None:
    short_key = f"{SECRET}"  # too short: a config error that must not echo it
    cases = [
        (["send", "add", "1", "2"], _env("memory://", MACHINERY_SIGNING_KEYS=short_key), ""),
        (["--traceback", "send", "add", "1", "2"], _env("memory://", MACHINERY_SIGNING_KEYS=short_key), ""),
        (["send", "add", "1", "2"], _env("memory://", MACHINERY_SIGNING_KEYS=f"base64:{SECRET}!"), ""),
        (["plugins"], _env(f"redis://:{SECRET}@h/0"), ""),
        (["plugins", "--json"], _env(f"redis://:{SECRET}@h/0"), ""),
    ]
    _check_all(cases, app_dir)


def test_config_repr_and_redacted_show_no_secret() -> None:
    config = Config(
        broker=f"amqp://guest:{SECRET}@rabbit:5672/;amqps://u:{SECRET}@rabbit2/",
        multiple_broker_separator=";",
        result_backend=f"redis://:{SECRET}@redis:6379/1?password={SECRET}",
        lock=f"redis+sentinel://:{SECRET}@s:26379/m",
        signing_keys=[SIGNING_KEY, SIGNING_KEY + "-next"],
    )
    for text in (repr(config), str(config.redacted()), str(config), repr(config.snapshot())):
        assert SECRET not in text

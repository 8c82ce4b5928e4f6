"""boto3 clients for the broker and the backend: built lazily, once per process, and errors that name
the URL (never a secret)."""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any

from machinery.config import Config
from machinery.errors import ConfigError

from .url import AWSTarget

__all__ = ["ClientHolder", "describe_error", "error_code"]

#: retries inside botocore for throttling and network errors ("standard" mode backs off with jitter)
RETRIES = {"max_attempts": 3, "mode": "standard"}
CONNECT_TIMEOUT = 5.0
#: above the longest long poll (20 s) so a ReceiveMessage never times out on the client side
READ_TIMEOUT = 40.0


class ClientHolder:
    """One boto3 client per process (boto3 clients are thread-safe, but not fork-safe).

    ``user_client``: a client supplied in the settings, used as it is (in every process).
    """

    def __init__(self, target: AWSTarget, config: Config, user_client: Any = None) -> None:
        self.target = target
        self.config = config
        self.user_client = user_client
        self._lock = threading.Lock()
        self._client: Any = None
        self._pid = 0

    def get(self) -> Any:
        if self.user_client is not None:
            return self.user_client
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            with self._lock:
                if self._client is None or self._pid != pid:
                    self._client = self._build()
                    self._pid = pid
        return self._client

    def _build(self) -> Any:
        # imported by name: boto3 ships no type information (boto3-stubs is optional)
        boto3: Any = importlib.import_module("boto3")
        boto_config_class: Any = importlib.import_module("botocore.config").Config

        target = self.target
        session = _shared_session(boto3)
        region: str | None = target.region or session.region_name
        if not region:
            if target.endpoint_url or _endpoint_from_env(target.service):
                region = "us-east-1"  # a local endpoint ignores it, but botocore needs one to sign
            else:
                raise ConfigError(
                    f"{target.where}: no AWS region; set AWS_DEFAULT_REGION, a profile's region, "
                    "or ?region=..."
                )
        boto_config = boto_config_class(
            retries=RETRIES,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            max_pool_connections=32,
            user_agent_extra="machinery-python",
        )
        with _session_lock:  # creating clients from one session is not thread-safe
            return session.client(
                target.service,
                aws_access_key_id=target.access_key,
                aws_secret_access_key=target.secret_key,
                region_name=region,
                endpoint_url=target.endpoint_url,
                verify=self._verify(),
                config=boto_config,
            )

    def _verify(self) -> bool | str | None:
        """TLS is verified by default; ``Config.tls`` may name a CA file or (tests only) turn it off."""
        tls = self.config.tls
        if tls.insecure_skip_verify:
            return False
        return tls.ca_file or None

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            close = getattr(client, "close", None)
            if close is not None:
                close()


_session_lock = threading.Lock()
_session: tuple[int, Any] | None = None


def _shared_session(boto3: Any) -> Any:
    """One boto3 session per process: its loaded service models make each further client cheap."""
    global _session
    pid = os.getpid()
    with _session_lock:
        if _session is None or _session[0] != pid:
            _session = (pid, boto3.session.Session())
        return _session[1]


def _endpoint_from_env(service: str) -> str:
    return os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL") or ""


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError (``""`` for other exceptions)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a botocore/boto3 exception (no credentials in it)."""
    code = error_code(exc)
    if code:
        message = getattr(exc, "response", {}).get("Error", {}).get("Message", "") or str(exc)
        return f"{code}: {message}"
    return f"{type(exc).__name__}: {exc}"

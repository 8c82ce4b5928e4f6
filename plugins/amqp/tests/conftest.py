"""Fixtures for the machinery-amqp tests (see ``amqp_testlib``)."""

from amqp_testlib import admin, amqp_url, backend, broker, config, make_config, names

__all__ = ["admin", "amqp_url", "backend", "broker", "config", "make_config", "names"]

"""Fleet-mode fixtures: RabbitMQ and PostgreSQL, each test session in a private vhost and a private database.

Session fixtures:
    broker_server  -> BrokerServer   the broker of TEST_BROKER_URL (default amqp://guest:guest@127.0.0.1:5672/)
    broker_url     -> str            amqp://… of a private vhost with a random name, deleted at the end
    database_server -> str           the admin URL of TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/
                                     postgres)
    database_url   -> str            postgresql://… of a private database with a random name, dropped at the end
Function fixtures (a fresh server each, deleted afterwards):
    own_broker     -> OwnBroker      a started private RabbitMQ node: `.url`, `.stop()`, `.start()`
    own_postgres   -> OwnPostgres    a started private PostgreSQL server: `.url`, `.stop()`, `.start()`

When the environment variable is unset and nothing answers at the default address (a developer's machine
without these services running), the session starts its own server from the installed packages instead, and
says so in one line. An explicitly set URL that does not answer fails the tests: it is a misconfiguration.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from tests.support.postgres import DEFAULT_DATABASE_URL, OwnPostgres, PrivateDatabase
from tests.support.rabbitmq import (
    DEFAULT_BROKER_URL,
    BrokerServer,
    OwnBroker,
    PrivateVhost,
    ServiceError,
    needs_own_server,
    system_ctl,
)

T = TypeVar("T")


def _announce(config: pytest.Config, line: str) -> None:
    """One line on the terminal, past the output capture that holds a fixture's prints until a test fails."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line, file=sys.stderr)


def _or_fail(make: Callable[[], T]) -> T:
    try:
        return make()
    except ServiceError as error:
        message = str(error)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def broker_server(pytestconfig: pytest.Config) -> Iterator[BrokerServer]:
    url, own = _or_fail(lambda: needs_own_server("TEST_BROKER_URL", DEFAULT_BROKER_URL, 5672))
    if not own:
        yield BrokerServer(url, ctl=system_ctl(), admin_url=os.environ.get("TEST_BROKER_ADMIN_URL") or None)
        return
    broker = _or_fail(lambda: OwnBroker().start())
    _announce(pytestconfig, f"fleet tests: no RabbitMQ at {url}; started one of our own at {broker.url} ({broker.dir})")
    try:
        yield broker.server()
    finally:
        broker.close()


@pytest.fixture(scope="session")
def broker_url(broker_server: BrokerServer) -> Iterator[str]:
    """amqp://… of this session's private vhost (its name starts with comfyui-api-test-)."""
    vhost = PrivateVhost(broker_server)
    url = _or_fail(vhost.create)
    try:
        yield url
    finally:
        vhost.delete()


@pytest.fixture(scope="session")
def database_server(pytestconfig: pytest.Config) -> Iterator[str]:
    url, own = _or_fail(lambda: needs_own_server("TEST_DATABASE_URL", DEFAULT_DATABASE_URL, 5432))
    if not own:
        yield url
        return
    server = _or_fail(lambda: OwnPostgres().start())
    _announce(
        pytestconfig, f"fleet tests: no PostgreSQL at {url}; started one of our own at {server.url} ({server.dir})"
    )
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="session")
def database_url(database_server: str) -> Iterator[str]:
    """postgresql://… of this session's private database (its name starts with comfyui_api_test_)."""
    database = PrivateDatabase(database_server)
    url = _or_fail(database.create)
    try:
        yield url
    finally:
        database.drop()


@pytest.fixture
def own_broker() -> Iterator[OwnBroker]:
    """A private RabbitMQ node of this test alone, started; stopped and deleted afterwards."""
    broker = _or_fail(lambda: OwnBroker().start())
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A private PostgreSQL server of this test alone, started; stopped and deleted afterwards."""
    server = _or_fail(lambda: OwnPostgres().start())
    try:
        yield server
    finally:
        server.close()

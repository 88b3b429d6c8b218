"""Self-tests of the fleet fixtures (tests/fleet/conftest.py): the private vhost and database, and the brokers and
database servers the tests start themselves."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import unquote, urlsplit
from uuid import uuid4

import aio_pika
import asyncpg
import pytest

from tests.support.postgres import DATABASE_PREFIX, OwnPostgres, PrivateDatabase, query
from tests.support.rabbitmq import (
    VHOST_PREFIX,
    BrokerServer,
    OwnBroker,
    PrivateVhost,
    ServiceError,
    amqp_login,
    answers,
    needs_own_server,
    queue_depth,
    run_async,
    system_ctl,
    with_vhost,
)
from tests.support.server import closed_port


def vhost_of(url: str) -> str:
    return unquote(urlsplit(url).path[1:]) or "/"


async def publish(url: str, queue_name: str, body: bytes, *, durable: bool) -> None:
    """Declare the queue and publish one message to it, confirmed by the broker (aio-pika's channels wait for
    publisher confirms), persistent in a durable queue."""
    connection = await aio_pika.connect(url, timeout=30)
    try:
        channel = await connection.channel()
        await channel.declare_queue(queue_name, durable=durable)
        mode = aio_pika.DeliveryMode.PERSISTENT if durable else aio_pika.DeliveryMode.NOT_PERSISTENT
        await channel.default_exchange.publish(aio_pika.Message(body, delivery_mode=mode), routing_key=queue_name)
    finally:
        await connection.close()


async def take(url: str, queue_name: str) -> bytes:
    """Get and acknowledge one message (the caller saw it counted in the queue first), then delete the queue."""
    connection = await aio_pika.connect(url, timeout=30)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        message = await queue.get(timeout=30)
        assert message is not None
        await message.ack()
        await queue.delete(if_unused=False, if_empty=False)
        return message.body
    finally:
        await connection.close()


# RabbitMQ: the session's private vhost ----------------------------------------------------------------


async def test_private_vhost_carries_a_roundtrip(broker_url: str, broker_server: BrokerServer) -> None:
    vhost = vhost_of(broker_url)
    assert vhost.startswith(VHOST_PREFIX)
    assert vhost != vhost_of(broker_server.url)
    name = f"roundtrip-{uuid4().hex}"
    body = uuid4().bytes

    await publish(broker_url, name, body, durable=True)
    assert await queue_depth(broker_url, name) == 1
    assert await take(broker_url, name) == body

    # The queue lives in the private vhost only.
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await queue_depth(broker_server.url, name)


async def test_a_private_vhost_exists_until_deleted(broker_server: BrokerServer) -> None:
    vhost = PrivateVhost(broker_server)
    with pytest.raises(aio_pika.exceptions.AMQPError):  # a missing vhost refuses the login
        await amqp_login(vhost.url)

    url = await asyncio.to_thread(vhost.create)
    try:
        await amqp_login(url)
        await publish(url, "left-behind", b"x", durable=True)
    finally:
        await asyncio.to_thread(vhost.delete)

    with pytest.raises(aio_pika.exceptions.AMQPError):
        await amqp_login(url)


def test_a_private_vhost_through_the_management_api() -> None:
    """Where rabbitmqctl reaches another node than the URL's broker (here: the machine's own node, when this user
    may run it), the vhost is made through the management API instead, and nothing is left on that other node."""
    with OwnBroker(management=True) as broker:
        ctl = system_ctl()
        vhost = PrivateVhost(BrokerServer(broker.url, ctl=ctl, admin_url=broker.admin_url))
        url = vhost.create()
        run_async(lambda: amqp_login(url), timeout_s=60)
        if ctl is not None:
            assert vhost.name not in ctl("list_vhosts", "--no-table-headers").stdout.split()
        vhost.delete()
        with pytest.raises(aio_pika.exceptions.AMQPError):
            run_async(lambda: amqp_login(url), timeout_s=60)


# PostgreSQL: the session's private database ---------------------------------------------------------


async def test_private_database_accepts_a_table(database_url: str) -> None:
    name = urlsplit(database_url).path[1:]
    assert name.startswith(DATABASE_PREFIX)
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        assert await connection.fetchval("SELECT current_database()") == name
        table = f"probe_{uuid4().hex}"
        await connection.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, note text NOT NULL)")
        await connection.execute(f"INSERT INTO {table} VALUES (1, 'ü ok')")
        assert await connection.fetchval(f"SELECT note FROM {table} WHERE id = 1") == "ü ok"
        await connection.execute(f"DROP TABLE {table}")
    finally:
        await connection.close()


async def test_a_private_database_is_dropped_with_its_connections(database_server: str) -> None:
    database = PrivateDatabase(database_server)
    url = await asyncio.to_thread(database.create)
    assert await asyncio.to_thread(database.exists)
    # A connection a test forgot to close does not keep the database alive.
    connection = await asyncpg.connect(url, timeout=30)
    try:
        await asyncio.to_thread(database.drop)
        assert not await asyncio.to_thread(database.exists)
    finally:
        connection.terminate()


# Servers of our own ---------------------------------------------------------------------------------


async def test_own_broker_keeps_durable_queues_and_persistent_messages_across_a_restart(own_broker: OwnBroker) -> None:
    url = own_broker.url
    durable, transient = f"durable-{uuid4().hex}", f"transient-{uuid4().hex}"
    await publish(url, durable, b"kept", durable=True)
    await publish(url, transient, b"lost", durable=False)

    await asyncio.to_thread(own_broker.stop)
    assert not answers("127.0.0.1", own_broker.amqp_port)
    await asyncio.to_thread(own_broker.start)

    assert own_broker.url == url  # same port: clients reconnect to where they were
    assert await queue_depth(url, durable) == 1
    assert await take(url, durable) == b"kept"
    # A transient queue is gone: the node really restarted.
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await queue_depth(url, transient)


async def test_own_broker_is_private(own_broker: OwnBroker) -> None:
    assert own_broker.dir.is_dir()
    listed = await asyncio.to_thread(own_broker.ctl, "list_vhosts", "--no-table-headers")
    assert listed.returncode == 0
    assert listed.stdout.split() == ["/"]  # only its default vhost: not the machine's node, nor the session's
    status = await asyncio.to_thread(own_broker.ctl, "status")
    assert own_broker.nodename in status.stdout


async def test_own_postgres_answers_and_keeps_data_across_a_restart(own_postgres: OwnPostgres) -> None:
    rows = await query(own_postgres.url, "SELECT version() AS version, current_user AS user")
    assert rows[0]["version"].startswith("PostgreSQL")
    assert rows[0]["user"] == "postgres"
    await query(own_postgres.url, "CREATE TABLE kept (x integer)")
    await query(own_postgres.url, "INSERT INTO kept VALUES (7)")

    await asyncio.to_thread(own_postgres.stop)
    assert not answers("127.0.0.1", own_postgres.port)
    await asyncio.to_thread(own_postgres.start)

    assert [r["x"] for r in await query(own_postgres.url, "SELECT x FROM kept")] == [7]


def test_close_deletes_the_own_servers_folders() -> None:
    broker = OwnBroker().start()
    broker.close()
    assert not broker.dir.exists()
    assert not answers("127.0.0.1", broker.amqp_port)

    server = OwnPostgres().start()
    server.close()
    assert not server.dir.exists()
    assert not answers("127.0.0.1", server.port)


# Detection of "no server here" ----------------------------------------------------------------------


def test_no_service_answers_on_a_closed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    assert not answers("127.0.0.1", port)
    dead_url = f"amqp://guest:guest@127.0.0.1:{port}/"

    # Default URL with nothing behind it: start our own.
    monkeypatch.delenv("TEST_BROKER_URL", raising=False)
    assert needs_own_server("TEST_BROKER_URL", dead_url, 5672) == (dead_url, True)
    # An explicit URL with nothing behind it: a misconfiguration, reported.
    monkeypatch.setenv("TEST_BROKER_URL", dead_url)
    with pytest.raises(ServiceError, match="nothing answers"):
        needs_own_server("TEST_BROKER_URL", "amqp://unused/", 5672)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        live_url = with_vhost(f"amqp://guest:guest@127.0.0.1:{listener.getsockname()[1]}/", "v")
        assert answers("127.0.0.1", listener.getsockname()[1])
        monkeypatch.delenv("TEST_BROKER_URL")
        assert needs_own_server("TEST_BROKER_URL", live_url, 5672) == (live_url, False)

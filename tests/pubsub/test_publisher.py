"""The Publisher (syncws/pubsub/publisher.py): a plain process's publishes and revokes, against a real redis-server.

Its publishes reaching clients of running servers, across processes, are in
``tests/pubsub/test_redis_broker.py``; here, what it sends to Redis itself.
"""

from __future__ import annotations

import json
import time

import pytest
import redis

from syncws import Publisher
from syncws.pubsub.broker import channel_name, command_channel

from ..support import RedisServer, free_port, new_topic

pytestmark = pytest.mark.slow  # a redis-server: not in the fast loop


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("publisher")) as server:
        yield server


def test_a_publish_goes_to_the_topics_channel_and_counts_its_listeners(redis_server):
    topic = new_topic()
    listener = redis_server.client(decode_responses=False).pubsub()
    listener.subscribe(channel_name("syncws", "/rooms", topic))
    assert listener.get_message(timeout=5)["type"] == "subscribe"  # (a pubsub reply's type is always decoded)
    with Publisher(redis_server.url) as publisher:
        assert publisher.publish(topic, {"n": 1}, namespace="/rooms") == 1  # one subscriber: this one
        message = listener.get_message(timeout=5)
    listener.close()
    assert message is not None and message["channel"] == channel_name("syncws", "/rooms", topic).encode()
    header, _, payload = message["data"].partition(b"\n")
    assert json.loads(payload) == {"n": 1} and b"/rooms" in header


def test_revokes_go_to_the_command_channel(redis_server):
    listener = redis_server.client().pubsub()
    listener.subscribe(command_channel("syncws"))
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    with Publisher(redis_server.url) as publisher:
        assert publisher.disconnect("alice", "banned") == 1
        assert publisher.unsubscribe(42, "secret", namespace="/app") == 1
        first, second = listener.get_message(timeout=5), listener.get_message(timeout=5)
    listener.close()
    assert first is not None and second is not None
    assert {"op": "disconnect", "user": "alice", "reason": "banned"}.items() <= json.loads(first["data"]).items()
    assert {"op": "unsubscribe", "user": "42", "topic": "secret"}.items() <= json.loads(second["data"]).items()


def test_bad_input_is_refused_before_anything_is_sent(redis_server):
    with Publisher(redis_server.url) as publisher:
        with pytest.raises(ValueError):
            publisher.publish("", "x")
        with pytest.raises(TypeError):
            publisher.publish(new_topic(), object())  # not JSON-able


def test_publisher_raises_redis_connection_error_when_redis_is_down():
    port = free_port()  # nothing listens there
    publisher = Publisher(f"redis://127.0.0.1:{port}/0")
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        publisher.publish("news", {"x": 1})
    assert time.monotonic() - started < 10
    publisher.close()

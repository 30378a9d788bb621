"""Which broker a server gets: serve(broker=...), else SYNCWS_BROKER, else in-process."""

from __future__ import annotations

import pytest

from syncws import Broker, ConfigurationError
from syncws.pubsub.broker import LocalBroker
from syncws.pubsub.factory import make_broker
from syncws.pubsub.redis_broker import RedisBroker


def test_nothing_given_is_in_process(monkeypatch):
    monkeypatch.delenv("SYNCWS_BROKER", raising=False)
    assert type(make_broker(None)) is LocalBroker


def test_the_environment_names_the_broker_when_the_code_does_not(monkeypatch):
    monkeypatch.setenv("SYNCWS_BROKER", "redis://127.0.0.1:1/0")  # nothing is connected before start()
    broker = make_broker(None)
    assert isinstance(broker, RedisBroker) and broker.url == "redis://127.0.0.1:1/0"
    monkeypatch.setenv("SYNCWS_BROKER", "")
    assert type(make_broker(None)) is LocalBroker  # empty counts as unset


def test_a_url_argument_wins_and_a_broker_instance_is_used_as_it_is(monkeypatch):
    monkeypatch.setenv("SYNCWS_BROKER", "redis://127.0.0.1:1/0")
    mine = LocalBroker()
    assert make_broker(mine) is mine and isinstance(mine, Broker)
    assert make_broker("redis+cluster://127.0.0.1:7000").url == "redis+cluster://127.0.0.1:7000"


def test_a_bad_url_or_type_is_refused_clearly():
    with pytest.raises(ConfigurationError):
        make_broker("http://127.0.0.1:6379")
    with pytest.raises(TypeError, match="URL string or a Broker"):
        make_broker(6379)

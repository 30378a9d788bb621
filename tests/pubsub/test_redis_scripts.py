"""The cluster-safe key layout and the arguments of the publish script (strings in, strings out)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from syncws import ConfigurationError
from syncws.protocol.payload import Outgoing
from syncws.pubsub.broker import channel_name
from syncws.pubsub.redis_scripts import (
    check_prefix,
    fleet_keys,
    history_key,
    presence_keys,
    presence_member,
    publish_call,
    spaces_key,
)

TOPICS = ["news", "room:1", "a{b}c", "ünï cødé", "with space", "}{"]


@pytest.mark.parametrize("topic", TOPICS)
def test_every_key_and_channel_of_a_topic_is_in_one_hash_slot(topic):
    names = [
        history_key("app", "/chat", topic),
        history_key("app", "ns:with:colons", topic),
        spaces_key("app", topic),
        *presence_keys("app", topic),
        channel_name("app", None, topic),
        channel_name("app", "/chat", topic),
    ]
    assert len({key_slot(name.encode()) for name in names}) == 1, names


def test_names_cannot_collide_through_colons_or_braces():
    assert history_key("app", "a:b", "c") != history_key("app", "a", "b:c")
    assert channel_name("app", "a:b", "c") != channel_name("app", "a", "b:c")
    # A brace in a topic cannot end the hash tag early and move the key to another topic's slot.
    assert "{a%7Bb%7Dc}" in history_key("app", "/", "a{b}c")
    assert len({history_key("app", "/", topic) for topic in TOPICS}) == len(TOPICS)


def test_the_fleet_keys_share_the_prefix_s_slot_and_presence_members_keep_both_parts():
    servers, settings = fleet_keys("app")
    assert (servers, settings) == ("{app}:servers", "{app}:settings")
    assert key_slot(servers.encode()) == key_slot(settings.encode()) == key_slot(b"{app}:cmd")
    entry_id, _, namespace = presence_member("/chat:room", "peer-1").partition("\n")
    assert (entry_id, namespace) == ("peer-1", "/chat:room")


@pytest.mark.parametrize("prefix", ["a{b", "b}", 7])
def test_a_prefix_with_braces_or_not_a_string_is_refused(prefix):
    with pytest.raises(ConfigurationError, match="without braces"):
        check_prefix(prefix)
    assert check_prefix("my:app") == "my:app"


def test_the_publish_script_gets_every_key_and_each_namespace_with_its_channel():
    outgoing = Outgoing({"n": 1})
    keys, args = publish_call("app", "origin-1", None, ["/a", "/b"], "t", outgoing, None, 100, 5000, False, True)
    assert keys == [spaces_key("app", "t"), history_key("app", "/a", "t"), history_key("app", "/b", "t")]
    assert args[:8] == ["origin-1", "0", "t", "0", "1", "", 100, 5000]
    assert args[9:13] == [outgoing.payload, "0", "SPUBLISH", channel_name("app", None, "t")]
    assert args[13:] == ["/a", channel_name("app", "/a", "t"), "/b", channel_name("app", "/b", "t")]
    # One namespace: that one only, whatever the caller believed; classic PUBLISH, binary data, an excluded sender.
    keys, args = publish_call("app", "o", "/a", ["/x"], "t", Outgoing(b"\x00"), "peer-9", 5, 0, True, False)
    assert keys == [spaces_key("app", "t"), history_key("app", "/a", "t")]
    assert (args[1], args[3], args[5], args[10], args[11]) == ("1", "1", "peer-9", "1", "PUBLISH")
    assert args[13:] == ["/a", channel_name("app", "/a", "t")]
    assert len({key_slot(key.encode()) for key in keys}) == 1

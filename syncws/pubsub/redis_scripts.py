"""The Lua scripts the Redis broker runs, and the keys they touch.

Why scripts: a stored publish must get its offset and be published to the
processes in one atomic step, so that the order of the pub/sub messages is
the order of the offsets on every process, and a recovery's read can be
placed exactly between two publishes (see ``READ``).

The layout works on a Redis Cluster as on one server.  Every key and channel
of one topic carries the hash tag ``{<topic>}``, so everything one script
touches lies in one hash slot (and on one shard, whose pub/sub also carries
the topic's live messages); every key reaches a script through ``KEYS``,
never built inside it; settings come in ``ARGV``, never read by a script from
another slot.  Names are percent-encoded (``q``, as :func:`urllib.parse.quote`
with ``safe=''``), so ':' and braces in a name can neither make two keys
collide nor end the hash tag early.  With ``t`` = ``q(topic)`` and ``n`` =
``q(namespace)``:

* ``<prefix>:{t}:h:<n>``: the stream of one history.  Entry ids are
  ``<epoch>-<seq>``: the epoch is chosen at random when the stream is created
  and kept while it exists (``XADD key <epoch>-*``), the sequence counts up by
  one per publish.  An entry's fields: ``d`` payload, ``b`` binary, ``j``
  JSON, ``t`` time in ms (for ``history_ttl``); an entry with ``z`` starts a
  new epoch (``BUMP``) and is never replayed.
* ``<prefix>:{t}:hn``: the namespaces with a history or a subscriber of the
  topic (where a publish without namespace is stored).
* ``<prefix>:{t}:p`` (sorted set: ``<entry id>\\n<namespace>``, scored by its
  expiry in ms) and ``<prefix>:{t}:pi`` (hash: the same member -> info JSON):
  the presence of a topic in every namespace, two keys per topic whatever the
  namespaces (a refresh sends as little as before the cluster layout).
* channels ``<prefix>:{t}:ns:<n>`` (one namespace) and ``<prefix>:{t}:all``
  (every namespace, for servers without history), in the topic's slot too.
* ``{<prefix>}:servers`` (sorted set: a server process's origin, scored by
  the time its announcement expires, in ms) and ``{<prefix>}:settings`` (hash:
  origin -> ``"<history_size> <history_ttl ms>"``): the settings of the
  server processes alive now, in one slot of their own.  Each process
  announces itself at start and every third of ``presence_ttl`` (see
  ``ANNOUNCE``); a process that stopped counts for ``presence_ttl`` more (a
  restart loses nothing a Publisher publishes meanwhile), then its settings
  are dropped.  A :class:`~syncws.pubsub.publisher.Publisher` reads them
  (``ANNOUNCE`` without an origin) and passes them to ``PUBLISH``.
* channel ``{<prefix>}:cmd``: commands (``server.disconnect``) to every process.

A publish to every namespace needs the keys of every namespace of the topic,
which the caller cannot know for sure: it passes the namespaces it last saw,
and ``PUBLISH`` checks them against ``hn`` in the
same atomic step, answering ``{-1, namespaces}`` instead of writing anything
when they differ, so the caller retries with the right keys.

Times come from Redis' ``TIME``, so machines whose clocks disagree agree on
expiry.  An older syncws (before 0.9) kept keys without hash tags
(``<prefix>:h:<n>:<t>``): those are a different history, and an offset from
one of them resumes with ``recovered=False``, never a wrong replay.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ..base.errors import ConfigurationError
from ..protocol.payload import Outgoing
from .broker import channel_name, topic_tag
from .history import new_epoch


def check_prefix(prefix: str) -> str:
    """A key prefix; braces would break the hash tags (ConfigurationError)."""
    if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
        raise ConfigurationError(f"a Redis key prefix must be a string without braces, not {prefix!r}")
    return prefix


def _q(name: str) -> str:
    return quote(name, safe="")


def history_key(prefix: str, namespace: str, topic: str) -> str:
    return f"{topic_tag(prefix, topic)}:h:{_q(namespace)}"


def spaces_key(prefix: str, topic: str) -> str:
    return f"{topic_tag(prefix, topic)}:hn"


def presence_keys(prefix: str, topic: str) -> list[str]:
    """The sorted set and the hash of a topic's presence (every namespace)."""
    tag = topic_tag(prefix, topic)
    return [f"{tag}:p", f"{tag}:pi"]


def presence_member(namespace: str, entry_id: str) -> str:
    """An entry's member in a topic's presence: its id (no newline: ids are made by syncws), then its namespace."""
    return f"{entry_id}\n{namespace}"


def fleet_keys(prefix: str) -> list[str]:
    """``{<prefix>}:servers`` and ``{<prefix>}:settings`` (see ``ANNOUNCE``)."""
    return [f"{{{prefix}}}:servers", f"{{{prefix}}}:settings"]


def publish_call(
    prefix: str,
    origin: str,
    namespace: str | None,
    namespaces: list[str],
    topic: str,
    outgoing: Outgoing,
    exclude_id: str | None,
    size: int,
    ttl_ms: int,
    mixed: bool,
    sharded: bool,
) -> tuple[list[str], list[Any]]:
    """The KEYS and ARGV of :data:`PUBLISH`.

    ``namespace`` None: every namespace, the ones the caller believes are in
    ``hn`` given as ``namespaces`` (the script checks).  ``mixed``: some live
    servers keep no history, so a publish to every namespace also goes out
    on the all-namespaces channel, for them.
    """
    spaces = [namespace] if namespace is not None else namespaces
    keys = [spaces_key(prefix, topic)] + [history_key(prefix, ns, topic) for ns in spaces]
    args: list[Any] = [
        origin,
        "0" if namespace is None else "1",
        topic,
        "1" if outgoing.is_binary else "0",
        "1" if outgoing.is_json else "0",
        exclude_id or "",
        size,
        ttl_ms,
        new_epoch(),
        outgoing.payload,
        "1" if mixed else "0",
        "SPUBLISH" if sharded else "PUBLISH",
        channel_name(prefix, None, topic),
    ]
    for ns in spaces:
        args += [ns, channel_name(prefix, ns, topic)]
    return keys, args


_COMMON = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function field(entry, name)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end
local function each_chunk(list, fn)  -- unpack() takes a few thousand values at most
  for i = 1, #list, 1000 do fn({unpack(list, i, math.min(i + 999, #list))}) end
end
local function prune(z, h, now)  -- drop the members of z scored <= now, and their fields in h
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    each_chunk(expired, function(ids) redis.call('HDEL', h, unpack(ids)) end)
  end
end
local function last_id(key)
  local info = redis.pcall('XINFO', 'STREAM', key)
  if type(info) ~= 'table' or info.err then return nil end
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return info[i + 1] end
  end
  return nil
end
local function same_set(key, given)  -- the members of key are exactly the list given
  local members = redis.call('SMEMBERS', key)
  if #members ~= #given then return false, members end
  local seen = {}
  for _, m in ipairs(given) do seen[m] = true end
  for _, m in ipairs(members) do
    if not seen[m] then return false, members end
  end
  return true, members
end
"""

#: KEYS: the topic's namespaces set (``hn``), then the stream of each namespace.
#: ARGV: origin, has namespace (0/1), topic, binary (0/1), json (0/1), exclude
#: id ('' none), history size, ttl ms (0 none), a new epoch, payload, mixed
#: (0/1: some live servers keep no history), PUBLISH or SPUBLISH, the
#: all-namespaces channel, then (namespace, channel) for each stream.
#: Returns ``{receivers}``: how many subscriber connections received it; or
#: ``{-1, namespaces}`` without writing anything when the publish goes to
#: every namespace and the namespaces passed are not the topic's.
#:
#: When servers with and without history share the prefix (a misconfiguration
#: the servers log), a publish to every namespace is stored and published per
#: namespace for the servers with history (header ``k`` "h"), and published
#: once more on the all-namespaces channel for the others (``k`` "p"): each
#: server takes the copy meant for it, so every subscriber gets it once.
PUBLISH = (
    _COMMON
    + r"""
local origin, hasns, topic = ARGV[1], ARGV[2] == '1', ARGV[3]
local binary, isjson, exclude = ARGV[4], ARGV[5], ARGV[6]
local size, ttl, epoch, payload = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9], ARGV[10]
local mixed, pub, all_channel = ARGV[11] == '1', ARGV[12], ARGV[13]
local spaces_key, n = KEYS[1], #KEYS - 1
if hasns then
  redis.call('SADD', spaces_key, ARGV[14])
else
  local given = {}
  for k = 1, n do given[k] = ARGV[12 + 2 * k] end
  local same, members = same_set(spaces_key, given)
  if not same then return {-1, members} end
end
if ttl > 0 then redis.call('PEXPIRE', spaces_key, ttl) end
local head = {v = 1, o = origin, t = topic, b = binary == '1', j = isjson == '1'}
if exclude ~= '' then head.x = exclude end
local now = now_ms()
local received = 0
for k = 1, n do
  local key, ns, channel = KEYS[k + 1], ARGV[12 + 2 * k], ARGV[13 + 2 * k]
  local last = last_id(key)
  local e = epoch
  if last then e = string.match(last, '^(%d+)-') end
  local id = redis.call('XADD', key, 'MAXLEN', size, e .. '-*', 'd', payload, 'b', binary, 'j', isjson, 't', now)
  if ttl > 0 then
    local oldest = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
    if oldest and tonumber(field(oldest, 't')) < now - ttl then
      for _, entry in ipairs(redis.call('XRANGE', key, '-', '+')) do
        if tonumber(field(entry, 't')) >= now - ttl then
          redis.call('XTRIM', key, 'MINID', entry[1])
          break
        end
      end
    end
    redis.call('PEXPIRE', key, ttl)
  end
  head.n = ns
  head.f = id
  if mixed and not hasns then head.k = 'h' end
  received = received + redis.call(pub, channel, cjson.encode(head) .. '\n' .. payload)
end
if mixed and not hasns then
  head.n, head.f, head.k = nil, nil, 'p'
  received = received + redis.call(pub, all_channel, cjson.encode(head) .. '\n' .. payload)
end
return {received}
"""
)

#: KEYS: ``{<prefix>}:servers``, ``{<prefix>}:settings``.  ARGV: origin ('':
#: only read), lifetime ms, history size, history ttl ms (0 none).  A server
#: process says it is alive, with its settings, for the lifetime; returns
#: every live process's settings, its own included (see the keys above).
ANNOUNCE = (
    _COMMON
    + r"""
local servers, settings = KEYS[1], KEYS[2]
local origin, life, size, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local now = now_ms()
if origin ~= '' then
  redis.call('ZADD', servers, now + life, origin)
  redis.call('HSET', settings, origin, size .. ' ' .. ttl)
end
prune(servers, settings, now)
local values = redis.call('HVALS', settings)
local last = redis.call('ZRANGE', servers, -1, -1, 'WITHSCORES')[2]  -- the latest expiry
if last then  -- both keys go when the last process has gone
  redis.call('PEXPIREAT', servers, last)
  redis.call('PEXPIREAT', settings, last)
end
return values
"""
)

#: KEYS: the stream, the topic's namespaces set.  ARGV: namespace, since (''
#: none), ttl ms (0 none), limit (0 none, -1 read no entries: only the newest
#: offset), add the namespace to the topic's set (0/1), PUBLISH or SPUBLISH,
#: marker channel ('' none), marker, also return the entry at ``since``
#: (0/1).  Returns {recovered 0/1, newest offset or '', entries, the entry
#: at ``since`` or nil}.
#:
#: The marker is published in the same atomic step as the read, on the
#: topic's own channel (the same slot, so the same shard connection): every
#: publish stored before the read reaches the reading process's subscriber
#: connection before the marker, every later one after it.
READ = (
    _COMMON
    + r"""
local key, spaces_key = KEYS[1], KEYS[2]
local namespace, since, ttl, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local addns, pub, marker_channel, marker, exact = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9] == '1'
if addns == '1' then
  redis.call('SADD', spaces_key, namespace)
  if ttl > 0 then redis.call('PEXPIRE', spaces_key, ttl) end
end
local last = last_id(key)
local recovered, entries, at_since = 0, {}, false
if last then
  local le, ls = string.match(last, '^(%d+)-(%d+)$')
  local se, ss = string.match(since, '^(%d+)-(%d+)$')
  local valid = se ~= nil and se == le and tonumber(ss) <= tonumber(ls)
  local from = '-'
  if valid then from = '(' .. since end
  local found
  if limit < 0 then
    found = {}
  elseif limit > 0 then
    found = redis.call('XREVRANGE', key, '+', from, 'COUNT', limit)
  else
    found = redis.call('XRANGE', key, from, '+')
  end
  local cutoff = nil
  if ttl > 0 then cutoff = now_ms() - ttl end
  for _, entry in ipairs(found) do
    if field(entry, 'z') == nil and (cutoff == nil or tonumber(field(entry, 't')) >= cutoff) then
      entries[#entries + 1] = entry
    end
  end
  if limit > 0 then
    local ordered = {}
    for i = #entries, 1, -1 do ordered[#ordered + 1] = entries[i] end
    entries = ordered
  end
  if valid then
    if ss == ls then
      recovered = 1
    elseif entries[1] then
      local _, fs = string.match(entries[1][1], '^(%d+)-(%d+)$')
      if tonumber(fs) == tonumber(ss) + 1 then recovered = 1 end
    end
  end
  if exact and se ~= nil then at_since = redis.call('XRANGE', key, since, since)[1] or false end
end
if marker_channel ~= '' then redis.call(pub, marker_channel, marker) end
return {recovered, last or '', entries, at_since}
"""
)

#: KEYS: the stream.  ARGV: the epoch the caller saw, how far to move it on.
#: Starts a new epoch (an entry ``<epoch + step>-0`` with ``z``), unless the
#: stream is gone or another process moved it already; returns 1 when it did.
#: A process calls it when the stream lost publishes it had delivered (a
#: failover to a replica that had not received them): offsets handed out
#: before would otherwise name other publishes, so they must never validate.
BUMP = (
    _COMMON
    + r"""
local last = last_id(KEYS[1])
if not last then return 0 end
local e = string.match(last, '^(%d+)-')
if e ~= ARGV[1] then return 0 end
local id = string.format('%d', tonumber(e) + tonumber(ARGV[2])) .. '-0'
redis.call('XADD', KEYS[1], id, 'z', '1', 't', now_ms())
return 1
"""
)

#: KEYS: for each topic, its presence sorted set and hash (all in one hash
#: slot on a cluster: the caller groups them).  ARGV: ttl ms, then for each
#: topic: how many entries, and (member, info JSON) for each entry to add or
#: refresh.
PRESENCE_ADD = (
    _COMMON
    + r"""
local ttl = tonumber(ARGV[1])
local expires = now_ms() + ttl
local a = 2
for k = 1, #KEYS, 2 do
  local z, h = KEYS[k], KEYS[k + 1]
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    redis.call('ZADD', z, expires, ARGV[a])
    redis.call('HSET', h, ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  redis.call('PEXPIRE', z, 2 * ttl)
  redis.call('PEXPIRE', h, 2 * ttl)
end
return 1
"""
)

#: KEYS: a topic's presence sorted set and hash.  ARGV: member.
PRESENCE_REMOVE = (
    _COMMON
    + r"""
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""
)

#: KEYS: a topic's presence sorted set and hash.  ARGV: count only (0/1),
#: namespace ('' every namespace).  Drops expired entries first.  Returns the
#: count, or {id, info, ...}.
PRESENCE_READ = (
    _COMMON
    + r"""
local z, h = KEYS[1], KEYS[2]
local count_only, namespace = ARGV[1] == '1', ARGV[2]
prune(z, h, now_ms())
local members = redis.call('ZRANGE', z, 0, -1)
local count, chosen = 0, {}
for _, member in ipairs(members) do
  local id, ns = string.match(member, '^([^\n]*)\n(.*)$')
  if id and (namespace == '' or ns == namespace) then
    count = count + 1
    chosen[#chosen + 1] = member
  end
end
if count_only then return count end
local out = {}
each_chunk(chosen, function(chunk)
  local infos = redis.call('HMGET', h, unpack(chunk))
  for i = 1, #chunk do
    out[#out + 1] = string.match(chunk[i], '^([^\n]*)\n')
    out[#out + 1] = infos[i] or 'null'
  end
end)
return out
"""
)

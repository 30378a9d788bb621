"""The Lua scripts the Redis broker runs: history in Redis Streams, and presence.

Why scripts: a stored publish must get its offset and be published to the
processes in one atomic step, so that the order of the pub/sub messages is
the order of the offsets on every process, and a recovery's read can be
placed exactly between two publishes (see ``READ``).

Keys (``q`` is percent-encoding, the same as :func:`urllib.parse.quote`
with ``safe=''``, so that ':' in a name cannot make two keys collide):

* ``{prefix}:h:{q(namespace)}:{q(topic)}``: the stream of one history.
  Entry ids are ``<epoch>-<seq>``: the epoch is chosen at random when the
  stream is created and kept while it exists (``XADD key <epoch>-*``), the
  sequence counts up by one per publish.  An entry's fields: ``d`` payload,
  ``b`` binary, ``j`` JSON, ``t`` time in ms (for ``history_ttl``).
* ``{prefix}:hn:{q(topic)}``: the namespaces with a history or a subscriber
  of the topic (where a publish without namespace is stored).
* ``{prefix}:servers`` (sorted set: a server process's origin, scored by the
  time its announcement expires, in ms) and ``{prefix}:settings`` (hash:
  origin -> ``"<history_size> <history_ttl ms>"``): the settings of the server
  processes alive now.  Each process announces itself at start and every
  third of ``presence_ttl`` (see ``ANNOUNCE``); a process that stopped counts
  for ``presence_ttl`` more (a restart loses nothing a Publisher publishes
  meanwhile), then its settings are dropped.  A
  :class:`~syncws.pubsub.publisher.Publisher` stores with the live servers'
  settings, and with none when no server is alive: settings a past server
  left can never change what a publish does.
* ``{prefix}:p:{q(namespace)}:{q(topic)}`` (sorted set: entry id, scored by
  its expiry in ms) and ``{prefix}:pi:...`` (hash: entry id -> info JSON):
  presence; ``{prefix}:pn:{q(topic)}``: namespaces with presence.

Times come from Redis' ``TIME``, so machines whose clocks disagree agree on
expiry.  Not for Redis Cluster: keys are built inside the scripts.
"""

from __future__ import annotations

from typing import Any

from ..protocol.payload import Outgoing
from .history import new_epoch


def publish_args(
    prefix: str,
    origin: str,
    namespace: str | None,
    topic: str,
    outgoing: Outgoing,
    exclude_id: str | None = None,
    size: int = -1,
    ttl_ms: int = 0,
    mixed: bool = False,
) -> list[Any]:
    """The ARGV of :data:`PUBLISH`.

    ``size`` -1: the live servers' settings, as a Publisher does.  ``mixed``:
    some live servers keep no history (what the caller's last announcement
    found), so a publish to every namespace also goes out on the
    all-namespaces channel, for them.
    """
    return [
        prefix,
        origin,
        namespace or "",
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
    ]


_COMMON = r"""
local function q(s)
  return (string.gsub(s, '[^%w%-%._~]', function(c) return string.format('%%%02X', string.byte(c)) end))
end
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
local function live_settings(prefix)  -- "<size> <ttl ms>" of every server process alive now
  prune(prefix .. ':servers', prefix .. ':settings', now_ms())
  return redis.call('HVALS', prefix .. ':settings')
end
local function last_id(key)
  local info = redis.pcall('XINFO', 'STREAM', key)
  if type(info) ~= 'table' or info.err then return nil end
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return info[i + 1] end
  end
  return nil
end
"""

#: ARGV: prefix, origin, namespace, has namespace (0/1), topic, binary (0/1),
#: json (0/1), exclude id ('' none), history size (-1: the live servers'
#: settings), ttl ms (0 none), a new epoch, payload, mixed (0/1: some live
#: servers keep no history).  Returns ``{receivers, disagree}``: how many
#: subscriber connections received it, and 1 when ``size`` was -1 and the live
#: servers' settings differ.
#:
#: When servers with and without history share the prefix (a misconfiguration
#: the servers log), a publish to every namespace is stored and published per
#: namespace for the servers with history (header ``k`` "h"), and published
#: once more on the all-namespaces channel for the others (``k`` "p"): each
#: server takes the copy meant for it, so every subscriber gets it once.
PUBLISH = (
    _COMMON
    + r"""
local prefix, origin, namespace, hasns, topic = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1', ARGV[5]
local binary, isjson, exclude = ARGV[6], ARGV[7], ARGV[8]
local size, ttl, epoch, payload = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11], ARGV[12]
local mixed, disagree = ARGV[13] == '1', 0
if size < 0 then  -- a Publisher: the largest size and the longest ttl (0: none) of the live servers
  local with, without, first = 0, 0, nil
  size, ttl = 0, -1
  for _, value in ipairs(live_settings(prefix)) do
    local s, t = string.match(value, '^(%d+) (%d+)$')
    s, t = tonumber(s), tonumber(t)
    if s > 0 then
      with = with + 1
      if s > size then size = s end
      if ttl ~= 0 and (t == 0 or t > ttl) then ttl = t end
    else
      without = without + 1
    end
    if first == nil then first = value elseif value ~= first then disagree = 1 end
  end
  if ttl < 0 then ttl = 0 end
  mixed = with > 0 and without > 0
end
local tq = q(topic)
local head = {v = 1, o = origin, t = topic, b = binary == '1', j = isjson == '1'}
if exclude ~= '' then head.x = exclude end
if size <= 0 then
  local channel = prefix .. ':all:' .. tq
  if hasns then
    head.n = namespace
    channel = prefix .. ':ns:' .. q(namespace) .. ':' .. tq
  end
  return {redis.call('PUBLISH', channel, cjson.encode(head) .. '\n' .. payload), disagree}
end
local spaces_key = prefix .. ':hn:' .. tq
local spaces
if hasns then
  redis.call('SADD', spaces_key, namespace)
  spaces = {namespace}
else
  spaces = redis.call('SMEMBERS', spaces_key)
end
if ttl > 0 then redis.call('PEXPIRE', spaces_key, ttl) end
local now = now_ms()
local received = 0
for _, ns in ipairs(spaces) do
  local nq = q(ns)
  local key = prefix .. ':h:' .. nq .. ':' .. tq
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
  received = received + redis.call('PUBLISH', prefix .. ':ns:' .. nq .. ':' .. tq, cjson.encode(head) .. '\n' .. payload)
end
if mixed and not hasns then
  head.n, head.f, head.k = nil, nil, 'p'
  received = received + redis.call('PUBLISH', prefix .. ':all:' .. tq, cjson.encode(head) .. '\n' .. payload)
end
return {received, disagree}
"""
)

#: ARGV: prefix, origin, lifetime ms, history size, history ttl ms (0 none).
#: A server process says it is alive, with its settings, for the lifetime;
#: returns every live process's settings, its own included (see the keys above).
ANNOUNCE = (
    _COMMON
    + r"""
local prefix, origin, life, size, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local servers, settings = prefix .. ':servers', prefix .. ':settings'
redis.call('ZADD', servers, now_ms() + life, origin)
redis.call('HSET', settings, origin, size .. ' ' .. ttl)
local values = live_settings(prefix)
local last = redis.call('ZRANGE', servers, -1, -1, 'WITHSCORES')[2]  -- the latest expiry
redis.call('PEXPIREAT', servers, last)  -- both keys go when the last process has gone
redis.call('PEXPIREAT', settings, last)
return values
"""
)

#: ARGV: prefix, namespace, topic, since ('' none), ttl ms (0 none), limit
#: (0 none, -1 read no entries: only the newest offset), add the namespace to the topic's set (0/1), marker channel
#: ('' none), marker.  Returns {recovered 0/1, newest offset or '', entries}.
#:
#: The marker is published in the same atomic step as the read: every
#: publish stored before the read reaches this process's subscriber
#: connection before the marker, every later one after it.
READ = (
    _COMMON
    + r"""
local prefix, namespace, topic, since = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, limit, addns, marker_channel, marker = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]
local tq = q(topic)
if addns == '1' then
  local spaces_key = prefix .. ':hn:' .. tq
  redis.call('SADD', spaces_key, namespace)
  if ttl > 0 then redis.call('PEXPIRE', spaces_key, ttl) end
end
local key = prefix .. ':h:' .. q(namespace) .. ':' .. tq
local last = last_id(key)
local recovered, entries = 0, {}
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
    if cutoff == nil or tonumber(field(entry, 't')) >= cutoff then entries[#entries + 1] = entry end
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
end
if marker_channel ~= '' then redis.call('PUBLISH', marker_channel, marker) end
return {recovered, last or '', entries}
"""
)

#: ARGV: prefix, ttl ms, then (namespace, topic, id, info JSON) for each
#: entry to add or refresh.
PRESENCE_ADD = (
    _COMMON
    + r"""
local prefix, ttl = ARGV[1], tonumber(ARGV[2])
local expires = now_ms() + ttl
for i = 3, #ARGV, 4 do
  local ns, topic, id, info = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local suffix = q(ns) .. ':' .. q(topic)
  local z, h, spaces = prefix .. ':p:' .. suffix, prefix .. ':pi:' .. suffix, prefix .. ':pn:' .. q(topic)
  redis.call('ZADD', z, expires, id)
  redis.call('HSET', h, id, info)
  redis.call('SADD', spaces, ns)
  for _, k in ipairs({z, h, spaces}) do redis.call('PEXPIRE', k, 2 * ttl) end
end
return 1
"""
)

#: ARGV: prefix, namespace, topic, id.
PRESENCE_REMOVE = (
    _COMMON
    + r"""
local suffix = q(ARGV[2]) .. ':' .. q(ARGV[3])
redis.call('ZREM', ARGV[1] .. ':p:' .. suffix, ARGV[4])
redis.call('HDEL', ARGV[1] .. ':pi:' .. suffix, ARGV[4])
return 1
"""
)

#: ARGV: prefix, topic, namespace ('' every namespace), count only (0/1).
#: Drops expired entries first.  Returns the count, or {id, info, ...}.
PRESENCE_READ = (
    _COMMON
    + r"""
local prefix, topic, namespace, count_only = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local tq = q(topic)
local spaces
if namespace == '' then
  spaces = redis.call('SMEMBERS', prefix .. ':pn:' .. tq)
else
  spaces = {namespace}
end
local now = now_ms()
local count, out = 0, {}
for _, ns in ipairs(spaces) do
  local suffix = q(ns) .. ':' .. tq
  local z, h = prefix .. ':p:' .. suffix, prefix .. ':pi:' .. suffix
  prune(z, h, now)
  if count_only then
    count = count + redis.call('ZCARD', z)
  else
    local ids = redis.call('ZRANGE', z, 0, -1)
    each_chunk(ids, function(chunk)
      local infos = redis.call('HMGET', h, unpack(chunk))
      for i = 1, #chunk do
        out[#out + 1] = chunk[i]
        out[#out + 1] = infos[i] or 'null'
      end
    end)
  end
end
if count_only then return count end
return out
"""
)

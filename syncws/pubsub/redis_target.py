"""Which Redis a broker URL names, and how to make clients of it.

One parser for every place that takes a broker URL (``--broker``,
``serve(broker=...)``, :class:`~syncws.pubsub.publisher.Publisher`):

* ``redis://[user:password@]host:port/db`` and ``unix:///path?db=0``: one server;
  ``rediss://``: the same over TLS.
* ``redis+sentinel://[user:password@]host:26379,host:26379/<master name>[/db]``:
  the master that Sentinel names, found again after a failover.
  ``rediss+sentinel://`` speaks TLS to the master and to the sentinels.
* ``redis+cluster://[user:password@]host:port[,host:port...]``: a Redis Cluster
  from one or more seed nodes; ``rediss+cluster://`` over TLS.
* ``valkey``, ``valkeys``, ``valkey+sentinel``, ``valkey+cluster`` and
  ``valkeys+...``: the same (Valkey speaks the Redis protocol).

A cluster is named, not detected: a ``redis://`` URL that reaches a node of a
cluster is reported with an error that says to use ``redis+cluster://``
(detecting it would cost a round trip at every start, and a cluster that is
down at start would silently be taken for one server).

Query options (anything else is an error, so a typo is not ignored):
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``
(``required``, ``optional``, ``none``), ``ssl_check_hostname`` (on/off),
``socket_connect_timeout``, ``db`` (unix sockets), ``sentinel_username`` and
``sentinel_password`` (when the sentinels have their own), and
``sharded_pubsub`` (``auto``, ``yes``, ``no``: see :class:`RedisTarget`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..base.errors import ConfigurationError, DependencyMissing


def require_redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the install
        raise DependencyMissing("the Redis broker needs redis-py: pip install 'syncws[redis]'") from None
    return redis


def redis_errors(redis: Any) -> tuple[type[BaseException], ...]:
    """What redis-py raises when Redis is away or refuses: its errors, a cluster's own (not RedisErrors), OSError."""
    return (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


class Topology(enum.Enum):
    SINGLE = "single"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


_SCHEMES: dict[str, tuple[Topology, bool]] = {}
for _family in ("redis", "valkey"):
    _SCHEMES[_family] = (Topology.SINGLE, False)
    _SCHEMES[_family + "s"] = (Topology.SINGLE, True)
    for _kind in (Topology.SENTINEL, Topology.CLUSTER):
        _SCHEMES[f"{_family}+{_kind.value}"] = (_kind, False)
        _SCHEMES[f"{_family}s+{_kind.value}"] = (_kind, True)
_SCHEMES["unix"] = (Topology.SINGLE, False)

#: Every scheme a broker URL may have.
SCHEMES = frozenset(_SCHEMES)


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError("expected yes or no")


def _choice(*allowed: str) -> Any:
    def parse(value: str) -> str:
        if value.lower() not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value.lower()

    return parse


_QUERY: dict[str, Any] = {
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_cert_reqs": _choice("required", "optional", "none"),
    "ssl_check_hostname": _flag,
    "socket_connect_timeout": float,
    "db": int,
    "sentinel_username": str,
    "sentinel_password": str,
    "sharded_pubsub": _choice("auto", "yes", "no"),
}


@dataclass(frozen=True)
class RedisTarget:
    """A parsed broker URL: makes the clients of the threads that talk to Redis.

    ``sharded_pubsub`` matters on a cluster only: ``auto`` (the default) uses
    sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``) when the cluster runs Redis
    7 or newer, ``yes`` always, ``no`` never (classic ``PUBLISH``, which a
    cluster broadcasts to every node).
    """

    topology: Topology
    nodes: tuple[tuple[str, int], ...] = ()
    unix_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    service: str | None = None  # Sentinel's name of the master
    sharded_pubsub: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)  # TLS and socket options for every connection
    sentinel_auth: dict[str, Any] = field(default_factory=dict)
    display: str = ""  # the URL without its password, for logs

    def _common(self, overrides: dict[str, Any]) -> dict[str, Any]:
        common: dict[str, Any] = {"username": self.username, "password": self.password, **self.options}
        if self.tls:
            common["ssl"] = True
        common.update(overrides)
        return common

    def client(self, **overrides: Any) -> Any:
        """A new client (its own connections); ``overrides`` are redis-py connection options."""
        redis = require_redis()
        common = self._common(overrides)
        if self.topology is not Topology.CLUSTER:
            # No retries hidden in redis-py (its constructor's default: 3, backing off for
            # seconds): a broker thread has its own backoff and must report an outage at once.
            common.setdefault("retry", None)
        if self.topology is Topology.CLUSTER:
            from redis.cluster import ClusterNode

            nodes = [ClusterNode(host, port) for host, port in self.nodes]  # type: ignore[no-untyped-call]
            common.pop("health_check_interval", None)
            return redis.RedisCluster(startup_nodes=nodes, **common)
        if self.topology is Topology.SENTINEL:
            sentinel_kwargs = {**self.options, **self.sentinel_auth}
            if self.tls:
                sentinel_kwargs["ssl"] = True
            for name in ("socket_timeout", "socket_connect_timeout"):
                if name in overrides:
                    sentinel_kwargs[name] = overrides[name]
            sentinel = redis.Sentinel(list(self.nodes), sentinel_kwargs=sentinel_kwargs, db=self.db, **common)
            return sentinel.master_for(self.service)
        if self.unix_path is not None:
            common.pop("ssl", None)
            return redis.Redis(unix_socket_path=self.unix_path, db=self.db, **common)
        host, port = self.nodes[0]
        return redis.Redis(host=host, port=port, db=self.db, **common)

    def node_client(self, host: str, port: int, **overrides: Any) -> Any:
        """A client of one node of a cluster (a shard's subscriber connection)."""
        return require_redis().Redis(host=host, port=port, **{"retry": None, **self._common(overrides)})

    def sharded(self, client: Any) -> bool:
        """Whether live delivery uses sharded pub/sub; asks ``client`` for the version when ``auto``."""
        if self.topology is not Topology.CLUSTER or self.sharded_pubsub == "no":
            return False
        if self.sharded_pubsub == "yes":
            return True
        return redis_major(client) >= 7


def redis_major(client: Any) -> int:
    """The major version of the Redis (or Valkey, which reports a compatible one) behind ``client``."""
    info = client.info("server")
    if "redis_version" not in info:  # a cluster client answers per node
        info = next(iter(info.values()))
    return int(str(info["redis_version"]).split(".")[0])


def parse_broker_url(url: str, **options: Any) -> RedisTarget:
    """A :class:`RedisTarget` for ``url``; ConfigurationError with the reason for anything else.

    ``options`` (redis-py connection options such as ``ssl_context`` settings)
    are given to every connection, after the URL's own.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"a broker URL must be a string, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise ConfigurationError(
            f"unsupported broker URL {_hide_password(url)!r}: expected redis://, rediss://, unix://, "
            "redis+sentinel://, redis+cluster:// (or valkey:// and the same variants)"
        )
    topology, tls = _SCHEMES[scheme]
    parts = urlsplit("x://" + rest)
    query = _parse_query(url, parts.query)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)
    fields: dict[str, Any] = {
        "topology": topology,
        "username": username,
        "password": password,
        "tls": tls,
        "display": _hide_password(url),
        "sharded_pubsub": query.pop("sharded_pubsub", "auto"),
        "sentinel_auth": {
            key[len("sentinel_") :]: query.pop(key)
            for key in ("sentinel_username", "sentinel_password")
            if key in query
        },
    }
    db = query.pop("db", None)
    fields["options"] = {**query, **options}
    if scheme == "unix":
        if not parts.path:
            raise ConfigurationError(f"broker URL {fields['display']!r} names no socket path")
        return RedisTarget(unix_path=unquote(parts.path), db=db or 0, **fields)
    return _networked(topology, hostlist, [unquote(p) for p in parts.path.split("/") if p], db, fields)


def _networked(topology: Topology, hostlist: str, path: list[str], db: Any, fields: dict[str, Any]) -> RedisTarget:
    """The target of a URL with hosts: one server, a Sentinel group (a master's name) or a cluster."""
    nodes = _nodes(hostlist, 26379 if topology is Topology.SENTINEL else 6379, fields["display"])
    if topology is Topology.SINGLE:
        if len(nodes) > 1:
            raise ConfigurationError(
                f"broker URL {fields['display']!r} names several hosts: use redis+cluster:// or redis+sentinel://"
            )
        return RedisTarget(nodes=nodes, db=_db(path[:1], db, fields["display"]), **fields)
    if topology is Topology.SENTINEL:
        if not path:
            raise ConfigurationError(
                f"broker URL {fields['display']!r} names no master: redis+sentinel://host:26379/<master name>"
            )
        return RedisTarget(nodes=nodes, service=path[0], db=_db(path[1:2], db, fields["display"]), **fields)
    if _db(path[:1], db, fields["display"]) != 0:
        raise ConfigurationError(f"broker URL {fields['display']!r}: a Redis Cluster has database 0 only")
    return RedisTarget(nodes=nodes, **fields)


def _parse_query(url: str, query: str) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        parser = _QUERY.get(name)
        if parser is None:
            raise ConfigurationError(
                f"unknown broker URL option {name!r} in {_hide_password(url)!r}; known: {', '.join(sorted(_QUERY))}"
            )
        try:
            parsed[name] = parser(value)
        except ValueError as exc:
            raise ConfigurationError(f"broker URL option {name}={value!r}: {exc}") from None
    return parsed


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, _, password = userinfo.partition(":")  # redis://user@host: a user without password, as redis-py reads it
    return unquote(user) or None, unquote(password) or None


def _nodes(hostlist: str, default_port: int, display: str) -> tuple[tuple[str, int], ...]:
    nodes = []
    for item in hostlist.split(","):
        if not item:
            raise ConfigurationError(f"broker URL {display!r} has an empty host")
        if item.startswith("["):  # [::1]:6379
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.lstrip(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ConfigurationError(f"broker URL {display!r} has a bad port in {item!r}") from None
        if not 0 < port < 65536:
            raise ConfigurationError(f"broker URL {display!r} has a bad port in {item!r}")
        nodes.append((host, port))
    return tuple(nodes)


def _db(path: list[str], db: int | None, display: str) -> int:
    if path:
        try:
            return int(path[0])
        except ValueError:
            raise ConfigurationError(f"broker URL {display!r}: {path[0]!r} is not a database number") from None
    return db or 0


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not at or not colon or "/" in userinfo:
        return url
    return f"{scheme}{sep}{user}:***@{hosts}"

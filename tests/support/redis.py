"""A private redis-server for the broker tests."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from ..conftest import wait_until
from .processes import free_port


class RedisServer:
    """A private redis-server on 127.0.0.1 that keeps nothing on disk.

    ``with RedisServer() as server:`` starts it on a free port, waits until it
    answers PING, and stops it.  ``kill()`` is kill -9; ``start()`` brings it
    back on the same port.  A missing redis-server fails the test, it never
    skips it (``bash scripts/test`` installs it).
    """

    def __init__(self, workdir: Path | None = None, port: int | None = None, *extra: str) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed: these tests need it (bash scripts/test installs it)")
        self.executable = executable
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.extra = list(extra)  # more redis-server arguments (cluster, TLS, ACL)
        self.ping_options: dict = {}  # how to reach it to check it answers (TLS, a password)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **options) -> redis.Redis:
        """A client of this server; replies are decoded to str unless ``options`` say otherwise."""
        options = {"socket_timeout": 5, "decode_responses": True, **options}
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def start(self) -> RedisServer:
        """Start it (again, on the same port) and wait until it answers PING; fail if it does not."""
        args = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.workdir is not None:
            args += ["--dir", str(self.workdir)]
        args += self.extra
        self.proc = proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client(socket_timeout=1, socket_connect_timeout=1, **self.ping_options)

        def answers() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"redis-server exited with {proc.returncode} (port {self.port} taken?)")
            try:
                return client.ping()
            except redis.RedisError:
                return False

        try:
            if not wait_until(answers, timeout=10):
                self.stop()
                pytest.fail(f"redis-server did not answer PING on port {self.port}")
        finally:
            client.close()
        return self

    def kill(self) -> None:
        """kill -9: no goodbye to any client."""
        assert self.proc is not None, "not started"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, on free ports.

    Made with ``redis-cli --cluster create``, with a short ``cluster-node-timeout``
    (1 s) so that a killed master's replica takes over within a few seconds.
    Nothing is kept on disk: each node has a directory of its own for its
    ``nodes.conf``.
    """

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 1) -> None:
        self.nodes: list[RedisServer] = []
        for _ in range(masters * (1 + replicas)):
            port = _cluster_port()
            folder = workdir / f"node{port}"
            folder.mkdir()
            node = RedisServer(
                folder, port, "--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
                "--cluster-config-file", "nodes.conf", "--cluster-replica-validity-factor", "0",
                "--repl-diskless-sync-delay", "0",
            )  # fmt: skip
            self.nodes.append(node)
        self.replicas = replicas

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:2])

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not installed: the cluster tests need it (bash scripts/test installs it)")
        result = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            self.stop()
            pytest.fail(f"redis-cli --cluster create failed: {result.stdout}{result.stderr}")
        if not wait_until(self.healthy, timeout=30, interval=0.2):
            self.stop()
            pytest.fail("the Redis Cluster did not become healthy")
        return self

    def healthy(self) -> bool:
        """Every slot is served and every node that runs agrees (CLUSTER INFO: ok)."""
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            try:
                info = node.client(socket_timeout=1).cluster("info")
            except redis.RedisError:
                return False
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                return False
            replication = node.client(socket_timeout=1).info("replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return False  # a replica that has not synced would lose everything in a failover
        return True

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, decode_responses=True, socket_timeout=5)

    def masters(self) -> list[RedisServer]:
        """The nodes that are masters now (a failover changes them)."""
        found = []
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            try:
                if node.client(socket_timeout=1).info("replication")["role"] == "master":
                    found.append(node)
            except redis.RedisError:
                continue
        return found

    def master_of(self, key: str) -> RedisServer:
        """The node that is master of ``key``'s slot now (from CLUSTER NODES, as a live master sees it)."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        lines = self.masters()[0].client(socket_timeout=1).execute_command("CLUSTER", "NODES")
        for line in lines.splitlines():
            parts = line.split()
            if "master" not in parts[2] or "fail" in parts[2]:
                continue
            for spec in parts[8:]:
                low, _, high = spec.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
                    return next(node for node in self.nodes if node.port == port)
        pytest.fail(f"no master serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _cluster_port() -> int:
    """A free port whose cluster bus port (itself + 10000) is free and valid too."""
    import socket

    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    pytest.fail("no free port pair for a cluster node")


class SentinelGroup:
    """One master, one replica and three sentinels watching it as ``mymaster`` (quorum 2).

    ``down-after-milliseconds`` 1000 and ``failover-timeout`` 3000, so a killed
    master's replica is promoted within a few seconds.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.master = RedisServer(workdir, None, "--repl-diskless-sync-delay", "0")
        self.replica = RedisServer(workdir, None, "--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports) + "/mymaster"

    def start(self) -> SentinelGroup:
        self.master.start()
        self.replica.start()
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {self.master.port} 2\n"
                "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 3000\n"
                "sentinel parallel-syncs mymaster 1\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [self.master.executable, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        sentinel = redis.Sentinel([("127.0.0.1", port) for port in self.sentinel_ports], socket_timeout=1)

        def ready() -> bool:
            try:
                master = sentinel.discover_master("mymaster")
                replicas = sentinel.discover_slaves("mymaster")
            except redis.RedisError:
                return False
            link = self.replica.client(socket_timeout=1).info("replication").get("master_link_status")
            return master[1] == self.master.port and len(replicas) == 1 and link == "up"

        if not wait_until(ready, timeout=30, interval=0.2):
            self.stop()
            pytest.fail("the Sentinel group did not see its master and replica")
        return self

    def current_master(self) -> int:
        sentinel = redis.Sentinel([("127.0.0.1", port) for port in self.sentinel_ports], socket_timeout=1)
        return int(sentinel.discover_master("mymaster")[1])

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.terminate()
        for proc in self.sentinels:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.master.stop()
        self.replica.stop()

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

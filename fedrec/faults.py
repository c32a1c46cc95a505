"""Simulated faults: which sampled clients crash, straggle, lose their reply or sit on a
failed node in a training round (pure; no flwr import).

The plan of a round is a pure function of ``(run seed, round, client)`` (and of the node's
partition id for node failures), so the node that simulates a fault and the server that
accounts for it compute the same plan independently, on every runtime, whatever the order
of the messages. Each client draws from its own generator
(:func:`fedrec.seeding.rng` of ``(seed, "faults", round, client)``), so its fate does not
depend on which other clients were sampled.

Kinds, checked in this order (a client gets at most one):

- **node** (``faults.node-failure``): the client's node (partition ``c mod N``) fails for the
  round; it answers the message with an error, none of its clients replies.
- **crash** (``faults.crash``): the client crashes before training; its private state is
  unchanged and it sends nothing.
- **timeout**: a straggler (``faults.straggler``) is delayed by an exponential time of mean
  ``faults.straggler-delay``; a delay above ``faults.deadline`` times it out: it trained and
  kept its new state, but the server closed the round without its reply. A straggler within
  the deadline replies normally (with ``faults.sleep`` its node really waits that long).
- **drop** (``faults.drop``): the client trained and kept its new state; the reply is lost.

Faults apply to ``train`` messages (the rounds' training phase). Evaluation is not faulted,
so the metrics of a faulty run and of a fault-free run are measured on the same clients.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from fedrec.seeding import rng

KINDS = ("node", "crash", "timeout", "drop")
#: the error a failed node answers with (the server does not count it as a failure)
NODE_FAILURE = "simulated node failure (faults.node-failure)"


@dataclass(frozen=True)
class FaultPlan:
    """The faults of one round: client id -> kind, and each straggler's delay (seconds)."""

    kinds: dict[int, str] = field(default_factory=dict)
    delays: dict[int, float] = field(default_factory=dict)

    def of(self, kind: str) -> list[int]:
        return sorted(c for c, k in self.kinds.items() if k == kind)

    def untrained(self) -> set[int]:
        """Clients that do not run their local training (crashed, or on a failed node)."""
        return {c for c, k in self.kinds.items() if k in ("node", "crash")}

    def silent(self) -> set[int]:
        """Clients whose reply never reaches the server (every faulted client)."""
        return set(self.kinds)

    def counts(self) -> dict[str, int]:
        return {k: sum(1 for v in self.kinds.values() if v == k) for k in KINDS}


def active(faults) -> bool:
    """Whether a ``faults`` config section simulates anything."""
    return bool(faults.crash or faults.drop or faults.straggler or faults.node_failure)


def plan(faults, seed: int, server_round: int, clients: Iterable[int], num_nodes: int) -> FaultPlan:
    """The :class:`FaultPlan` of ``clients`` in ``server_round`` (module docstring);
    ``faults`` is the config section (``cfg.faults``), ``num_nodes`` the number of node
    partitions (client ``c`` lives on partition ``c mod num_nodes``)."""
    kinds: dict[int, str] = {}
    delays: dict[int, float] = {}
    if not active(faults):
        return FaultPlan(kinds, delays)
    failed_nodes: dict[int, bool] = {}
    for c in sorted(set(int(c) for c in clients)):
        node = c % max(1, num_nodes)
        if node not in failed_nodes:
            failed_nodes[node] = bool(
                rng(seed, "faults-node", server_round, node).random() < faults.node_failure
            )
        g = rng(seed, "faults", server_round, c)
        u_crash, u_straggle, u_drop = g.random(3)
        delay = float(g.exponential(faults.straggler_delay))
        if failed_nodes[node]:
            kinds[c] = "node"
        elif u_crash < faults.crash:
            kinds[c] = "crash"
        elif u_straggle < faults.straggler:
            delays[c] = delay
            if delay > faults.deadline:
                kinds[c] = "timeout"
            elif u_drop < faults.drop:
                kinds[c] = "drop"
        elif u_drop < faults.drop:
            kinds[c] = "drop"
    return FaultPlan(kinds, delays)


def node_failed(fault_plan: FaultPlan, clients: Iterable[int]) -> bool:
    """Whether the node hosting ``clients`` failed (all of them are marked ``node``)."""
    cs = list(clients)
    return bool(cs) and all(fault_plan.kinds.get(c) == "node" for c in cs)


__all__ = ["KINDS", "NODE_FAILURE", "FaultPlan", "active", "node_failed", "plan"]

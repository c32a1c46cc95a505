"""Names shared by the server and client sides of the fedrec message protocol.

Pure constants and helpers (no flwr import). A message from the server carries:

- ``"fedrec"`` (ConfigRecord): ``run-config`` (the flat run config as JSON), ``clients``
  (the logical client ids the node should act for), ``round``;
- ``"arrays"`` (ArrayRecord, optional): the global model;
- ``"config"`` (ConfigRecord): per-phase settings of the strategy.

A node's reply carries ``"fedrec"`` (``clients``, ``node-partition``) and, per
logical client ``c``, ``"arrays.c"`` (optional) and ``"metrics.c"``. The server
unpacks replies into one :class:`ClientReply` per logical client, sorted by id, so
a node hosting many clients is indistinguishable from many nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FEDREC = "fedrec"
ARRAYS = "arrays"
CONFIG = "config"
HELLO = "query.fedrec_hello"
_ACTION = re.compile(r"^[A-Za-z_]\w*$")


def arrays_key(client_id: int) -> str:
    return f"arrays.{client_id}"


def metrics_key(client_id: int) -> str:
    return f"metrics.{client_id}"


def state_key(client_id: int) -> str:
    return f"fedrec-state.{client_id}"


def check_action(action: str) -> str:
    """Validate a plugin's extra-phase action name (a Python identifier)."""
    if not _ACTION.match(action):
        raise ValueError(f"action '{action}' must be a Python identifier (e.g. myplugin_stats)")
    return action


def hosted_clients(node_partition: int, num_node_partitions: int, num_clients: int) -> list[int]:
    """Logical clients hosted by node ``node_partition`` of ``num_node_partitions``.

    Client ``c`` lives on node ``c mod num_node_partitions``; with one node per client
    this is the identity.
    """
    if num_node_partitions <= 0 or not 0 <= node_partition < num_node_partitions:
        raise ValueError(f"bad node partition {node_partition} of {num_node_partitions}")
    return list(range(node_partition, num_clients, num_node_partitions))


@dataclass
class ClientReply:
    """One logical client's reply to one message phase."""

    client_id: int
    node_id: int
    metrics: dict[str, Any]
    weights: list[np.ndarray] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return int(self.metrics.get("num-examples", 0))

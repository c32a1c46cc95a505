"""Names shared by the server and client sides of the fedrec message protocol.

Pure constants and helpers (no flwr import). A message from the server carries:

- ``"fedrec"`` (ConfigRecord): ``run-config`` (the flat run config as JSON), ``clients``
  (the logical client ids the node should act for), ``round``;
- ``"arrays"`` (ArrayRecord, optional): the global model;
- ``"config"`` (ConfigRecord): per-phase settings of the strategy (scalars, strings);
- ``"config-arrays"`` (ArrayRecord, optional): the settings that are numpy arrays
  (broadcast maps, priors, item lists), never sent as ConfigRecord lists
  (:func:`split_config`); the ClientApp merges both into one ``config`` dict.

A node's reply carries ``"fedrec"`` (``clients``, ``node-partition``) and one
ArrayRecord ``"replies"`` holding the replies of all the clients it acted for **by
column** (:func:`pack_replies`): a client-id column, and per returned array slot and
per metric key one array of all clients' values with an ``indptr`` (which rows belong
to which client) and a presence mask. One array per field, not one record per client:
the per-record cost of Flower's machinery dominated the compute at 943 clients. The
server unpacks a reply into one :class:`ClientReply` per logical client
(:func:`unpack_replies`), sorted by id, so a node hosting many clients is
indistinguishable from many nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FEDREC = "fedrec"
ARRAYS = "arrays"
CONFIG = "config"
REPLIES = "replies"
# keys of the "fedrec" head record (server -> client) and of a reply's head
RUN_CONFIG = "run-config"
CLIENTS = "clients"
ROUND = "round"
STRATEGY = "strategy"
NODE_PARTITION = "node-partition"
NUM_NODE_PARTITIONS = "num-node-partitions"
CONFIG_ARRAYS = "config-arrays"
HELLO = "query.fedrec_hello"
# the framework's unlearning actions (fedrec.unlearning): the request poll and the node's
# client-state operations (save / load / reset / forget)
UNLEARN_POLL = "query.fedrec_unlearn_poll"
STATE_ACTION = "query.fedrec_state"
_ACTION = re.compile(r"^[A-Za-z_]\w*$")


STATE = "fedrec-state"  # the node's columnar client state (fedrec.state.StateStore)


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(scalars, arrays)``: numpy-array values travel as arrays, everything else in the
    ConfigRecord."""
    scalars = {k: v for k, v in config.items() if not isinstance(v, np.ndarray)}
    arrays = {k: v for k, v in config.items() if isinstance(v, np.ndarray)}
    return scalars, arrays


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

    def arrays(self) -> list[np.ndarray]:
        """The reply's arrays; a clear error when the client sent none."""
        if self.weights is None:
            raise ValueError(
                f"client {self.client_id} (node {self.node_id}) replied without "
                "arrays where its strategy expects them"
            )
        return self.weights

    @property
    def num_examples(self) -> int:
        return int(self.metrics.get("num-examples", 0))


# ---------------------------------------------------------------- columnar replies
# Column names inside the ``replies`` ArrayRecord. ``w{i}.*``: the i-th returned array of
# each client; ``m.{key}.*``: metric ``key``. ``.v`` values (rows of all clients that
# have it, in client order), ``.p`` indptr over *all* clients, ``.has`` presence mask,
# ``.k`` kind (0 scalar, 1 list/array, 2 0-d array).
CLIENTS_COL = "clients"
_SCALAR, _LIST, _ZERO_D = 0, 1, 2


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float, np.integer, np.floating, np.bool_))


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0,))


def pack_replies(
    results: dict[int, tuple[list[np.ndarray] | None, dict[str, Any]]],
) -> dict[str, np.ndarray]:
    """Per-client ``(arrays or None, metrics)`` -> a flat dict of columns (see above).

    Metric values are ints/floats/bools or lists/arrays of them; arrays keep their dtype,
    lists become int64 (all ints) or float64 arrays. Array slot ``i`` of all clients must
    share dtype and trailing shape (they are concatenated along axis 0).
    """
    cids = sorted(results)
    out: dict[str, np.ndarray] = {CLIENTS_COL: np.asarray(cids, dtype=np.int64)}
    n_arrays = {len(results[c][0] or ()) for c in cids if results[c][0] is not None}
    if len(n_arrays) > 1:
        raise ValueError(f"clients of one reply return different numbers of arrays: {n_arrays}")
    has_w = np.array([results[c][0] is not None for c in cids], dtype=bool)
    out["w.has"] = has_w
    for i in range(n_arrays.pop() if n_arrays else 0):
        parts, lengths, zero_d = [], [], False
        for c in cids:
            w = results[c][0]
            if w is None:
                lengths.append(0)
                continue
            a = np.asarray(w[i])
            if a.ndim == 0:
                zero_d, a = True, a.reshape(1)
            parts.append(a)
            lengths.append(len(a))
        out[f"w{i}.v"] = _stack(parts)
        out[f"w{i}.p"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        out[f"w{i}.k"] = np.asarray([_ZERO_D if zero_d else _LIST])
    keys = sorted({k for c in cids for k in results[c][1]})
    for k in keys:
        has = np.array([k in results[c][1] for c in cids], dtype=bool)
        vals = [results[c][1][k] for c in cids if k in results[c][1]]
        if all(_is_scalar(v) for v in vals):
            integral = all(isinstance(v, (bool, int, np.integer, np.bool_)) for v in vals)
            out[f"m.{k}.v"] = np.asarray(vals, dtype=np.int64 if integral else np.float64)
            out[f"m.{k}.k"] = np.asarray([_SCALAR])
        else:
            arrs = []
            for v in vals:
                if _is_scalar(v):
                    raise ValueError(
                        f"metric '{k}' is a scalar for some clients and a list for others"
                    )
                a = np.asarray(v)
                if a.dtype == object or a.dtype.kind not in "biuf":
                    raise ValueError(f"metric '{k}' must hold numbers, got {a.dtype}")
                if not isinstance(v, np.ndarray) and a.dtype.kind in "biu":
                    a = a.astype(np.int64)
                elif not isinstance(v, np.ndarray):
                    a = a.astype(np.float64)
                arrs.append(a.ravel())
            m_lengths = np.zeros(len(cids), dtype=np.int64)
            m_lengths[has] = [len(a) for a in arrs]
            dtypes = {a.dtype for a in arrs if len(a)}
            dt = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float64)
            v_all = (
                np.concatenate([a.astype(dt, copy=False) for a in arrs]) if arrs else np.zeros(0)
            )
            out[f"m.{k}.v"] = v_all
            out[f"m.{k}.p"] = np.concatenate([[0], np.cumsum(m_lengths)]).astype(np.int64)
            out[f"m.{k}.k"] = np.asarray([_LIST])
        out[f"m.{k}.has"] = has
    return out


@dataclass
class ReplyColumns:
    """The replies of a cohort, already by column (a client half may return this from
    ``handle_cohort`` instead of a per-client dict; same wire format as
    :func:`pack_replies`).

    ``clients`` (C,) sorted ids; ``arrays``: per returned array slot ``(values, indptr)``
    (client ``i`` owns ``values[indptr[i]:indptr[i+1]]``), or None when no client returns
    arrays; ``metrics``: per key either a ``(C,)`` column of scalars or ``(values, indptr)``
    of per-client arrays.
    """

    clients: np.ndarray
    arrays: list[tuple[np.ndarray, np.ndarray]] | None
    metrics: dict[str, Any]

    def to_arrays(self) -> dict[str, np.ndarray]:
        n = len(self.clients)
        out: dict[str, np.ndarray] = {CLIENTS_COL: np.asarray(self.clients, dtype=np.int64)}
        out["w.has"] = np.full(n, self.arrays is not None, dtype=bool)
        for i, (v, p) in enumerate(self.arrays or []):
            out[f"w{i}.v"], out[f"w{i}.p"] = np.asarray(v), np.asarray(p, dtype=np.int64)
            out[f"w{i}.k"] = np.asarray([_LIST])
        for k in sorted(self.metrics):
            m = self.metrics[k]
            if isinstance(m, tuple):
                v, p = m
                out[f"m.{k}.v"], out[f"m.{k}.p"] = np.asarray(v), np.asarray(p, dtype=np.int64)
                out[f"m.{k}.k"] = np.asarray([_LIST])
            else:
                col = np.asarray(m)
                out[f"m.{k}.v"] = col.astype(np.int64 if col.dtype.kind in "biu" else np.float64)
                out[f"m.{k}.k"] = np.asarray([_SCALAR])
            out[f"m.{k}.has"] = np.ones(n, dtype=bool)
        return out

    def as_dict(self) -> dict[int, tuple[list[np.ndarray] | None, dict[str, Any]]]:
        """The per-client form: client id -> (arrays or None, metrics)."""
        return {c: (w, m) for c, w, m in unpack_replies(self.to_arrays())}


def unpack_replies(
    cols: dict[str, np.ndarray],
) -> list[tuple[int, list[np.ndarray] | None, dict[str, Any]]]:
    """Inverse of :func:`pack_replies`: ``(client_id, arrays or None, metrics)`` per client.

    Scalar metrics come back as Python ``int``/``float``; list metrics as numpy arrays
    (slices of the column: no per-element conversion).
    """
    cids = [int(c) for c in cols[CLIENTS_COL]]
    n = len(cids)
    has_w = cols["w.has"]
    slots = sorted(int(k[1:-2]) for k in cols if k.startswith("w") and k.endswith(".v"))
    weights: list[list[np.ndarray] | None] = [[] if has_w[j] else None for j in range(n)]
    for i in slots:
        v, p, zero_d = cols[f"w{i}.v"], cols[f"w{i}.p"], int(cols[f"w{i}.k"][0]) == _ZERO_D
        for j in range(n):
            wj = weights[j]
            if wj is not None:
                a = v[int(p[j]) : int(p[j + 1])]
                wj.append(a.reshape(()) if zero_d else a)
    metrics: list[dict[str, Any]] = [{} for _ in range(n)]
    keys = sorted({k[2:-2] for k in cols if k.startswith("m.") and k.endswith(".v")})
    for k in keys:
        v, has, kind = cols[f"m.{k}.v"], cols[f"m.{k}.has"], int(cols[f"m.{k}.k"][0])
        if kind == _SCALAR:
            vals = v.tolist()
            for row, x in zip(np.flatnonzero(has), vals):
                metrics[int(row)][k] = x
        else:
            p = cols[f"m.{k}.p"]
            for row in np.flatnonzero(has):
                metrics[int(row)][k] = v[int(p[row]) : int(p[row + 1])]
    return [(c, w, m) for c, w, m in zip(cids, weights, metrics)]

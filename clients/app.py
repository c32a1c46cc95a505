"""The one fedrec ClientApp (Flower Message API).

``app`` routes every message to the client half of the strategy named in the
message (resolved through the node's own plugin registry, so one name selects both
halves): ``query.fedrec_hello`` (handshake), ``train``, ``evaluate`` and any
plugin action ``query.<action>``. A node acts for the logical clients the server
names (its node-config ``partition-id`` of ``num-partitions`` decides which it
hosts); the private state of all clients it hosts lives in ``context.state`` as one
columnar record (:mod:`fedrec.state`) and never leaves the node. Replies are columnar
too (:func:`fedrec.protocol.pack_replies`). An optional node-config ``data-dir`` sets where the
node reads raw datasets (``FEDREC_DATA_DIR``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedrec import protocol
from fedrec.config import RunConfig, validate
from fedrec.errors import FedrecError
from fedrec.plugins import import_object, load_strategy
from fedrec.state import StateStore

from .base import ClientHalf, Weights


@functools.lru_cache(maxsize=16)
def _config(run_config_json: str) -> RunConfig:
    return validate(json.loads(run_config_json))


@functools.lru_cache(maxsize=16)
def _half_class(strategy_name: str) -> type[ClientHalf]:
    return import_object(load_strategy(strategy_name).client_half)


def node_partition(context: Context) -> tuple[int, int]:
    nc = context.node_config
    if "partition-id" not in nc or "num-partitions" not in nc:
        raise FedrecError(
            "node config lacks 'partition-id'/'num-partitions'; start the "
            'SuperNode with --node-config "partition-id=K num-partitions=N"'
        )
    return int(nc["partition-id"]), int(nc["num-partitions"])


def _load_store(context: Context) -> StateStore:
    """The node's columnar client state (one ArrayRecord, four arrays per field)."""
    records = context.state.array_records  # a typed view is rebuilt per access: once
    if protocol.STATE not in records:
        return StateStore()
    rec = records[protocol.STATE]
    return StateStore.from_arrays({k: rec[k].numpy() for k in rec})


def _save_store(context: Context, store: StateStore) -> None:
    context.state[protocol.STATE] = _array_record(store.to_arrays())


def _array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _np_arrays(weights: Sequence[Any] | None) -> list[np.ndarray] | None:
    return None if weights is None else [np.asarray(w) for w in weights]


def handle(message: Message, context: Context) -> Message:
    """Dispatch one message to the client halves of the logical clients it names."""
    if "data-dir" in context.node_config:
        os.environ["FEDREC_DATA_DIR"] = str(context.node_config["data-dir"])
    head = message.content.config_records[protocol.FEDREC]
    cfg = _config(str(head[protocol.RUN_CONFIG]))
    half_cls = _half_class(str(head[protocol.STRATEGY]))
    pid, nparts = node_partition(context)
    hosted = protocol.hosted_clients(pid, nparts, cfg.partition.num_clients)
    mtype = message.metadata.message_type
    rnd = int(cast(int, head[protocol.ROUND]))
    if mtype == protocol.HELLO:
        clients = hosted
    else:
        clients = [int(c) for c in cast(list[int], head[protocol.CLIENTS])]
        stray = sorted(set(clients) - set(hosted))
        if stray:
            raise FedrecError(f"node partition {pid}/{nparts} does not host clients {stray}")
    content = message.content
    weights = (
        content.array_records[protocol.ARRAYS].to_numpy_ndarrays()
        if protocol.ARRAYS in content.array_records
        else None
    )
    config: dict[str, Any] = (
        dict(content.config_records[protocol.CONFIG])
        if protocol.CONFIG in content.config_records
        else {}
    )
    if protocol.CONFIG_ARRAYS in content.array_records:
        rec = content.array_records[protocol.CONFIG_ARRAYS]
        config.update({k: rec[k].numpy() for k in rec})
    reply = RecordDict(
        {
            protocol.FEDREC: ConfigRecord(
                {
                    protocol.CLIENTS: clients,
                    protocol.NODE_PARTITION: pid,
                    protocol.NUM_NODE_PARTITIONS: nparts,
                }
            )
        }
    )
    store = _load_store(context)
    states = store.cohort(clients)
    results = half_cls.handle_cohort(cfg, mtype, rnd, weights, config, states)
    if results is None:
        results = {}
        for c in clients:
            half = half_cls(cfg, c, states.load(c))
            if mtype == protocol.HELLO:
                results[c] = (None, half.hello())
            elif mtype == "train":
                # train/evaluate messages carry the global weights (FedrecStrategy round loop)
                results[c] = half.fit(rnd, cast(Weights, weights), config)
            elif mtype == "evaluate":
                results[c] = (None, half.evaluate(rnd, cast(Weights, weights), config))
            elif mtype.startswith("query."):
                results[c] = half.query(mtype.split(".", 1)[1], rnd, weights, config)
            else:
                raise FedrecError(f"unsupported message type '{mtype}'")
            states.save(c, half.state)
    if isinstance(results, protocol.ReplyColumns):
        got = [int(c) for c in results.clients]
    else:
        got = list(results)
    missing = sorted(set(clients) - set(got))
    if missing:
        raise FedrecError(f"{half_cls.__name__} returned no reply for clients {missing[:10]}")
    if isinstance(results, protocol.ReplyColumns):
        columns = results.to_arrays()
    else:
        columns = protocol.pack_replies(
            {c: (_np_arrays(results[c][0]), results[c][1]) for c in clients}
        )
    reply[protocol.REPLIES] = _array_record(columns)
    if states.commit():
        _save_store(context, store)
    return Message(reply, reply_to=message)


class FedrecClientApp(ClientApp):
    """A ClientApp that routes every ``train``/``evaluate``/``query.*`` message
    (including plugins' actions, unknown at import time) to :func:`handle`."""

    def __call__(self, message: Message, context: Context) -> Message:
        with self._lifespan(context):
            return handle(message, context)


app = FedrecClientApp()

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
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedrec import faults, protocol
from fedrec.config import RunConfig, validate
from fedrec.errors import FedrecError
from fedrec.plugins import import_object, load_strategy
from fedrec.state import StateStore

from .base import ClientHalf, Weights

log = logging.getLogger(__name__)


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
    mtype = message.metadata.message_type
    # a state action of an honest run needs no client half (a process that only saves or
    # loads its clients' state does not import the strategy's model code: torch)
    half_cls: Any = (
        None
        if mtype == protocol.STATE_ACTION and cfg.attack.kind == "none"
        else _half_class(str(head[protocol.STRATEGY]))
    )
    pid, nparts = node_partition(context)
    hosted = protocol.hosted_clients(pid, nparts, cfg.partition.num_clients)
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
    fault_plan = None
    if mtype == "train" and faults.active(cfg.faults):
        # simulated faults (fedrec.faults): the same seeded plan the server accounts with
        fault_plan = faults.plan(cfg.faults, cfg.seed, rnd, clients, nparts)
        if faults.node_failed(fault_plan, clients):
            raise FedrecError(f"{faults.NODE_FAILURE} in round {rnd}")
        clients = [c for c in clients if c not in fault_plan.untrained()]
        if not clients:  # every client of this message crashed
            reply[protocol.REPLIES] = _array_record(protocol.pack_replies({}))
            return Message(reply, reply_to=message)
    store = _load_store(context)
    if mtype == protocol.STATE_ACTION:  # node-level: save / load the whole store
        loaded = _state_action(context, store, config, pid, nparts)
        if loaded is not None:
            store = loaded
            _save_store(context, store)
    adversarial: dict[int, Any] = {}
    if cfg.attack.kind != "none" and mtype != protocol.STATE_ACTION:
        # an attack run: the adversarial role of the configured clients (fedrec.clients.attacks)
        from fedrec.clients.attacks import route

        results, adversarial, committed = route(
            cfg, half_cls, mtype, rnd, weights, config, store, clients
        )
        if committed:
            _save_store(context, store)
    else:
        states = store.cohort(clients)
        results = run_half(cfg, half_cls, mtype, rnd, weights, config, states, clients)
        if states.commit():
            _save_store(context, store)
    if isinstance(results, protocol.ReplyColumns):
        got = [int(c) for c in results.clients]
    else:
        got = list(results)
    missing = sorted(set(clients) - set(got) - set(adversarial))
    if missing and cfg.attack.kind == "none":
        who = half_cls.__name__ if half_cls is not None else mtype
        raise FedrecError(f"{who} returned no reply for clients {missing[:10]}")
    if fault_plan is not None:
        results, adversarial = _apply_faults(cfg, fault_plan, results, adversarial)
        clients = [c for c in clients if c not in fault_plan.silent()]
    if isinstance(results, protocol.ReplyColumns):
        columns = results.to_arrays()
    else:
        columns = protocol.pack_replies(
            {c: (_np_arrays(results[c][0]), results[c][1]) for c in clients if c in results}
        )
    # each adversarial client's reply travels in its own record, as it would from its own
    # SuperNode: whatever it holds cannot spoil the replies of the clients beside it
    for c, (arrays, metrics) in sorted(adversarial.items()):
        try:
            reply[f"{protocol.REPLIES}.{c}"] = _array_record(
                protocol.pack_replies({c: (_np_arrays(arrays), metrics)})
            )
        except Exception as exc:  # noqa: BLE001 - an unpackable reply is the client's loss
            log.warning("client %s: reply not sent (%s)", c, exc)
    reply[protocol.REPLIES] = _array_record(columns)
    return Message(reply, reply_to=message)


def _apply_faults(cfg, fault_plan, results, adversarial):
    """The replies that survive ``fault_plan``: lost (``drop``) and timed-out replies are
    removed after training (the clients kept their new state); with ``faults.sleep`` the
    node waits for its slowest straggler within the deadline."""
    lost = fault_plan.silent()
    if cfg.faults.sleep:
        if fault_plan.delays:  # the node waits for its slowest straggler, or the deadline
            time.sleep(min(max(fault_plan.delays.values()), cfg.faults.deadline))
    adversarial = {c: v for c, v in adversarial.items() if c not in lost}
    if isinstance(results, protocol.ReplyColumns):
        results = results.as_dict()
    return {c: v for c, v in results.items() if c not in lost}, adversarial


def run_half(cfg, half_cls, mtype, rnd, weights, config, states, clients):
    """The replies of ``half_cls`` (the honest client half) for ``clients``: the framework's
    unlearning actions, else the half's batched :meth:`handle_cohort`, else its per-client
    methods. The caller commits ``states``."""
    results = None
    if mtype in (protocol.STATE_ACTION, protocol.UNLEARN_POLL):
        results = _unlearning_action(cfg, half_cls, mtype, rnd, config, states)
    if results is None:
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
    return results


def _state_file(context: Context, config: dict[str, Any], pid: int, nparts: int) -> str:
    folder = str(context.node_config.get("state-dir", config.get("dir", "")))
    if not folder:
        raise FedrecError("fedrec_state: no folder (config 'dir' or node-config 'state-dir')")
    rnd = config.get("round")
    suffix = "" if rnd is None else f".r{int(rnd)}"
    return os.path.join(folder, f"node-{pid}-of-{nparts}{suffix}.npz")


def _prune_round_files(path: str, pid: int, nparts: int, keep_from: int) -> None:
    """Remove this node's per-round state files of rounds before ``keep_from``."""
    folder, prefix = os.path.dirname(path), f"node-{pid}-of-{nparts}.r"
    for name in os.listdir(folder):
        if name.startswith(prefix) and name.endswith(".npz"):
            r = name[len(prefix) : -len(".npz")]
            if r.isdigit() and int(r) < keep_from:
                os.remove(os.path.join(folder, name))


def _state_action(
    context: Context, store: StateStore, config: dict[str, Any], pid: int, nparts: int
) -> StateStore | None:
    """``save`` the node's client state to its own disk, or ``load`` it back (a run that
    `fedrec unlearn` or `fedrec run --resume` continues: the loaded store is returned, else
    None); other ops act per client in :func:`_unlearning_action`. With a ``round`` in the
    config the file is that round's (``node-K-of-N.rR.npz``, written after every round of a
    checkpointed run); ``keep-from`` then removes the node's files of earlier rounds. A file
    is written under a temporary name and renamed, so a kill leaves the previous one intact."""
    op = str(config.get("op", ""))
    if op == "save":
        path = _state_file(context, config, pid, nparts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez(path + ".tmp.npz", allow_pickle=False, **store.to_arrays())
        os.replace(path + ".tmp.npz", path)
        if "keep-from" in config:
            _prune_round_files(path, pid, nparts, int(config["keep-from"]))
    elif op == "load":
        path = _state_file(context, config, pid, nparts)
        if not os.path.exists(path):
            raise FedrecError(f"fedrec_state load: node {pid} has no kept state at {path}")
        with np.load(path, allow_pickle=False) as z:
            return StateStore.from_arrays({k: z[k] for k in z.files})
    return None


def _unlearning_action(cfg, half_cls, mtype, rnd, config, states):
    """The framework's unlearning actions, the same for every strategy: the request poll
    and the per-client state operations (reset keeps the forget records; forget clears
    everything, through the state API)."""
    from fedrec.unlearning import client as ul

    out: dict[int, tuple[None, dict[str, Any]]] = {}
    if mtype == protocol.UNLEARN_POLL:
        requests = ul.parse_config_requests(cfg.unlearning.requests)
        serve_round = int(config.get("serve-round", -1))
        idx = ul.due(requests, None if serve_round < 0 else serve_round)
        for c in states:
            owned = half_cls.owned_users(cfg, c)
            reply = ul.poll(requests, idx, c, owned, states[c])
            forgotten = np.asarray(states[c].get(ul.FORGET_USERS, []), dtype=np.int64)
            if len(forgotten):
                half_cls.forget_users(cfg, c, states[c], forgotten)
            out[c] = (None, reply)
        return out
    op = str(config.get("op", ""))
    if op == "sisa-grad":  # SISA's learned aggregator, on the evidence each client cached
        from fedrec.algorithms.sisa import aggregator_grad

        theta = np.asarray(config["theta"], dtype=np.float64)
        for c in states:
            ev = states[c].get(ul.SISA_EVIDENCE)
            E = np.zeros((0, len(theta))) if ev is None else np.asarray(ev, dtype=np.float64)
            g, loss = aggregator_grad(E, theta, str(config["loss"]))
            out[c] = (None, {"grad": g, "loss-sum": loss, "num-examples": int(len(E))})
        return out
    for c in states:
        if op == "reset":
            keep = {k: v for k, v in states.load(c).items() if k in ul.FORGET_FIELDS}
            states.save(c, keep)
        elif op == "forget":
            states.clear(c)
        elif op not in ("save", "load"):
            raise FedrecError(f"fedrec_state: unknown op '{op}' (save, load, reset, forget)")
        out[c] = (None, {})
    return out


class FedrecClientApp(ClientApp):
    """A ClientApp that routes every ``train``/``evaluate``/``query.*`` message
    (including plugins' actions, unknown at import time) to :func:`handle`."""

    def __call__(self, message: Message, context: Context) -> Message:
        with self._lifespan(context):
            return handle(message, context)


app = FedrecClientApp()

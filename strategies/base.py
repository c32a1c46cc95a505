"""``FedrecStrategy``: the one round loop every fedrec strategy shares.

A subclass of Flower's Message-API :class:`flwr.serverapp.strategy.Strategy` that
owns ``start()`` once, so plugins override small hooks instead of copying the loop:

1. **Setup** (:meth:`setup`): wait (with a timeout, never forever) until the
   expected nodes are connected, then a handshake ``query.fedrec_hello`` maps every
   node id to the logical clients it hosts (``client c`` lives on node partition
   ``c mod num-node-partitions``), collects each client's counts for the partition
   report, and builds the initial model (:meth:`initial_weights`).
2. **Per round**: :meth:`on_round_start`; seeded sampling of client ids (by id,
   never by random node id); ``train`` phase; :meth:`aggregate` on the per-client
   replies **sorted by client id**; :meth:`after_aggregate` (has the grid: extra
   ``query.<action>`` phases via :meth:`communicate`); ``evaluate`` phase whose
   confusion counts are summed into global / per-client / per-group metrics;
   :meth:`after_evaluate` (has the grid: post-training phases such as releases or
   unlearning requests); :meth:`on_round_end`; then the callbacks (progress, JSONL,
   checkpoint). Every phase goes through :meth:`communicate`.

A node may host many logical clients: a message names the clients to act for and
the reply carries their replies by column, unpacked into one :class:`ClientReply`
per logical client, so aggregation always sees one update per logical client (see
:mod:`fedrec.protocol`).

Plugins set ``name``, ``Params`` (a dataclass of :func:`fedrec.config.key` fields
read from ``strategy.params.*``) and ``client_half`` (dotted path of the
:class:`fedrec.clients.ClientHalf` subclass that runs on the clients).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedrec import faults, protocol
from fedrec.callbacks import Callback
from fedrec.config import RunConfig, validate_dataclass
from fedrec.errors import FedrecError
from fedrec.metrics import FederatedMetrics, federated_metrics
from fedrec.protocol import ClientReply
from fedrec.seeding import sample_clients
from fedrec.specs import fedavg as clf

log = logging.getLogger("fedrec")


@dataclass(frozen=True)
class NoParams:
    """A strategy without ``strategy.params.*`` keys."""


@dataclass
class RoundRecord:
    """What one round produced (passed to :meth:`on_round_end` and the callbacks)."""

    server_round: int
    train: dict[str, float]
    train_by_client: dict[int, dict[str, float]]
    evaluation: FederatedMetrics | None
    sampled: list[int]
    failures: list[str]
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def to_scalar_dict(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.floating,)):
            v = float(v)
        out[k] = v
    return out


def payload_bytes(msg: Message) -> int:
    """Bytes of the array payloads of ``msg`` (what dominates the traffic)."""
    return sum(len(a.data) for rec in msg.content.array_records.values() for a in rec.values())


class FedrecStrategy(Strategy):
    """Base class of fedrec strategies (see the module docstring)."""

    name: ClassVar[str] = "base"
    Params: ClassVar[type] = NoParams
    client_half: ClassVar[str] = "fedrec.clients.classification:ClassifierClient"

    def __init__(
        self, cfg: RunConfig, params: Any | None = None, callbacks: Sequence[Callback] = ()
    ) -> None:
        self.cfg = cfg
        self.params = params if params is not None else self.parse_params(cfg)
        self.callbacks = list(callbacks)
        self.node_of: dict[int, int] = {}  # logical client id -> node id
        self.hello: dict[int, dict[str, Any]] = {}  # client id -> handshake metrics
        self.history: list[RoundRecord] = []
        self.predictions: dict[int, dict[str, list[int]]] = {}  # --save-predictions
        self.result = Result()
        self._run_config_json = json.dumps(cfg.to_flat(), sort_keys=True)
        #: clients that take no further part: they left through an unlearning request, or are
        #: held out of every model (``unlearning.never-seen``). :attr:`client_ids` omits them.
        self.excluded: set[int] = set()
        #: array payload bytes sent to the clients ("down") and received ("up"); one dict
        #: shared with the strategy's SISA shard copies (:meth:`shard_view`)
        self.traffic = {"down": 0, "up": 0}
        #: per-round client updates (``unlearning.record-history``): round -> client -> arrays
        self.update_history: dict[int, dict[int, list[np.ndarray]]] = {}
        self.history_dirty = False  # rounds were recorded in this run (not only loaded)
        self.unlearning: Any = None  # the run's fedrec.unlearning.session.Session, if any
        self.serving_config: dict[str, Any] = {}  # extra evaluate settings (a SISA ensemble)
        self.stage_dir: Any = None  # the run folder being written (set by the ServerApp)
        #: the current round's accounting for rounds.jsonl (replies, fault_rate, faults_*, epsilon)
        self.round_stats: dict[str, Any] = {}
        #: the malicious clients of an attack run (simulation ground truth: evaluation covers
        #: the benign clients only; the defenses never read it)
        from fedrec.attacks.threat import attacker_ids

        a = cfg.attack
        self.attackers = set(
            attacker_ids(a.kind, a.fraction, a.client_ids, cfg.partition.num_clients, cfg.seed)
            .astype(int)
            .tolist()
        )
        #: the server-side defense wrapped around :meth:`aggregate` (``defense.method``)
        from fedrec.strategies.defense import make_defense

        self.defense = make_defense(cfg)
        #: differential privacy (``privacy.*``): the central mechanism and the accountant
        from fedrec.strategies.privacy import make_privacy

        self.privacy = make_privacy(cfg)

    # ------------------------------------------------------------------ config
    @classmethod
    def parse_params(cls, cfg: RunConfig) -> Any:
        """Validate ``strategy.params.*`` against :attr:`Params`."""
        return validate_dataclass(cls.Params, dict(cfg.strategy_params), "strategy.params.")

    @property
    def client_ids(self) -> list[int]:
        """The clients taking part: every hosted client except :attr:`excluded`."""
        return sorted(c for c in self.node_of if c not in self.excluded)

    progress_keys: ClassVar[tuple[str, ...]] = ("accuracy", "dp_gap", "dp_gap_local_max")

    #: What the server half carries from one round to the next besides the global
    #: weights: names of attributes (optimizer moments, duals, broadcast maps, counters,
    #: stored history). :meth:`server_state` collects them and the checkpoint saves them,
    #: so a run can be restored exactly. Sampling needs no state (seeded per round).
    server_state_attrs: ClassVar[tuple[str, ...]] = ()

    def server_state(self) -> dict[str, Any]:
        """The declared server state (:attr:`server_state_attrs`) by attribute name (and the
        privacy accountant's, under ``~privacy``)."""
        state = {a: getattr(self, a, None) for a in self.server_state_attrs}
        privacy = getattr(self, "privacy", None)
        if privacy is not None:
            state["~privacy"] = privacy.to_state()
        return state

    def load_server_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`server_state` returned (e.g. from a checkpoint)."""
        state = dict(state)
        saved, privacy = state.pop("~privacy", None), getattr(self, "privacy", None)
        if saved is not None and privacy is not None:
            privacy.load_state(saved)
        unknown = sorted(set(state) - set(self.server_state_attrs))
        if unknown:
            raise FedrecError(
                f"{type(self).__name__} has no server state {unknown}; it "
                f"declares {list(self.server_state_attrs)}"
            )
        for a, v in state.items():
            setattr(self, a, v)

    @classmethod
    def preflight(cls, cfg: RunConfig) -> None:
        """Fail fast before any runtime starts (default: classification on a tabular
        dataset: load, partition and build the model once)."""
        from fedrec.tasks import initial_model, load_task_dataset, partitions

        ds = load_task_dataset(cfg)
        partitions(cfg)
        initial_model(cfg, ds.num_features, ds.num_classes)

    def write_outputs(self, out_dir: Any) -> None:
        """Write strategy-specific files into the run folder (default: none)."""

    # ------------------------------------------------------------------ hooks
    def initial_weights(self) -> list[np.ndarray]:
        """The global model before round 1, built from the handshake facts."""
        from fedrec.models import get_weights
        from fedrec.tasks import initial_model

        first = self.hello[self.client_ids[0]]
        model = initial_model(self.cfg, int(first[clf.NUM_FEATURES]), int(first[clf.NUM_CLASSES]))
        return get_weights(model)

    def train_config(self, server_round: int) -> dict[str, Any]:
        """Per-round settings sent with the train message."""
        return {}

    def train_message_type(self, server_round: int) -> str:
        """The message type of a round's first phase: ``train`` or a plugin's
        ``query.<action>`` (e.g. a calibration round that trains no weights)."""
        return "train"

    def train_fraction(self, server_round: int) -> float:
        return self.cfg.strategy.fraction_train

    def total_rounds(self) -> int:
        """Rounds the loop runs (``num-server-rounds`` unless a strategy adds stages)."""
        return self.cfg.num_server_rounds

    def evaluate_config(self, server_round: int) -> dict[str, Any]:
        return {}

    def aggregate(
        self, server_round: int, replies: list[ClientReply]
    ) -> tuple[list[np.ndarray] | None, dict[str, float]]:
        """Combine the (sorted) train replies into new global weights."""
        raise NotImplementedError

    def on_round_start(self, server_round: int) -> None:
        """Called before sampling; override for per-round state."""

    def after_aggregate(
        self, server_round: int, weights: list[np.ndarray], grid: Grid
    ) -> list[np.ndarray]:
        """Called after aggregation with grid access (extra query phases)."""
        return weights

    def after_evaluate(self, server_round: int, record: RoundRecord, grid: Grid) -> None:
        """Called after the round's evaluation, with grid access: post-training phases
        (releases, unlearning requests, audits) send ``query.<action>`` messages through
        :meth:`communicate` here and may update ``record`` (``extra``, ``evaluation``)."""

    def on_round_end(self, server_round: int, record: RoundRecord) -> None:
        """Called at the end of the round (bookkeeping; no grid: use
        :meth:`after_evaluate` for extra phases)."""

    # ------------------------------------------------------------------ messaging
    def _content(
        self,
        clients: list[int],
        server_round: int,
        weights: list[np.ndarray] | None,
        config: dict[str, Any] | None,
        arrays: ArrayRecord | None = None,
    ) -> RecordDict:
        rd = RecordDict(
            {
                protocol.FEDREC: ConfigRecord(
                    {
                        protocol.RUN_CONFIG: self._run_config_json,
                        protocol.CLIENTS: list(map(int, clients)),
                        protocol.ROUND: int(server_round),
                        protocol.STRATEGY: self.cfg.strategy.name,
                    }
                )
            }
        )
        if arrays is None and weights is not None:
            arrays = ArrayRecord(list(weights))
        if arrays is not None:
            rd[protocol.ARRAYS] = arrays
        scalars, big = protocol.split_config(config or {})
        rd[protocol.CONFIG] = ConfigRecord(scalars)
        if big:
            rd[protocol.CONFIG_ARRAYS] = ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in big.items()}
            )
        return rd

    def build_messages(
        self,
        message_type: str,
        clients: Iterable[int],
        server_round: int,
        weights: list[np.ndarray] | None = None,
        config: dict[str, Any] | None = None,
    ) -> list[Message]:
        """One message per node, naming the logical clients it should act for."""
        by_node: dict[int, list[int]] = {}
        for c in sorted(clients):
            by_node.setdefault(self.node_of[c], []).append(c)
        arrays = ArrayRecord(list(weights)) if weights is not None else None
        return [
            Message(
                self._content(cs, server_round, None, config, arrays),
                dst_node_id=node,
                message_type=message_type,
                group_id=f"{message_type}-{server_round}",
            )
            for node, cs in sorted(by_node.items(), key=lambda kv: kv[1][0])
        ]

    def unpack(self, replies: Iterable[Message]) -> tuple[list[ClientReply], list[str]]:
        """Per-client replies sorted by client id, plus failure descriptions."""
        out: list[ClientReply] = []
        failures: list[str] = []
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                failures.append(f"node {node}: {msg.error.reason}")
                continue
            records = msg.content.array_records
            names = sorted(
                k for k in records if k == protocol.REPLIES or k.startswith(protocol.REPLIES + ".")
            )
            if not names:
                failures.append(f"node {node}: reply without '{protocol.REPLIES}' record")
                continue
            for name in names:  # "replies" and one "replies.<client>" per separate client
                try:
                    rec = records[name]
                    cols = {k: rec[k].numpy() for k in rec}
                    size = sum(int(v.nbytes) for v in cols.values())
                    n = max(1, len(cols.get(protocol.CLIENTS_COL, ())))
                    limit = self.cfg.runtime.max_reply_mb * 2**20
                    if size > limit * n:
                        raise ValueError(
                            f"{size / 2**20:.1f} MiB for {n} client(s) exceeds "
                            f"runtime.max-reply-mb = {self.cfg.runtime.max_reply_mb:g} per client"
                        )
                    for c, weights, metrics in protocol.unpack_replies(cols):
                        out.append(ClientReply(c, node, metrics, weights))
                except Exception as exc:  # noqa: BLE001 - a malformed reply must not stop a round
                    failures.append(f"node {node}: record '{name}' rejected ({exc})")
        out.sort(key=lambda r: r.client_id)
        return out, failures

    def communicate(
        self,
        grid: Grid,
        message_type: str,
        clients: Iterable[int],
        server_round: int,
        weights: list[np.ndarray] | None = None,
        config: dict[str, Any] | None = None,
        *,
        require: bool = True,
        planned: Iterable[int] = (),
    ) -> list[ClientReply]:
        """Send one phase (``train``, ``evaluate`` or ``query.<action>``) and collect
        the per-client replies, sorted by client id. Missing or failed clients are
        logged (except the ``planned`` ones: simulated faults); if none answers and
        ``require``, raise :class:`FedrecError`."""
        if message_type.startswith("query."):
            protocol.check_action(message_type.split(".", 1)[1])
        clients = sorted(clients)
        msgs = self.build_messages(message_type, clients, server_round, weights, config)
        self.traffic["down"] += sum(payload_bytes(m) for m in msgs)
        raw = list(grid.send_and_receive(msgs, timeout=self.cfg.runtime.timeout))
        self.traffic["up"] += sum(payload_bytes(m) for m in raw if not m.has_error())
        replies, failures = self.unpack(raw)
        got, expected_silent = {r.client_id for r in replies}, set(planned)
        missing = [c for c in clients if c not in got and c not in expected_silent]
        if expected_silent:
            failures = [f for f in failures if faults.NODE_FAILURE not in f]
        if missing and not failures:
            failures.append(
                f"no reply within {self.cfg.runtime.timeout:g}s from clients "
                f"{missing[:10]}{'...' if len(missing) > 10 else ''}"
            )
        for f in failures:
            log.warning("%s round %s: %s", message_type, server_round, f)
        self._last_failures = failures
        if require and not replies:
            reason = failures[0] if failures else "no clients"
            raise FedrecError(
                f"{message_type} in round {server_round}: no client replied ({reason})"
            )
        return replies

    # ------------------------------------------------------------------ setup
    def expected_nodes(self) -> int:
        return self.cfg.runtime.num_nodes or self.cfg.partition.num_clients

    def wait_for_nodes(self, grid: Grid) -> list[int]:
        want, deadline = self.expected_nodes(), time.monotonic() + self.cfg.runtime.timeout
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= want:
                return nodes
            if time.monotonic() > deadline:
                raise FedrecError(
                    f"only {len(nodes)} of {want} nodes connected within "
                    f"{self.cfg.runtime.timeout:g}s (runtime.timeout); check "
                    "runtime.num-nodes and that the SuperNodes are running"
                )
            time.sleep(0.2)

    def setup(self, grid: Grid) -> None:
        """Wait for nodes, run the handshake and map client ids to node ids."""
        nodes = self.wait_for_nodes(grid)
        msgs = [
            Message(
                self._content([], 0, None, None),
                dst_node_id=n,
                message_type=protocol.HELLO,
                group_id="hello",
            )
            for n in nodes
        ]
        replies = list(grid.send_and_receive(msgs, timeout=self.cfg.runtime.timeout))
        client_replies, failures = self.unpack(replies)
        if failures:
            raise FedrecError(f"handshake failed: {failures[0]}")
        for r in client_replies:
            if r.client_id in self.node_of:
                raise FedrecError(
                    f"client {r.client_id} is hosted by two nodes; give every "
                    "SuperNode a distinct node-config partition-id"
                )
            self.node_of[r.client_id] = r.node_id
            self.hello[r.client_id] = r.metrics
        missing = sorted(set(range(self.cfg.partition.num_clients)) - set(self.node_of))
        if missing:
            raise FedrecError(
                f"no node hosts clients {missing[:10]}; the nodes' num-partitions "
                "must equal the number of nodes (runtime.num-nodes)"
            )

    def partition_report(self) -> dict[str, Any]:
        """Per-client sizes and label x group counts, from the handshake."""
        clients: list[dict[str, Any]] = []
        for c in self.client_ids:
            h = self.hello[c]
            C, G = int(h.get(clf.NUM_CLASSES, 0)), int(h.get(clf.NUM_GROUPS, 0))
            clients.append(
                {
                    "client": c,
                    "num_train": int(h.get(clf.NUM_TRAIN, 0)),
                    "num_test": int(h.get(clf.NUM_TEST, 0)),
                    "train_counts_label_by_group": np.asarray(
                        h.get(clf.TRAIN_COUNTS, []), dtype=int
                    )
                    .reshape(C, G)
                    .tolist()
                    if C
                    else [],
                    "test_counts_label_by_group": np.asarray(h.get(clf.TEST_COUNTS, []), dtype=int)
                    .reshape(C, G)
                    .tolist()
                    if C
                    else [],
                }
            )
        sizes = [c["num_train"] + c["num_test"] for c in clients]
        return {
            "num_clients": len(clients),
            "nodes": len(set(self.node_of.values())),
            "sizes": sizes,
            "size_min": min(sizes),
            "size_max": max(sizes),
            "size_mean": float(np.mean(sizes)),
            "clients": clients,
        }

    # ------------------------------------------------------------------ Flower API
    def sample_train(self, server_round: int) -> list[int]:
        """The round's train clients: seeded by (run seed, round), by client id."""
        self._sampled = sample_clients(
            self.client_ids, self.train_fraction(server_round), self.cfg.seed, server_round
        )
        return self._sampled

    def evaluate_clients(self, server_round: int) -> list[int]:
        ids = [c for c in self.client_ids if c not in self.attackers]
        if self.cfg.output.save_predictions and server_round == self.total_rounds():
            return ids  # the audit file covers every client
        return sample_clients(
            ids,
            self.cfg.strategy.fraction_evaluate,
            self.cfg.seed,
            server_round,
            purpose="evaluate",
        )

    def _evaluate_settings(self, server_round: int, config: ConfigRecord | None) -> dict[str, Any]:
        cfg = {**dict(config or {}), **self.evaluate_config(server_round), **self.serving_config}
        if self.cfg.output.save_predictions and server_round == self.total_rounds():
            cfg[clf.SAVE_PREDICTIONS] = True
        return cfg

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_weights = arrays.to_numpy_ndarrays()
        cfg = {**dict(config), **self.train_config(server_round)}
        return self.build_messages(
            self.train_message_type(server_round),
            self.sample_train(server_round),
            server_round,
            self.current_weights,
            cfg,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        client_replies, failures = self.unpack(replies)
        self._last_failures = failures
        weights, metrics = self.aggregate(server_round, client_replies)
        return (
            ArrayRecord(weights) if weights is not None else None,
            MetricRecord(to_scalar_dict(metrics)),
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.build_messages(
            "evaluate",
            self.evaluate_clients(server_round),
            server_round,
            arrays.to_numpy_ndarrays(),
            self._evaluate_settings(server_round, config),
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        client_replies, _ = self.unpack(replies)
        fm = self.evaluation_metrics(client_replies)
        return MetricRecord(to_scalar_dict(fm.overall)) if fm else None

    def evaluation_metrics(self, replies: list[ClientReply]) -> FederatedMetrics | None:
        """Sum the clients' confusion counts into global/client/group metrics."""
        counts: dict[int, np.ndarray] = {}
        loss_sum, n = 0.0, 0
        for r in replies:
            m = r.metrics
            if clf.COUNTS not in m:
                continue
            counts[r.client_id] = clf.unpack_confusion(m)
            loss_sum += float(m.get(clf.LOSS_SUM, 0.0))
            n += int(m.get(clf.NUM_EXAMPLES, 0))
        if not counts:
            return None
        fm = federated_metrics(counts)
        if n:
            fm.overall["loss"] = loss_sum / n
        return fm

    def summary(self) -> None:
        log.info(
            "%s (%s): %s",
            type(self).__name__,
            self.name,
            json.dumps(
                asdict(self.params) if hasattr(self.params, "__dataclass_fields__") else {},
                sort_keys=True,
            ),
        )

    # ------------------------------------------------------------------ loop
    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ------------------------------------------------------------------ phases
    def train_phase(
        self,
        grid: Grid,
        server_round: int,
        weights: list[np.ndarray],
        clients: list[int],
        extra_config: dict[str, Any] | None = None,
        *,
        transform: Any = None,
    ) -> tuple[list[np.ndarray], dict[str, Any], list[ClientReply], list[str]]:
        """One train phase for ``clients``: send, aggregate (replies sorted by id), the
        :meth:`after_aggregate` hook; returns ``(weights, metrics, replies, failures)``.
        With ``unlearning.record-history`` every reply's update is stored
        (:meth:`client_update`) for history-based unlearning. ``transform`` (replies ->
        replies) rewrites the replies before aggregation (FedEraser's calibration); such a
        phase is not recorded."""
        self.current_weights = weights
        cfg = {**(extra_config or {}), **self.train_config(server_round)}
        mtype = self.train_message_type(server_round)
        fault_plan = (
            faults.plan(
                self.cfg.faults, self.cfg.seed, server_round, clients, self.expected_nodes()
            )
            if mtype == "train" and faults.active(self.cfg.faults)
            else None
        )
        replies = self.communicate(
            grid,
            mtype,
            clients,
            server_round,
            weights,
            cfg,
            require=fault_plan is None,
            planned=fault_plan.silent() if fault_plan is not None else (),
        )
        failures = list(self._last_failures)
        replies, rejected = self.screen_replies(server_round, replies, weights)
        failures += rejected
        self.round_stats = self._round_stats(clients, replies, fault_plan)
        if len(replies) < self.cfg.strategy.min_replies:
            log.warning(
                "train round %s: %d of %d replies, fewer than strategy.min-replies = %d: the "
                "round keeps the previous global model",
                server_round,
                len(replies),
                len(clients),
                self.cfg.strategy.min_replies,
            )
            self.round_stats["skipped"] = 1
            skip: dict[str, Any] = {"rejected-replies": len(rejected)} if rejected else {}
            return list(weights), skip, replies, failures
        if transform is not None:
            replies = transform(replies)
        elif self.records_history():
            self.history_dirty = True
            self.update_history[server_round] = {
                r.client_id: self.client_update(r, weights) for r in replies if r.weights
            }
        if self.privacy is not None and self.privacy.mechanism == "central" and transform is None:
            new, metrics = self.privacy.aggregate(
                self, server_round, replies, weights, len(clients)
            )
        elif self.defense is not None and transform is None:
            new, metrics = self.defense.aggregate(self, server_round, replies, weights)
        else:
            new, metrics = self.aggregate(server_round, replies)
        if self.privacy is not None and transform is None:
            self.round_stats["epsilon"] = self.privacy.account(
                len(clients), len(self.client_ids), replies
            )
        if rejected:
            metrics = {**metrics, "rejected-replies": len(rejected)}
        out = list(new) if new is not None else list(weights)
        out = list(self.after_aggregate(server_round, out, grid))
        return out, metrics, replies, failures

    def _round_stats(
        self, clients: list[int], replies: list[ClientReply], fault_plan: Any
    ) -> dict[str, Any]:
        """The round's reply accounting for rounds.jsonl: ``replies`` aggregated of
        ``sampled``, ``fault_rate`` (the share of sampled clients whose update was not
        aggregated, for any reason) and, with simulated faults, the count of each kind."""
        n = len(clients)
        stats: dict[str, Any] = {
            "replies": len(replies),
            "fault_rate": (n - len(replies)) / n if n else 0.0,
            "skipped": 0,
        }
        if fault_plan is not None:
            stats.update({f"faults_{k}": v for k, v in fault_plan.counts().items()})
        return stats

    def evaluate_phase(
        self,
        grid: Grid,
        server_round: int,
        weights: list[np.ndarray],
        clients: list[int],
        config: ConfigRecord | None = None,
    ) -> tuple[FederatedMetrics | None, list[ClientReply], list[str]]:
        """One evaluate phase for ``clients``: ``(metrics, replies, failures)``."""
        replies = self.communicate(
            grid,
            "evaluate",
            clients,
            server_round,
            weights,
            self._evaluate_settings(server_round, config),
            require=False,
        )
        return self.evaluation_metrics(replies), replies, list(self._last_failures)

    # ------------------------------------------------------------------ reply checks
    def check_reply(self, reply: ClientReply, weights: list[np.ndarray]) -> str | None:
        """Why a train reply cannot be aggregated, or None. The generic checks: numeric,
        finite arrays and a non-negative integer example count. Strategies with a known upload
        layout add theirs (shapes, ids in range); no reply may crash the aggregation."""
        for i, a in enumerate(reply.weights or []):
            a = np.asarray(a)
            if a.dtype.kind not in "biuf":
                return f"array {i} has dtype {a.dtype}, not a number"
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                return f"array {i} holds NaN or infinite values"
        n = reply.metrics.get(clf.NUM_EXAMPLES, 0)
        if isinstance(n, bool) or not isinstance(n, (int, float, np.integer, np.floating)):
            return f"'{clf.NUM_EXAMPLES}' is {n!r}, not a count"
        if not np.isfinite(n) or n < 0 or float(n) != int(n):
            return f"'{clf.NUM_EXAMPLES}' = {n!r} is not a non-negative integer"
        return None

    def screen_replies(
        self, server_round: int, replies: list[ClientReply], weights: list[np.ndarray]
    ) -> tuple[list[ClientReply], list[str]]:
        """``replies`` without the ones :meth:`check_reply` rejects (each logged with its
        reason), and the reasons."""
        kept, rejected = [], []
        for r in replies:
            try:
                why = self.check_reply(r, weights)
            except Exception as exc:  # noqa: BLE001 - a check that trips on a reply rejects it
                why = f"unreadable ({exc})"
            if why is None:
                kept.append(r)
            else:
                rejected.append(f"client {r.client_id}: reply rejected: {why}")
                log.warning(
                    "train round %s: client %s: reply rejected: %s", server_round, r.client_id, why
                )
        return kept, rejected

    # ------------------------------------------------------------------ defense hooks
    def update_view(self, replies: list[ClientReply], weights: list[np.ndarray]):
        """The replies' updates as :class:`fedrec.algorithms.robust.RowUpdates` (what the
        defenses of :mod:`fedrec.strategies.defense` aggregate). Default: full-model replies,
        every array flattened into the dense part (no item rows)."""
        from fedrec.algorithms.robust import RowUpdates

        flat = [
            np.concatenate(
                [
                    (np.asarray(w, np.float64) - np.asarray(g, np.float64)).ravel()
                    for w, g in zip(r.arrays(), weights)
                ]
            )
            for r in replies
        ]
        return RowUpdates.from_lists(
            ids=[np.zeros(0, np.int64)] * len(replies),
            rows=[np.zeros((0, 1))] * len(replies),
            dense=np.stack(flat) if flat else np.zeros((0, 0)),
            weights=np.asarray([r.num_examples for r in replies], dtype=np.float64),
            num_rows=0,
            d=1,
        )

    def replies_from_update(
        self,
        row_delta: np.ndarray,
        dense_delta: np.ndarray,
        replies: list[ClientReply],
        weights: list[np.ndarray],
    ) -> list[ClientReply]:
        """One synthetic reply that makes :meth:`aggregate` apply the defended update (the
        inverse of :meth:`update_view`; default: the full model ``w + delta``)."""
        out, at = [], 0
        for g in weights:
            g = np.asarray(g)
            out.append(
                (g.astype(np.float64) + dense_delta[at : at + g.size].reshape(g.shape)).astype(
                    g.dtype
                )
            )
            at += g.size
        n = sum(r.num_examples for r in replies)
        metrics = {clf.NUM_EXAMPLES: int(n)}
        return [ClientReply(-1, 0, metrics, out)]

    # ------------------------------------------------------------------ unlearning hooks
    def records_history(self) -> bool:
        u = self.cfg.unlearning
        return bool(u.record_history or u.method == "federaser")

    def client_update(self, reply: ClientReply, weights: list[np.ndarray]) -> list[np.ndarray]:
        """A client's train update in a form :meth:`reply_with_update` can send back through
        :meth:`aggregate` (default: full-model replies, the update is ``w_k - w``)."""
        return [
            np.asarray(w, np.float64) - np.asarray(g, np.float64)
            for w, g in zip(reply.arrays(), weights)
        ]

    def reply_with_update(
        self, reply: ClientReply, update: list[np.ndarray], weights: list[np.ndarray]
    ) -> ClientReply:
        """``reply`` carrying ``update`` (the inverse of :meth:`client_update`)."""
        new = [
            (np.asarray(g, np.float64) + u).astype(np.asarray(g).dtype)
            for g, u in zip(weights, update)
        ]
        return ClientReply(reply.client_id, reply.node_id, dict(reply.metrics), new)

    def calibrate_update(self, old: list[np.ndarray], new: list[np.ndarray]) -> list[np.ndarray]:
        """FedEraser: ``new`` rescaled to the magnitude of ``old`` (per array)."""
        from fedrec.algorithms.unlearning import calibrate

        return calibrate(old, new)

    def apply_updates(
        self, server_round: int, weights: list[np.ndarray], replies: list[ClientReply]
    ) -> list[np.ndarray]:
        """Apply the updates of a few clients only (an unlearning upload) to ``weights``:
        each counts as in a round where every client took part (default: ``w += sum_k
        n_k / n_all * (w_k - w)`` with ``n_all`` the training examples of all clients)."""
        n_all = sum(int(self.hello[c].get(clf.NUM_TRAIN, 0)) for c in self.node_of) or 1
        out = [np.asarray(w, np.float64).copy() for w in weights]
        for r in replies:
            for o, u in zip(out, self.client_update(r, weights)):
                o += u * (r.num_examples / n_all)
        return [o.astype(np.asarray(w).dtype) for o, w in zip(out, weights)]

    def owned_users(self, client_id: int) -> np.ndarray:
        """The user ids a client holds (recommenders); none for a classifier client."""
        return np.zeros(0, dtype=np.int64)

    #: train replies are full models, so ``w_k - w`` is a client's update (FedEraser)
    history_updates: ClassVar[bool] = True
    #: request kinds the strategy's clients can serve (a classifier client forgets itself)
    unlearning_kinds: ClassVar[tuple[str, ...]] = ("client",)

    @classmethod
    def unlearning_universe(cls, cfg: RunConfig) -> Any:
        """What request ids are checked against (:class:`fedrec.unlearning.requests.Universe`)."""
        from fedrec.unlearning.requests import Universe

        return Universe(num_clients=cfg.partition.num_clients)

    def sharding_features(self) -> np.ndarray:
        """Per-client features of SISA's balanced sharding: the numeric handshake facts
        (sizes, label x group counts), standardised. No embedding reaches the server."""
        rows = []
        for c in sorted(self.node_of):
            h = self.hello[c]
            rows.append(
                np.concatenate(
                    [np.atleast_1d(np.asarray(h[k], dtype=np.float64)).ravel() for k in sorted(h)]
                )
            )
        X = np.asarray(rows)
        sd = X.std(axis=0)
        return (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)

    def shard_view(self, members: list[int]) -> FedrecStrategy:
        """A copy of this (set-up) strategy restricted to ``members``, with fresh server
        state: one SISA shard federation."""
        import copy

        sh = copy.copy(self)
        sh.excluded = (set(self.node_of) - set(members)) | set(self.excluded)
        sh.history, sh.callbacks = [], []  # (reset_server_state empties update_history)
        sh.result, sh.unlearning, sh.serving_config = Result(), None, {}
        sh.reset_server_state()
        return sh

    def reset_server_state(self) -> None:
        """Back to the server state before round 1 (a retrain from scratch)."""
        fresh = type(self)(self.cfg, self.params)
        for a in self.server_state_attrs:
            setattr(self, a, getattr(fresh, a, None))
        self.update_history = {}

    def record_round(
        self, server_round: int, weights: list[np.ndarray], evaluation: Any, extra: dict[str, Any]
    ) -> None:
        """Append a round record made outside :meth:`run_rounds` (e.g. the evaluation of a
        SISA ensemble) and tell the callbacks."""
        self.result.arrays = ArrayRecord(weights)
        record = RoundRecord(server_round, {}, {}, evaluation, [], [], 0.0, dict(extra))
        self.history.append(record)
        self._call("on_round_end", record)

    def run_rounds(
        self,
        grid: Grid,
        weights: list[np.ndarray],
        first: int,
        last: int,
        *,
        evaluate: bool = True,
        extra_config: dict[str, Any] | None = None,
        evaluate_config: ConfigRecord | None = None,
        callbacks: bool = True,
    ) -> list[np.ndarray]:
        """Rounds ``first..last`` of the loop (train, evaluate, hooks, callbacks); the
        unlearning session serves the requests scheduled at each round's end."""
        for rnd in range(first, last + 1):
            t0 = time.perf_counter()
            self.on_round_start(rnd)
            if callbacks:
                self._call("on_round_start", rnd)
            self.round_stats = {}
            weights, train_metrics, train_replies, failures = self.train_phase(
                grid, rnd, weights, self.sample_train(rnd), extra_config
            )
            self.result.arrays = ArrayRecord(weights)
            self.result.train_metrics_clientapp[rnd] = MetricRecord(to_scalar_dict(train_metrics))
            evaluation: FederatedMetrics | None = None
            eval_replies: list[ClientReply] = []
            eval_failures: list[str] = []
            if evaluate:
                evaluation, eval_replies, eval_failures = self.evaluate_phase(
                    grid, rnd, weights, self.evaluate_clients(rnd), evaluate_config
                )
            preds = {
                r.client_id: {
                    k: r.metrics[k] for k in (clf.PRED_LABEL, clf.PRED_GROUP, clf.PRED_VALUE)
                }
                for r in eval_replies
                if clf.PRED_VALUE in r.metrics
            }
            if preds:
                self.predictions = preds
            if evaluation is not None:
                self.result.evaluate_metrics_clientapp[rnd] = MetricRecord(
                    to_scalar_dict(evaluation.overall)
                )
            record = RoundRecord(
                server_round=rnd,
                train=to_scalar_dict(train_metrics),
                train_by_client={r.client_id: to_scalar_dict(r.metrics) for r in train_replies},
                evaluation=evaluation,
                sampled=list(self._sampled),
                failures=failures + eval_failures,
                wall_s=0.0,
                extra=dict(self.round_stats),
            )
            self.after_evaluate(rnd, record, grid)
            if self.unlearning is not None and callbacks:
                weights = self.unlearning.after_round(grid, rnd, weights, record)
                self.result.arrays = ArrayRecord(weights)
            record.wall_s = time.perf_counter() - t0
            self.on_round_end(rnd, record)
            if callbacks:
                self.history.append(record)
                self.persist_client_state(grid, rnd)
                self._call("on_round_end", record)
        return weights

    # ------------------------------------------------------------------ resume
    def client_state_dir(self) -> Path | None:
        """Where the simulated nodes keep their clients' state between rounds (for
        ``fedrec run --resume``): ``runtime.state-dir/<run name>``, else
        ``<run folder>/client_state``; None when the run is not checkpointed."""
        if not self.cfg.output.checkpoint or self.stage_dir is None:
            return None
        stage = Path(self.stage_dir)
        if self.cfg.runtime.state_dir:
            return Path(self.cfg.runtime.state_dir) / stage.name.removesuffix(".incomplete")
        return stage / "client_state"

    def persist_client_state(self, grid: Grid, server_round: int) -> None:
        """Every node saves its clients' state of ``server_round`` to its own disk, before
        the checkpoint of that round is written (so a checkpoint always has its clients'
        state), and drops its files of the rounds before the previous one."""
        folder = self.client_state_dir()
        if folder is None or self.unlearning is not None:
            return
        self.node_state(
            grid,
            server_round,
            "save",
            folder,
            round=server_round,
            **{"keep-from": server_round - 1},
        )

    def node_state(self, grid: Grid, server_round: int, op: str, folder: Any, **extra: Any) -> None:
        """Every node saves (``op = "save"``) its clients' whole state to a file of its own
        in ``folder``, or loads it back (``"load"``); ``extra``: ``round`` (the per-round
        files of a checkpointed run), ``keep-from`` (a save drops older round files)."""
        self.communicate(
            grid,
            protocol.STATE_ACTION,
            sorted(self.node_of),
            server_round,
            None,
            {"op": op, "dir": str(folder), **extra},
        )

    def drop_round_state(self) -> None:
        """Remove the per-round client-state files of a finished run (simulation: the
        nodes' folders are on this machine)."""
        folder = self.client_state_dir()
        if folder is None or not folder.is_dir():
            return
        for f in folder.glob("node-*-of-*.r*.npz"):
            f.unlink()
        if self.cfg.runtime.state_dir and not any(folder.iterdir()):
            folder.rmdir()

    def restore(self, grid: Grid) -> tuple[list[np.ndarray], int]:
        """Resume from the run folder's checkpoint: the global weights, the declared server
        state, the round history and every node's client state of the checkpoint's round.
        Returns ``(weights, last completed round)``."""
        from fedrec.callbacks import load_checkpoint, load_history

        path = Path(self.stage_dir) / "checkpoint.npz"
        rnd, weights, state = load_checkpoint(path)
        self.load_server_state(state)
        self.history = load_history(path)
        self.node_state(grid, rnd, "load", self.client_state_dir(), round=rnd)
        self.result.arrays = ArrayRecord(weights)
        log.info("resumed after round %d from %s", rnd, path)
        return weights, rnd

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int | None = None,
        timeout: float | None = None,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Any = None,
    ) -> Result:
        """Run setup and ``num_rounds`` rounds; returns Flower's ``Result``.

        With unlearning requests or SISA shards (``[unlearning]``), the
        :class:`fedrec.unlearning.session.Session` trains the shards, serves the scheduled
        requests at their rounds and the others after training; ``fedrec unlearn`` starts
        from a finished run's checkpoint and kept client state instead of training."""
        num_rounds = num_rounds or self.total_rounds()
        self.summary()
        self.setup(grid)
        from fedrec.unlearning.session import Session

        self.unlearning = Session.for_strategy(self, grid)
        arrays = (
            initial_arrays if initial_arrays is not None else ArrayRecord(self.initial_weights())
        )
        self._call(
            "on_run_start", {"partition_report": self.partition_report(), "num_rounds": num_rounds}
        )
        weights = arrays.to_numpy_ndarrays()
        if self.unlearning is not None:
            weights = self.unlearning.train(grid, weights, num_rounds)
        else:
            done = 0
            if self.cfg.output.resume:
                weights, done = self.restore(grid)
            weights = self.run_rounds(
                grid,
                weights,
                done + 1,
                num_rounds,
                extra_config=dict(train_config or {}),
                evaluate_config=evaluate_config,
            )
        self.final_weights = weights
        self.result.arrays = ArrayRecord(weights)
        if self.cfg.output.keep_client_state and self.cfg.output.dir:
            from fedrec.unlearning.session import keep_client_state

            keep_client_state(self, grid)
        self.drop_round_state()
        self._call("on_run_end", self.history)
        return self.result

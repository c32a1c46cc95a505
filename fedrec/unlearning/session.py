"""Serving unlearning requests inside a run: the server-side driver of every method.

A :class:`Session` is created by the strategy's round loop when the run config has an
``[unlearning]`` job (requests, SISA shards, a held-out reference, stored history, or a
run to continue). It

1. holds out the ``never-seen`` clients (the membership-inference reference) and serves
   requests scheduled at round 0 (data that never joins);
2. trains: the strategy's normal rounds, or ``shards`` independent shard federations
   (SISA), or nothing when ``fedrec unlearn`` continues a finished run (its checkpoint,
   stored history and the state every node kept on its own disk are loaded);
3. serves the requests due at the end of each round (the in-training schedule) and,
   after training, the requests without a round. Serving is the same code in both cases:

   - **poll** (``query.fedrec_unlearn_poll``): every active client applies the due requests
     that concern it to its private forget records and answers with counts (and the ids
     of forgotten *items*, a public catalogue fact); the server learns who forgets, never
     what (:mod:`fedrec.unlearning.client`);
   - the clients that leave are excluded from every later phase;
   - the **method** runs (:mod:`fedrec.unlearning.methods`) through a :class:`Job`;
   - the leaving clients then delete their whole state (``query.fedrec_state``, op
     ``forget``: the state API's ``clear``);
   - cost (seconds, rounds, bytes each way) and verification metrics (utility on retained
     clients; completeness from the simulation-only oracle, :mod:`fedrec.unlearning.oracle`)
     go to the audit log ``unlearning.jsonl``, one line per request.

No flwr import: the session only calls the strategy's phase methods.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedrec import protocol
from fedrec.errors import ConfigError, FedrecError
from fedrec.seeding import derive_seed
from fedrec.unlearning import client as ul
from fedrec.unlearning.methods import UnlearningMethod, build_method
from fedrec.unlearning.requests import AuditLog, UnlearningRequest

log = logging.getLogger("fedrec")

__all__ = ["Forgetting", "Job", "Session", "keep_client_state", "never_seen_clients"]


#: SISA's learned aggregator: gradient steps and step size on the mean per-row gradient
AGGREGATOR_STEPS = 50
AGGREGATOR_LR = 1.0
#: the utility metrics of the retained clients an audit entry keeps (plus every "*_gap")
UTILITY_KEYS = (
    "ndcg@10",
    "hr@10",
    "recall@10",
    "mrr",
    "num_users",
    "accuracy",
    "loss",
    "train_em",
    "train_nll",
    "forgot_em",
    "forgot_nll",
    "test_nll",
)


def never_seen_clients(num_clients: int, share: float, seed: int) -> list[int]:
    """The clients held out of every model (``unlearning.never-seen``), seeded."""
    k = int(round(share * num_clients))
    if k <= 0:
        return []
    rng = np.random.default_rng(derive_seed(seed, "never-seen") % 2**63)
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


@dataclass
class Forgetting:
    """What a poll told the server: who leaves, who forgets, which items (public)."""

    leaving: list[int] = field(default_factory=list)
    clients: list[int] = field(default_factory=list)  # every client that forgets something
    items: list[int] = field(default_factory=list)
    num_users: int = 0
    num_pairs: int = 0

    @classmethod
    def from_replies(cls, replies) -> Forgetting:
        f = cls()
        items: set[int] = set()
        for r in replies:
            m = r.metrics
            if int(m.get(ul.N_REQUESTS, 0)) == 0:
                continue
            if int(m.get(ul.LEAVE, 0)):
                f.leaving.append(r.client_id)
            if (
                int(m.get(ul.LEAVE, 0))
                or int(m.get(ul.N_USERS, 0))
                or int(m.get(ul.N_PAIRS, 0))
                or int(m.get(ul.N_ITEMS, 0))
            ):
                f.clients.append(r.client_id)
            f.num_users += int(m.get(ul.N_USERS, 0))
            f.num_pairs += int(m.get(ul.N_PAIRS, 0))
            items |= {int(i) for i in np.asarray(m.get(ul.ITEM_IDS, []), dtype=np.int64)}
        f.items = sorted(items)
        return f

    def empty(self) -> bool:
        return not (self.leaving or self.clients or self.items)


class Job:
    """What a method works with while serving one batch of requests."""

    def __init__(self, session: Session, grid: Any, weights, forgetting: Forgetting, rnd: int):
        self.session = session
        self.strategy = session.strategy
        self.grid = grid
        self.weights = list(weights)
        self.forgetting = forgetting
        self.serve_round = rnd
        self.rounds_used = 0

    def retained(self) -> list[int]:
        """The clients that stay (the leaving ones are already excluded)."""
        return list(self.strategy.client_ids)

    def send(self, action: str, clients, weights, config=None):
        """A ``query.<action>`` phase to ``clients``; their replies, sorted by id."""
        return self.strategy.communicate(
            self.grid, f"query.{action}", sorted(clients), self.serve_round, weights, config
        )

    def reset_clients(self, clients) -> None:
        """Clients drop their model state (keeping their forget records)."""
        if clients:
            self.strategy.communicate(
                self.grid,
                protocol.STATE_ACTION,
                sorted(clients),
                self.serve_round,
                None,
                {"op": "reset"},
            )

    def train_rounds(self, weights, first: int, last: int, strategy=None):
        """Train rounds ``first..last`` on the strategy's seeded sample of its retained
        clients (:meth:`~fedrec.strategies.base.FedrecStrategy.sample_train`), without
        evaluation; counts them in :attr:`rounds_used`."""
        s = strategy or self.strategy
        w = list(weights)
        rounds = range(first, last + 1)
        if s.cfg.output.progress and len(rounds) > 1:
            from tqdm.auto import tqdm

            rounds = tqdm(rounds, desc=f"unlearning ({self.session.method.name})", unit="round")
        for rnd in rounds:
            s.on_round_start(rnd)
            w, _, _, _ = s.train_phase(self.grid, rnd, w, s.sample_train(rnd))
            self.rounds_used += 1
        return w

    def retrain(self, strategy=None) -> list[np.ndarray]:
        """From scratch: server and retained clients' state reset, rounds
        ``1..serve_round`` (the same seeds as the original run)."""
        s = strategy or self.strategy
        s.reset_server_state()
        self.reset_clients(s.client_ids)
        return self.train_rounds(s.initial_weights(), 1, self.serve_round, s)

    def retrain_shards(self) -> list[np.ndarray]:
        return self.session.sisa_retrain(self)

    def calibrate_from_history(self, interval: int, epochs: int) -> list[np.ndarray]:
        """FedEraser (see :mod:`fedrec.unlearning.methods`)."""
        s = self.strategy
        hist = s.update_history
        rounds = [t for t in sorted(hist) if t <= self.serve_round and (t - 1) % interval == 0]
        if not rounds:
            raise FedrecError(
                "federaser: the server stored no client updates (unlearning.record-history)"
            )
        s.reset_server_state()
        s.update_history = hist  # keep the stored original updates for later requests
        keep = set(self.retained())
        w = s.initial_weights()
        for t in rounds:
            clients = [c for c in sorted(hist[t]) if c in keep]
            if not clients:
                continue
            s.on_round_start(t)

            def calibrated(replies, t=t, w=w):
                return [
                    s.reply_with_update(
                        r, s.calibrate_update(hist[t][r.client_id], s.client_update(r, w)), w
                    )
                    for r in replies
                    if r.weights is not None
                ]

            w, _, _, _ = s.train_phase(
                self.grid, t, w, clients, {"local-epochs": epochs}, transform=calibrated
            )
            self.rounds_used += 1
        return w


class Session:
    """The unlearning driver of one run (module docstring)."""

    def __init__(self, strategy, requests: list[UnlearningRequest], method: UnlearningMethod):
        self.strategy = strategy
        self.cfg = strategy.cfg
        self.requests = requests
        self.method = method
        self.trained_rounds = 0
        self.served: list[dict[str, Any]] = []
        self.assign: np.ndarray | None = None  # SISA: shard of every client
        self.shard_strategies: list[Any] = []
        self.shard_weights: list[list[np.ndarray] | None] = []
        self.last_evaluation: Any = None
        self.alpha: np.ndarray | None = None  # SISA's learned shard weights
        stage = getattr(strategy, "stage_dir", None)
        self.audit = AuditLog(Path(stage) / "unlearning.jsonl") if stage else None

    @classmethod
    def for_strategy(cls, strategy, grid) -> Session | None:
        u = strategy.cfg.unlearning
        if not (
            u.requests
            or u.shards >= 2
            or u.resume_from
            or u.never_seen > 0
            or strategy.records_history()
        ):
            return None
        return cls(strategy, ul.parse_config_requests(u.requests), build_method(strategy.cfg))

    # ------------------------------------------------------------------ training
    def train(self, grid, weights, num_rounds: int) -> list[np.ndarray]:
        s, u = self.strategy, self.cfg.unlearning
        s.excluded |= set(never_seen_clients(len(s.node_of), u.never_seen, self.cfg.seed))
        if u.resume_from:
            weights = self.resume(grid)
        else:
            weights = self.serve_due(grid, 0, weights)
            if u.shards >= 2:
                weights = self.sisa_train(grid, weights, num_rounds)
            else:
                weights = s.run_rounds(grid, weights, 1, num_rounds)
            self.trained_rounds = num_rounds
        n_served = len(self.served)
        weights = self.serve_due(grid, None, weights)
        if len(self.served) > n_served:  # the served model is the run's final one
            s.record_round(
                self.trained_rounds,
                weights,
                self.last_evaluation,
                {"unlearning": self.served[-1]},
            )
        return weights

    def after_round(self, grid, rnd: int, weights, record) -> list[np.ndarray]:
        self.trained_rounds = rnd
        out = self.serve_due(grid, rnd, weights)
        if out is not weights and self.served:
            record.extra["unlearning"] = self.served[-1]
        return out

    # ------------------------------------------------------------------ serving
    def poll(self, grid, rnd: int | None, serve_round: int) -> Forgetting:
        replies = self.strategy.communicate(
            grid,
            protocol.UNLEARN_POLL,
            self.strategy.client_ids,
            serve_round,
            None,
            {"serve-round": -1 if rnd is None else int(rnd)},
        )
        return Forgetting.from_replies(replies)

    def serve_due(self, grid, rnd: int | None, weights) -> list[np.ndarray]:
        idx = ul.due(self.requests, rnd)
        if not idx:
            return weights
        s = self.strategy
        serve_round = self.trained_rounds if rnd is None else rnd
        t0, up0, down0 = time.perf_counter(), s.traffic["up"], s.traffic["down"]
        forgetting = self.poll(grid, rnd, serve_round)
        if forgetting.empty():
            log.warning("unlearning: no client holds the data of %s", [i for i in idx])
            return weights
        s.excluded |= set(forgetting.leaving)
        reqs = [self.requests[i] for i in idx]
        paused, tu, td = time.perf_counter(), s.traffic["up"], s.traffic["down"]
        before = self.verify(grid, serve_round, weights, reqs)  # not part of the cost
        t0 += time.perf_counter() - paused
        up0 += s.traffic["up"] - tu
        down0 += s.traffic["down"] - td
        job = Job(self, grid, weights, forgetting, serve_round)
        log.info(
            "unlearning (%s) at round %d: %d clients forget, %d leave",
            self.method.name,
            serve_round,
            len(forgetting.clients),
            len(forgetting.leaving),
        )
        # at round 0 nothing has been trained yet: the data simply never joins
        new = self.method.unlearn(job) if serve_round > 0 else weights
        if forgetting.leaving:  # the state API: a leaving client keeps nothing
            s.communicate(
                grid,
                protocol.STATE_ACTION,
                forgetting.leaving,
                serve_round,
                None,
                {"op": "forget"},
            )
        seconds = time.perf_counter() - t0
        cost = {
            "rounds": job.rounds_used,
            "bytes_up": s.traffic["up"] - up0,
            "bytes_down": s.traffic["down"] - down0,
            "seconds": seconds,
        }
        metrics = self.verify(grid, serve_round, new, reqs)
        entry = {
            "round": serve_round,
            "method": self.method.name,
            "requests": [self.requests[i].to_json() for i in idx],
            "leaving": forgetting.leaving,
            "forgetting": len(forgetting.clients),
            **cost,
            "metrics": metrics,
            "before": before,
        }
        self.served.append(entry)
        if self.audit is not None:
            for i in idx:
                self.audit.record(self.requests[i], self.method.name, **cost, metrics=metrics)
        return new

    def verify(self, grid, rnd: int, weights, requests) -> dict[str, float]:
        """Utility on the retained clients and the oracle's completeness metrics."""
        if rnd <= 0:
            return {}
        from fedrec.unlearning import oracle

        s = self.strategy
        evaluation, _, _ = s.evaluate_phase(grid, rnd, weights, s.client_ids)
        self.last_evaluation = evaluation
        out: dict[str, float] = {}
        if evaluation is not None:
            out.update(
                {
                    f"retain_{k}": float(v)
                    for k, v in evaluation.overall.items()
                    if k in UTILITY_KEYS or (k.endswith("_gap") and "@" not in k)
                }
            )
        per_user = getattr(s, "last_per_user", None)
        if per_user is not None and evaluation is not None:
            from fedrec.unlearning.metrics import active_inactive_gap

            users, pu = per_user
            try:
                out["active_inactive_gap"] = active_inactive_gap(
                    pu["ndcg@10"], s.ud.train.lengths[users]
                )
            except ConfigError:
                pass
        out.update(oracle.completeness(s, weights, requests, self))
        return {k: v for k, v in out.items() if np.isfinite(v)}

    # ------------------------------------------------------------------ SISA
    def shard_members(self, k: int) -> list[int]:
        assert self.assign is not None
        return [c for c in sorted(self.strategy.node_of) if int(self.assign[c]) == k]

    def sisa_train(self, grid, weights, num_rounds: int) -> list[np.ndarray]:
        from fedrec.algorithms.sharding import balanced_shards, random_shards

        s, u = self.strategy, self.cfg.unlearning
        n = len(s.node_of)
        seed = derive_seed(self.cfg.seed, "sisa") % 2**31
        if u.sharding == "balanced":
            self.assign = balanced_shards(s.sharding_features(), u.shards, seed)
        else:
            self.assign = random_shards(n, u.shards, seed)
        self.shard_strategies, self.shard_weights = [], []
        for k in range(u.shards):
            sh = s.shard_view(self.shard_members(k))
            log.info("sisa: training shard %d/%d (%d clients)", k + 1, u.shards, len(sh.client_ids))
            w = (
                sh.run_rounds(
                    grid,
                    [np.array(a) for a in weights],
                    1,
                    num_rounds,
                    evaluate=False,
                    callbacks=False,
                )
                if sh.client_ids
                else None  # no client: no model (left out of the ensemble)
            )
            self.shard_strategies.append(sh)
            self.shard_weights.append(w)
        weights = self.sisa_serving(grid, num_rounds)
        evaluation, _, _ = s.evaluate_phase(grid, num_rounds, weights, s.client_ids)
        sizes = [len(sh.client_ids) for sh in self.shard_strategies]
        s.record_round(
            num_rounds, weights, evaluation, {"sisa": {"shards": u.shards, "sizes": sizes}}
        )
        return weights

    def sisa_serving(self, grid, rnd: int, fit: bool = True) -> list[np.ndarray]:
        """The ensemble as one weight list (the shards' arrays in shard order) and the
        evaluation settings that tell clients how to serve it; with the ``learned``
        aggregator the shard weights are (re)fitted (:meth:`fit_aggregator`)."""
        s = self.strategy
        assert self.assign is not None
        # a shard whose every client left has no model: the ensemble is the others
        live = [k for k, w in enumerate(self.shard_weights) if w is not None]
        if not live:
            raise FedrecError("sisa: every shard has lost all its clients; nothing to serve")
        index = np.full(len(self.shard_weights), -1, dtype=np.int64)
        index[live] = np.arange(len(live))
        s.serving_config = {
            "sisa-shards": len(live),
            "sisa-assign": index[np.asarray(self.assign, dtype=np.int64)],
        }
        weights = [a for w in self.shard_weights if w is not None for a in w]
        if self.cfg.unlearning.aggregator == "learned":
            if fit:
                self.alpha = self.fit_aggregator(grid, rnd, weights)
            s.serving_config["sisa-weights"] = np.asarray(self.alpha, dtype=np.float64)
        return weights

    def fit_aggregator(self, grid, rnd: int, weights) -> np.ndarray:
        """SISA's learned aggregator (:mod:`fedrec.algorithms.sisa`): every client caches
        its evidence once (``query.sisa_evidence``), then ``AGGREGATOR_STEPS`` gradient
        steps on the summed gradients (``S`` numbers per client and step)."""
        from fedrec.algorithms.sisa import softmax

        s = self.strategy
        S = int(s.serving_config["sisa-shards"])
        s.communicate(grid, "query.sisa_evidence", s.client_ids, rnd, weights, s.serving_config)
        loss = "logistic" if hasattr(s, "ud") else "mixture"
        theta = np.zeros(S)
        for _ in range(AGGREGATOR_STEPS):
            replies = s.communicate(
                grid,
                protocol.STATE_ACTION,
                s.client_ids,
                rnd,
                None,
                {"op": "sisa-grad", "theta": theta, "loss": loss},
            )
            g = np.sum([np.asarray(r.metrics["grad"], dtype=np.float64) for r in replies], axis=0)
            n = sum(int(r.metrics["num-examples"]) for r in replies)
            theta = theta - AGGREGATOR_LR * g / max(n, 1)
        alpha = softmax(theta)
        log.info("sisa: learned shard weights %s", np.round(alpha, 3).tolist())
        return alpha

    def sisa_retrain(self, job: Job) -> list[np.ndarray]:
        if self.assign is None:
            raise FedrecError("sisa: the run was not trained with unlearning.shards >= 2")
        f = job.forgetting
        affected = (
            set(range(len(self.shard_weights)))
            if f.items
            else {int(self.assign[c]) for c in f.clients}
        )
        for k in sorted(affected):
            sh = self.shard_strategies[k]
            sh.excluded |= self.strategy.excluded
            log.info("sisa: retraining shard %d (%d clients)", k, len(sh.client_ids))
            self.shard_weights[k] = job.retrain(sh) if sh.client_ids else None
        job.affected_shards = sorted(affected)  # type: ignore[attr-defined]
        return self.sisa_serving(job.grid, job.serve_round)

    # ------------------------------------------------------------------ persistence
    def write_outputs(self, out_dir: Path) -> None:
        """What `fedrec unlearn` needs to continue the run: who is excluded, the stored
        history (federaser), the SISA shards."""
        s = self.strategy
        state = {
            "trained_rounds": self.trained_rounds,
            "excluded": sorted(s.excluded),
            "served": self.served,
        }
        (out_dir / "unlearning_state.json").write_text(json.dumps(state, indent=1) + "\n")
        src = (
            Path(self.cfg.unlearning.resume_from) / "history.npz"
            if self.cfg.unlearning.resume_from
            else None
        )
        if s.update_history and s.history_dirty:  # by column per round (fedrec.protocol's format)
            arrays = {
                f"r{t}/{k}": v
                for t, per in s.update_history.items()
                for k, v in protocol.pack_replies({c: (ws, {}) for c, ws in per.items()}).items()
            }
            np.savez(out_dir / "history.npz", allow_pickle=False, **arrays)
        elif src is not None and src.exists() and s.records_history():
            # unchanged since the run it continues: a hard link (no copy of a large file)
            import os
            import shutil

            try:
                os.link(src, out_dir / "history.npz")
            except OSError:
                shutil.copyfile(src, out_dir / "history.npz")
        if self.assign is not None:
            from fedrec.checkpoint import pack_state

            skel, arrays = pack_state(
                {
                    "assign": self.assign,
                    "alpha": self.alpha,
                    "weights": self.shard_weights,
                    "states": [sh.server_state() for sh in self.shard_strategies],
                }
            )
            np.savez(out_dir / "sisa.npz", allow_pickle=False, skeleton=np.asarray(skel), **arrays)

    def resume(self, grid) -> list[np.ndarray]:
        from fedrec.callbacks import load_checkpoint

        s = self.strategy
        run = Path(self.cfg.unlearning.resume_from)
        rnd, weights, server_state = load_checkpoint(run / "checkpoint.npz")
        s.load_server_state(server_state)
        st_path = run / "unlearning_state.json"
        if st_path.exists():
            st = json.loads(st_path.read_text())
            s.excluded |= set(int(c) for c in st["excluded"])
        if (run / "history.npz").exists() and self.method.needs_history:
            with np.load(run / "history.npz") as z:
                cols: dict[int, dict[str, np.ndarray]] = {}
                for k in z.files:
                    t, col = k.split("/", 1)
                    cols.setdefault(int(t[1:]), {})[col] = z[k]
            hist = {
                t: {c: list(ws or []) for c, ws, _ in protocol.unpack_replies(cols[t])}
                for t in sorted(cols)
            }
            s.update_history = hist
        s.node_state(grid, rnd, "load", run / "client_state")
        if (run / "sisa.npz").exists():
            from fedrec.checkpoint import unpack_state

            with np.load(run / "sisa.npz") as z:
                st = unpack_state(str(z["skeleton"]), {k: z[k] for k in z.files if k != "skeleton"})
            self.assign = np.asarray(st["assign"])
            self.alpha = st.get("alpha")
            self.shard_weights = [None if w is None else list(w) for w in st["weights"]]
            self.shard_strategies = []
            for k, state in enumerate(st["states"]):
                sh = s.shard_view(self.shard_members(k))
                sh.load_server_state(state)
                self.shard_strategies.append(sh)
            weights = self.sisa_serving(grid, rnd, fit=self.alpha is None)
        self.trained_rounds = rnd
        return weights


def keep_client_state(strategy, grid) -> None:
    """Every node saves its clients' state to its own disk (``output.keep-client-state``)."""
    stage = getattr(strategy, "stage_dir", None)
    if stage is None:
        return
    strategy.node_state(grid, len(strategy.history), "save", Path(stage) / "client_state")


def check_universe_kinds(strategy_cls, method: UnlearningMethod, requests) -> None:
    """Refuse a method or strategy that cannot serve the requests (before anything runs)."""
    kinds = sorted({r.kind for r in requests if r.kind != "attribute"})
    bad = [k for k in kinds if k not in method.kinds]
    if bad:
        raise ConfigError(
            f"unlearning method '{method.name}' cannot serve {', '.join(bad)} requests; it "
            f"serves {', '.join(method.kinds)}"
        )
    served = strategy_cls.unlearning_kinds
    bad = [k for k in kinds if k not in served]
    if bad:
        raise ConfigError(
            f"strategy '{strategy_cls.name}' cannot serve {', '.join(bad)} requests; its "
            f"clients serve {', '.join(served) or 'none'}"
        )

"""FedFACT (Zhang et al., NeurIPS 2025, https://arxiv.org/abs/2506.03777):
controllable federated group-fairness calibration, post-processing variant.

``fedfact-post`` = Algorithm 2 on a federated score model:

1. Rounds ``1..num-server-rounds``: FedAvg trains the score model eta_hat.
2. Round 0 statistics: the handshake (``query.fedrec_hello``) already carries each
   client's label x group counts of its training split; the server sums them and
   broadcasts **only the pooled counts** n[a, y] (A x m) with every calibration round.
   From its own counts and the pooled ones a client derives every probability its
   constraint matrices need (p_{a,k}, p_{k|a}, p_{a,y}, p_y, ...).
3. ``strategy.params.post-rounds`` calibration rounds (``query.fedfact_post``): every
   client scores its training rows with the frozen global model (re-calibrated per group
   on those rows for eop/eo, :mod:`fedrec.algorithms.calibration`), solves for its
   private local dual mu_k (kept in its node state) and sends the value, gradient and
   Hessian of its dual objective F_k(lambda) = min_mu H'_k, plus the expected counts of
   its rule on its train rows. The server takes a damped proximal Newton step on
   lambda (``server-solver = newton``; :func:`~fedrec.algorithms.fedfact.dual_newton_step`:
   a candidate is accepted only if the dual objective decreases as predicted) or the
   paper's fixed proximal gradient step (``gradient``), and logs the rule's train-set
   gaps (``gap-on-train*``). The last calibration round re-evaluates the deployed
   lambda, so its logged train-set gaps are the deployed classifier's.
4. Every calibration round is evaluated with the deployed (accepted) lambda: each
   client solves mu_k for it and predicts on its test rows with the randomized rule
   softmax(M(a,k)^T eta_hat(x) / beta) (one uniform per row, seeded by run seed and
   client; ``output = argmax`` gives the paper's deterministic rule). With the default
   entropic smoothing the duals constrain exactly this randomized rule.

Messages, Params and state fields: :mod:`fedrec.specs.fedfact`; client half and what
leaves a client: :mod:`fedrec.clients.fedfact`.

``local-post`` (baseline): the same pipeline with local constraints only and no
server coordination: each client calibrates alone (lambda stays empty).

Choices where the paper is open (documented in fedrec.algorithms.fedfact too): the
dual problem is solved on each client's training split; eta_hat is the FedAvg global
model, not a personalized one (re-calibrated per (group, client) for eop/eo only); the
deployed rule is randomized at the boundary. The paper's Algorithm 2 literally:
``smoothing = "softmax-average"``, ``temperature = 0.1``, ``output = "argmax"``,
``server-solver = "gradient"``, ``inner-solver = "prox"``, ``calibration = "none"``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fedrec.algorithms.fedfact import (
    DualNewton,
    dual_newton_step,
    dual_prox_step,
    fairness_gap,
    num_constraints,
    server_lambda_step,
)
from fedrec.errors import FedrecError
from fedrec.protocol import ClientReply
from fedrec.specs import fedavg as base_spec
from fedrec.specs import fedfact as spec
from fedrec.specs.fedfact import FedFactInParams, FedFactPostParams
from fedrec.strategies.fedavg import FedAvg

__all__ = [
    "FedFactIn",
    "FedFactInParams",
    "FedFactPost",
    "FedFactPostParams",
    "LocalPost",
    "pooled_counts",
]


def pooled_counts(hello: dict[int, dict[str, Any]]) -> np.ndarray:
    """Sum of the clients' (group, label) train counts, int64 (A, m)."""
    total: np.ndarray | None = None
    for c in sorted(hello):
        own = base_spec.unpack_counts(hello[c]).T
        total = own if total is None else total + own
    if total is None:
        raise FedrecError("no client handshakes: there are no counts to pool")
    return total


def _global_duals(criterion: str, pooled: np.ndarray, scope: str) -> np.ndarray:
    """Zero global duals lambda (empty when the scope has no global constraints)."""
    A, m = pooled.shape
    return np.zeros(num_constraints(criterion, A, m) if scope in ("global", "both") else 0)


class FedFactPost(FedAvg):
    """FedAvg training, then FedFACT post-processing calibration rounds."""

    name = "fedfact-post"
    Params = FedFactPostParams
    client_half = "fedrec.clients.fedfact:FedFactPostClient"
    # the candidate global dual and the Newton search state, whose accepted point is the
    # deployed dual (pooled counts: from the handshake)
    server_state_attrs: ClassVar[tuple[str, ...]] = ("lam", "search")
    scope_override: str | None = None

    @property
    def scope(self) -> str:
        return self.scope_override or self.params.scope

    @property
    def deployed(self) -> np.ndarray:
        """The deployed global dual: the Newton search's accepted point, else ``lam``."""
        return self.search.lam if self.search is not None else self.lam

    def total_rounds(self) -> int:
        return self.cfg.num_server_rounds + self.params.post_rounds

    def is_post(self, server_round: int) -> bool:
        return server_round > self.cfg.num_server_rounds

    def train_message_type(self, server_round: int) -> str:
        return f"query.{spec.POST}" if self.is_post(server_round) else "train"

    def train_fraction(self, server_round: int) -> float:
        return 1.0 if self.is_post(server_round) else self.cfg.strategy.fraction_train

    def setup(self, grid) -> None:
        super().setup(grid)
        self.pooled = pooled_counts(self.hello)
        self.lam = _global_duals(self.params.criterion, self.pooled, self.scope)
        self.search: DualNewton | None = None
        self.n_train = {c: int(self.hello[c][base_spec.NUM_TRAIN]) for c in self.client_ids}

    def candidate(self, server_round: int) -> np.ndarray:
        """The dual a calibration round evaluates: the search's next candidate, except in
        the last round, which re-evaluates the deployed dual so that its logged
        gap-on-train metrics are the deployed classifier's."""
        return self.deployed if server_round == self.total_rounds() else self.lam

    def train_config(self, server_round: int) -> dict[str, Any]:
        if not self.is_post(server_round):
            return {}
        return spec.pack_post(self.params, self.scope, self.pooled, self.candidate(server_round))

    def evaluate_config(self, server_round: int) -> dict[str, Any]:
        if not self.is_post(server_round):
            return {}
        return spec.pack_post(self.params, self.scope, self.pooled, self.deployed, calibrated=True)

    def aggregate(self, server_round: int, replies: list[ClientReply]):
        if not self.is_post(server_round):
            return super().aggregate(server_round, replies)
        out: dict[str, float] = {base_spec.NUM_CLIENTS: len(replies)}
        total = sum(self.n_train.values())
        weights = [self.n_train[r.client_id] / total for r in replies]
        value = float(sum(w * float(r.metrics[spec.DUAL_VALUE]) for w, r in zip(weights, replies)))
        if self.lam.size:
            U = self.lam.size
            grads = [np.asarray(r.metrics[spec.GRAD_LAM], dtype=np.float64) for r in replies]
            if self.params.server_solver == "newton":
                grad = sum(w * g for w, g in zip(weights, grads))
                hess = sum(
                    w * np.asarray(r.metrics[spec.HESS_LAM], dtype=np.float64).reshape(U, U)
                    for w, r in zip(weights, replies)
                )
                candidate = self.candidate(server_round)
                self.search, self.lam = dual_newton_step(
                    self.search,
                    candidate,
                    value,
                    np.asarray(grad),
                    np.asarray(hess),
                    xi=self.params.xi_global,
                    bound=self.params.dual_bound,
                )
                out[spec.ACCEPTED] = float(np.array_equal(self.search.lam, candidate))
            else:
                self.lam = server_lambda_step(
                    self.lam,
                    grads,
                    weights,
                    self.params.dual_lr,
                    self.params.xi_global,
                    self.params.dual_bound,
                )
        out[spec.DUAL_OBJECTIVE] = value + self.params.xi_global * float(
            np.abs(self.deployed).sum()
        )
        out.update(self._train_gaps(replies))
        out[spec.LAMBDA_L1] = float(np.abs(self.deployed).sum())
        out[spec.MU_L1_MEAN] = float(np.mean([r.metrics.get(spec.MU_L1, 0.0) for r in replies]))
        return None, out

    def _train_gaps(self, replies: list[ClientReply]) -> dict[str, float]:
        """Gaps of this round's rule on the pooled train rows, from the clients' expected
        counts: the constrained (subgroup) form, global and max over clients, and the
        pairwise global gap."""
        A, m = self.pooled.shape
        counts = np.stack(
            [
                np.asarray(r.metrics[spec.TRAIN_COUNTS], dtype=np.float64).reshape(A, m, m)
                for r in sorted(replies, key=lambda r: r.client_id)
            ]
        )
        gap = fairness_gap(self.params.criterion, counts, expected=True)
        return {
            spec.TRAIN_GAP: gap["global"],
            spec.TRAIN_GAP_LOCAL: gap["local_max"],
            spec.TRAIN_GAP_PAIRWISE: gap["global_pairwise"],
            spec.TRAIN_ACCURACY: gap["accuracy"],
        }

    def on_round_end(self, server_round: int, record) -> None:
        record.extra[spec.STAGE] = (
            spec.STAGE_POST if self.is_post(server_round) else spec.STAGE_TRAIN
        )


class LocalPost(FedFactPost):
    """Baseline: every client calibrates alone against its local constraints (no lambda)."""

    name = "local-post"
    scope_override = "local"


class FedFactIn(FedAvg):
    """FedFACT in-processing (Algorithm 1): cost-sensitive federated training with a
    personalized ensemble (shared theta + private phi_k), local duals on clients and
    global duals on the server. Attribute-blind at inference.

    Server per round: theta <- FedAvg of the clients' trained copies (example-weighted);
    lambda <- prox(lambda + eta_d * sum_k dg_k) with the soft-threshold by eta_d xi_g
    applied once (not once per client, fedfact.md §6.3) and the L1-ball projection.
    The global constraint value is the sum of the sampled clients' contributions, so use
    ``strategy.fraction-train = 1`` (default). Round-0 statistics: the handshake's label x
    group counts; only their pooled sum is broadcast.

    Deployed classifier: the uniform mixture of the last ``history`` (N_h) round
    classifiers h^t = argmax of the ensemble at the start of round t, which are exactly
    the classifiers whose train-set constraint values the duals saw (one seeded draw per
    test row picks the round). The rule that was deployed before, the ensemble after the
    last training step, was never measured by the duals. ``gap-on-train*`` log the
    mixture's train-set gaps (global: the average of the rounds' summed constraint
    values; local: the clients' averages). Default N_h = 1, as in the paper's
    experiments: the latest *measured* classifier h^T.
    """

    name = "fedfact-in"
    Params = FedFactInParams
    client_half = "fedrec.clients.fedfact:FedFactInClient"
    # the global dual and the summed global constraint values of the last N_h rounds
    server_state_attrs: ClassVar[tuple[str, ...]] = ("lam", "dg_history")

    def setup(self, grid) -> None:
        super().setup(grid)
        self.pooled = pooled_counts(self.hello)
        self.lam = _global_duals(self.params.criterion, self.pooled, self.params.scope)
        self.dg_history: list[np.ndarray] = []

    def train_config(self, server_round: int) -> dict[str, Any]:
        return spec.pack_in(self.params, self.pooled, self.lam)

    def aggregate(self, server_round: int, replies: list[ClientReply]):
        weights, metrics = super().aggregate(server_round, replies)
        if self.lam.size:
            dg = np.sum(
                [np.asarray(r.metrics[spec.DG_VALUES], dtype=np.float64) for r in replies], axis=0
            )
            self.lam = dual_prox_step(
                self.lam, -dg, self.params.dual_lr, self.params.xi_global, self.params.dual_bound
            )
            metrics[spec.CONSTRAINT_MAX] = float(np.abs(dg).max())
            # the deployed mixture of the last N_h round classifiers: its global
            # train-set constraint values are the average of the rounds' values
            self.dg_history = [*self.dg_history, dg][-self.params.history :]
            metrics[spec.TRAIN_GAP] = float(np.abs(np.mean(self.dg_history, axis=0)).max())
        metrics[spec.TRAIN_GAP_LOCAL] = float(
            max(float(r.metrics.get(spec.DL_MIX_MAX, 0.0)) for r in replies)
        )
        metrics[spec.LAMBDA_L1] = float(np.abs(self.lam).sum())
        metrics[spec.W_ENSEMBLE_MEAN] = float(
            np.mean([r.metrics[spec.W_ENSEMBLE] for r in replies])
        )
        return weights, metrics

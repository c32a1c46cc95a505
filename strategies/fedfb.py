"""FedFB (Zeng, Chen, Lee 2021): federated FairBatch for demographic parity.

Paper: "Improving Fairness via Federated Learning", https://arxiv.org/abs/2110.15545.
Reference code: ``yzeng58/Improving-Fairness-via-Federated-Learning``,
``FedFB/DP_server.py`` (``Server.FedFB``, ``Client.fb2_update``, ``Client.inference``);
also consulted ``Lizhngg/AdaFFed`` ``fedlearn/algorithm/FedFB.py`` (same update).

The method. The server keeps FairBatch weights ``lambda[y, z]`` of the (label,
group) cells (binary label, any number of groups). Each round:

1. clients train with row weights ``lambda[y, z] * n / m_z`` (global counts ``m``
   from the handshake; mean 1 at initialisation, where FedFB equals FedAvg's
   objective) and the server averages their models weighted by the sum of their
   rows' weights (the reference's ``nc``);
2. in the extra phase ``query.fedfb_losses`` every client evaluates the new global
   model on its training rows and returns the summed cross-entropy per cell;
3. the server sums them, forms the loss surrogate ``f_z`` of
   ``P(Yhat=1|Z=z) - P(Yhat=1|Z=0)`` and moves ``lambda`` with step
   ``alpha / sqrt(round)``: weight shifts toward the negatives of groups with the
   higher positive rate (and toward the positives of the others), clipped so every
   group keeps its total weight.

Exact formulas, their source lines and the two documented deviations from the
reference code are in :mod:`fedrec.algorithms.fair_baselines`.

Messages and Params: :mod:`fedrec.specs.fedfb`; client half and what leaves a client:
:mod:`fedrec.clients.fedfb`.

Choices:

- ``alpha`` defaults to 0.3, the reference code's default and the largest (most
  stringent) value of FedFACT's grid {0.005, 0.01, 0.05, 0.3} (reference/fedfact.md
  §9.5).
- ``criterion``: only ``dp`` (the FedFACT comparison); FedFB's EO/EOP variants are
  not implemented. Binary labels only (``dp`` with FairBatch's two-cell weights per
  group); a multi-class dataset is refused with a clear error.
- The losses are collected from **all** clients every round (the reference trains
  and measures all clients), even when ``strategy.fraction-train`` samples fewer.
- ``lambda`` per round is in ``rounds.jsonl`` (``fedfb_lambda``, flattened ``(2, G)``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedrec.algorithms.fair_baselines import (
    fedfb_cell_weights,
    fedfb_dp_direction,
    fedfb_init_lambda,
    fedfb_step_size,
    fedfb_update_lambda,
)
from fedrec.errors import FedrecError
from fedrec.protocol import ClientReply
from fedrec.specs import fedavg as base_spec
from fedrec.specs import fedfb as spec
from fedrec.specs.fedfb import FedFBParams
from fedrec.strategies.fedavg import FedAvg, weighted_average, weighted_metrics

__all__ = ["FedFB", "FedFBParams"]


class FedFB(FedAvg):
    """FedFB: FedAvg with server-updated FairBatch (label, group) weights."""

    name = "fedfb"
    Params = FedFBParams
    client_half = "fedrec.clients.fedfb:FedFBClient"
    server_state_attrs: ClassVar[tuple[str, ...]] = ("m", "lam", "last_f")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.m: np.ndarray | None = None  # global label x group counts (2, G)
        self.lam: np.ndarray | None = None  # FairBatch weights (2, G)
        self.last_f: np.ndarray | None = None

    def global_counts(self) -> np.ndarray:
        """Summed handshake train counts (C, G), clients in id order."""
        total = None
        for c in self.client_ids:
            m = base_spec.unpack_counts(self.hello[c])
            total = m if total is None else total + m
        if total is None or total.shape[0] != 2 or total.shape[1] < 2:
            shape = None if total is None else tuple(total.shape)
            raise FedrecError(
                f"FedFB (criterion dp) needs a binary label and at least two "
                f"sensitive groups; the dataset has (classes, groups) = {shape}"
            )
        return total

    def on_round_start(self, server_round):
        if self.lam is None:
            self.m = self.global_counts()
            self.lam = fedfb_init_lambda(self.m)

    def train_config(self, server_round):
        if self.lam is None:
            self.on_round_start(server_round)
        return spec.pack_cell_weights(fedfb_cell_weights(self.lam, self.m))

    def aggregate(self, server_round: int, replies: list[ClientReply]):
        replies = [r for r in replies if r.weights is not None]
        if not replies:
            return None, {}
        nc = [float(r.metrics.get(spec.WEIGHT_SUM, r.num_examples)) for r in replies]
        if sum(nc) <= 0:
            nc = [float(r.num_examples) for r in replies]
        weights = [r.weights for r in replies if r.weights is not None]  # all, see above
        return weighted_average(weights, nc), weighted_metrics(replies)

    def after_aggregate(self, server_round, weights, grid):
        replies = self.communicate(
            grid, f"query.{spec.LOSSES}", self.client_ids, server_round, weights
        )
        L = np.zeros_like(self.m, dtype=np.float64)
        for r in replies:  # sorted by client id: a deterministic float sum
            L += spec.unpack_loss_sums(r.metrics, L.shape)
        self.last_f = fedfb_dp_direction(L, self.m)
        self.lam = fedfb_update_lambda(
            self.lam, self.last_f, self.m, fedfb_step_size(self.params.alpha, server_round)
        )
        return weights

    def on_round_end(self, server_round, record):
        record.extra[spec.LAMBDA] = self.lam.ravel().tolist()
        if self.last_f is not None:
            record.extra[spec.DIRECTION] = self.last_f[1:].tolist()

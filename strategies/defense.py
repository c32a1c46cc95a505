"""Server-side defenses wrapped around any fedrec strategy's aggregation (``defense.*``).

:class:`Defense` replaces ``strategy.aggregate(round, replies)`` in the train phase by

1. the strategy's view of its replies as updates (:meth:`FedrecStrategy.update_view`: per client
   the item rows it touched, their mean update, the dense rest, its example count; full-model
   strategies have only the dense part),
2. a robust rule of :mod:`fedrec.algorithms.robust` on those updates,
3. one synthetic reply carrying the defended update (:meth:`FedrecStrategy.replies_from_update`)
   that the strategy's own ``aggregate`` applies as usual (FedAdam, server lr, ...).

Rules (``defense.method``):

* ``krum``, ``multikrum``, ``bulyan``, ``median``, ``trimmed-mean``: Flower's rules
  (``flwr.server.strategy.aggregate``) for full-model uploads; for sparse item-row uploads their
  row-wise versions, where only the clients that touched a row vote on it (equal to Flower's when
  every client touches every row; tested). A robust row estimate is scaled by the example share
  of its voters, so it sits on FedAvg's scale (FedAvg dilutes a row by the clients that did not
  touch it). ``defense.beta`` is the assumed malicious share ``f / n`` (per row:
  ``floor(beta * voters)``), ``defense.keep-fraction`` MultiKrum's kept share.
* ``norm-clip``: each client's whole update clipped to ``defense.clip-norm`` (0: the
  ``defense.clip-quantile`` of the round's norms), then FedAvg.
* ``anomaly``: :func:`fedrec.algorithms.robust.anomaly_scores` per client; clients above
  ``defense.threshold`` are dropped and the others aggregated by the strategy unchanged.

Every round appends the per-client decisions (kept share or anomaly score, clip factor) to
:attr:`Defense.records`; the run writes them to ``defense.jsonl`` (what the detection AUC of the
attack experiments is computed from).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrec.config import RunConfig
from fedrec.protocol import ClientReply

ROBUST = ("krum", "multikrum", "bulyan", "median", "trimmed-mean")


def make_defense(cfg: RunConfig) -> Defense | None:
    return None if cfg.defense.method == "none" else Defense(cfg)


class Defense:
    """The ``defense.*`` rule around a strategy's aggregation (module docstring)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.method = cfg.defense.method
        self.records: list[dict[str, Any]] = []

    def aggregate(self, strategy, server_round: int, replies: list[ClientReply], weights):
        from fedrec.algorithms import robust

        replies = [r for r in replies if r.weights is not None]
        if len(replies) < 2:
            return strategy.aggregate(server_round, replies)
        ids = [r.client_id for r in replies]
        ups = strategy.update_view(replies, weights)
        d = self.cfg.defense
        rec: dict[str, Any] = {"round": server_round, "method": self.method, "clients": ids}
        if self.method == "anomaly":
            scores = robust.anomaly_scores(ups)
            flagged = robust.flag_anomalies(scores, d.threshold)
            rec["score"] = [float(x) for x in scores]
            rec["flagged"] = [int(c) for c, f in zip(ids, flagged) if f]
            self.records.append(rec)
            kept = [r for r, f in zip(replies, flagged) if not f]
            new, metrics = strategy.aggregate(server_round, kept or replies)
            return new, {**metrics, "defense-flagged": int(np.sum(flagged))}
        if self.method == "norm-clip":
            norms = robust.update_norms(ups)
            C = d.clip_norm or robust.adaptive_clip_norm(norms, d.clip_quantile)
            ups, factors = robust.clip_updates(ups, C)
            res = robust.rowwise_mean(ups)
            rec.update(clip=float(C), factor=[float(x) for x in factors])
            rec["score"] = [float(x) for x in norms]
        elif ups.num_rows == 0:
            res = self._flower_dense(ups, d)
        else:
            res = self._rowwise(ups, d)
            if "selected_share" in res.info:  # the Krum family
                rec["kept-share"] = [float(x) for x in res.info["selected_share"]]
        self.records.append(rec)
        row_delta, dense = robust.fedavg_scale(res)
        synthetic = strategy.replies_from_update(row_delta, dense, replies, weights)
        new, metrics = strategy.aggregate(server_round, synthetic)
        metrics = {**metrics, "num-clients": len(replies)}
        return new, metrics

    def _rowwise(self, ups, d):
        from fedrec.algorithms import robust

        if self.method == "median":
            return robust.rowwise_median(ups)
        if self.method == "trimmed-mean":
            return robust.rowwise_trimmed_mean(ups, d.beta)
        if self.method == "krum":
            return robust.rowwise_krum(ups, d.beta)
        if self.method == "multikrum":
            return robust.rowwise_krum(ups, d.beta, keep_frac=d.keep_fraction)
        return robust.rowwise_bulyan(ups, d.beta)

    def _flower_dense(self, ups, d):
        """Full-model uploads: Flower's own rules on the clients' update vectors."""
        from flwr.server.strategy import aggregate as fl

        from fedrec.algorithms import robust

        n = ups.dense.shape[0]
        f = int(np.floor(d.beta * n))
        results = [([ups.dense[i]], int(ups.weights[i])) for i in range(n)]
        if self.method == "median":
            out = fl.aggregate_median(results)
        elif self.method == "trimmed-mean":
            out = fl.aggregate_trimmed_avg(results, d.beta)
        elif self.method == "krum":
            out = fl.aggregate_krum(results, f, 0)
        elif self.method == "multikrum":
            keep = min(n, max(1, int(np.ceil(d.keep_fraction * n))))
            out = fl.aggregate_krum(results, f, keep)
        elif n >= 4 * f + 3:
            out = fl.aggregate_bulyan(results, f, fl.aggregate_krum, to_keep=0)
        else:  # Bulyan's precondition fails: the coordinate-wise median (as row-wise)
            out = fl.aggregate_median(results)
        return robust.RobustResult.dense_only(np.asarray(out[0], dtype=np.float64), n)

    def write(self, out_dir) -> None:
        import json
        import os

        if not self.records:
            return
        with open(os.path.join(str(out_dir), "defense.jsonl"), "w") as fh:
            for rec in self.records:
                fh.write(json.dumps(rec) + "\n")

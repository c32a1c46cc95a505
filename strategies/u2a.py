"""Federated Unlearning to Align (``u2a``; U2A, arXiv 2504.06659; reference notes §3.5).

The assistant is fine-tuned for ``num-server-rounds`` rounds exactly as :mod:`fedlm`
(clients train on their people's SFT documents: chosen answers and their bad habits).
Each of the next ``align-rounds`` rounds aligns it by unlearning negatives the clients
flagged, chosen by the server from **scores only**:

1. the server computes ``grad J`` of the validation margin ``J`` (the mean log-probability
   margin of chosen over rejected answers on its preference validation set,
   :func:`fedrec.algorithms.u2a.preference_margin`) and broadcasts it with the weights;
2. every client scores its candidate negatives, ``g_i = -<v, grad l_u(x_i)>`` with
   ``v = grad J`` (``score = "dot"``) or ``v = (H_c + damping I)^{-1} grad J`` (``"cg"``,
   ``H_c`` the Hessian of the client's own kept answers' NLL, conjugate gradients on exact
   HVPs), and sends the scores;
3. the server selects greedily at most ``budget`` negatives with positive scores over all
   clients, and sets their weights by mirror descent on the simplex (``eta``, continuing
   from the previous round's weights);
4. every client with selected negatives runs ``align-steps`` local steps of weighted
   unlearning (``loss``: GA, GradDiff with its kept answers, NPO against the fine-tuned
   model) and the server averages the returned models with aggregation weights
   ``sum_{i in c} w_i``: **the U2A weights become FedAvg weights**.

Baselines (``selection``): ``all`` (every negative, uniform weights), ``random`` (``budget``
negatives drawn per round with ``derive_seed(seed, "u2a-random", round)``, uniform), and
``dpo`` (each client runs DPO on all its (chosen, negative) pairs; FedAvg by pair count).
All methods take the same number of local steps. After every alignment round the server
reports ``val_margin`` (``J``), and the clients' greedy answers give ``banned_rate``,
``refusal_rate`` and fact accuracy (``train_em``). The selections (client, local index,
weight) are written to ``u2a_selection.json`` (the planted-harmful test reads it).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np

from fedrec.protocol import ClientReply
from fedrec.seeding import derive_seed
from fedrec.specs import u2a as spec
from fedrec.specs.u2a import U2AParams
from fedrec.strategies.fedavg import weighted_average
from fedrec.strategies.fedlm import FedLM

__all__ = ["U2A", "U2AParams"]


class U2A(FedLM):
    name = "u2a"
    Params: ClassVar[type] = U2AParams
    client_half = "fedrec.clients.u2a:U2AClient"
    progress_keys = ("train_em", "banned_rate", "val_margin")
    unlearning_kinds: ClassVar[tuple[str, ...]] = ()
    server_state_attrs: ClassVar[tuple[str, ...]] = ("_adam", "_w_prev", "selections")
    _w_prev: dict | None = None
    selections: dict | None = None

    @classmethod
    def preflight(cls, cfg) -> None:
        from fedrec.lmtask import u2a_task

        super().preflight(cfg)
        u2a_task(cfg, cls.parse_params(cfg))

    @property
    def sft_rounds(self) -> int:
        """Fine-tuning rounds before alignment (none when starting from ``init``)."""
        return 0 if self.params.init else self.cfg.num_server_rounds

    def total_rounds(self) -> int:
        return self.sft_rounds + self.params.align_rounds

    def initial_weights(self) -> list[np.ndarray]:
        if not self.params.init:
            return super().initial_weights()
        from pathlib import Path

        from fedrec.callbacks import load_weights
        from fedrec.errors import ConfigError

        path = Path(self.params.init)
        if not path.is_file():
            raise ConfigError(f"config key 'strategy.params.init': no file {path}")
        weights = load_weights(path)
        want = super().initial_weights()
        if [w.shape for w in weights] != [w.shape for w in want]:
            raise ConfigError(
                f"config key 'strategy.params.init': {path} holds a model of another shape "
                "(model.params and the dataset must match the run that wrote it)"
            )
        return [np.asarray(w, dtype=v.dtype) for w, v in zip(weights, want)]

    def setup(self, grid) -> None:
        super().setup(grid)
        from fedrec.algorithms.u2a import encode_preferences
        from fedrec.lmtask import u2a_task

        t = u2a_task(self.cfg, self.params)
        self.val = encode_preferences(t.lm.tok, t.corpus.validation)  # type: ignore[arg-type,attr-defined]
        self.num_neg = {c: int(self.hello[c][spec.NUM_NEGATIVES]) for c in self.client_ids}
        self._w_prev, self.selections = None, {}

    def margin(self, weights, grad: bool = False):
        """``J`` at ``weights`` (and its gradient as arrays in parameter order)."""
        import torch

        from fedrec.algorithms.u2a import objective_grad, preference_margin
        from fedrec.lmtask import load_model

        m = load_model(self.cfg, weights)
        if not grad:
            with torch.no_grad():
                return float(preference_margin(m, *self.val)), None
        g = objective_grad(m, lambda mm: preference_margin(mm, *self.val))
        with torch.no_grad():
            J = float(preference_margin(m, *self.val))
        return J, [v.numpy().astype(np.float32) for v in g.values()]

    def train_phase(
        self, grid, server_round, weights, clients, extra_config=None, *, transform=None
    ):
        if server_round <= self.sft_rounds or transform is not None:
            return super().train_phase(
                grid, server_round, weights, clients, extra_config, transform=transform
            )
        return self.align_phase(grid, server_round, weights, clients)

    def align_phase(self, grid, rnd: int, weights, clients):
        import torch

        from fedrec.algorithms.u2a import greedy_select, mirror_descent

        p = self.params
        self.current_weights = weights
        first = int(rnd == self.sft_rounds + 1)
        clients = [c for c in sorted(clients) if self.num_neg.get(c, 0) > 0]
        pairs = [(c, i) for c in clients for i in range(self.num_neg[c])]
        if first and p.trace and self.stage_dir is not None:
            from pathlib import Path

            d = Path(self.stage_dir) / "u2a_trace"
            d.mkdir(parents=True, exist_ok=True)
            np.savez(d / "round-0.npz", *weights)  # the fine-tuned assistant
        J0, gJ = self.margin(weights, grad=p.selection == "u2a")
        metrics: dict[str, Any] = {"val_margin_before": J0}
        if p.selection == "dpo":
            plan = {c: (np.arange(self.num_neg[c]), np.full(self.num_neg[c], 1.0)) for c in clients}
        else:
            n = len(pairs)
            if p.selection == "u2a":
                assert gJ is not None
                cfg = {
                    "loss": p.loss,
                    "score": p.score,
                    "beta": p.beta,
                    "cg-iters": p.cg_iters,
                    "damping": p.damping,
                    "first": first,
                }
                scored = self.communicate(
                    grid, "query.u2a_score", clients, rnd, [*weights, *gJ], cfg
                )
                by_c = {
                    r.client_id: np.asarray(r.metrics[spec.SCORES], dtype=np.float64)
                    for r in scored
                }
                scores = torch.as_tensor(
                    np.concatenate([by_c.get(c, np.full(self.num_neg[c], np.nan)) for c in clients])
                )
                scores = torch.nan_to_num(scores, nan=-np.inf)
                sel = greedy_select(
                    torch.where(torch.isfinite(scores), scores, torch.zeros_like(scores)), p.budget
                )
                prev = None
                if self._w_prev is not None:
                    prev = torch.as_tensor(
                        [self._w_prev.get(pr, 0.0) for pr in pairs], dtype=torch.float64
                    )
                w = mirror_descent(
                    prev, torch.where(torch.isfinite(scores), scores, 0.0), sel, p.eta
                )
                self._w_prev = {f"{pairs[i][0]}:{pairs[i][1]}": float(w[i]) for i in sel.tolist()}
                metrics["num_positive"] = int((scores > 0).sum())
            elif p.selection == "all":
                sel = torch.arange(n)
                w = torch.full((n,), 1.0 / max(n, 1), dtype=torch.float64)
            else:  # random
                rng = np.random.default_rng(derive_seed(self.cfg.seed, "u2a-random", rnd) % 2**63)
                sel = torch.as_tensor(np.sort(rng.choice(n, min(p.budget, n), replace=False)))
                w = torch.zeros(n, dtype=torch.float64)
                w[sel] = 1.0 / max(len(sel), 1)
            lists: dict[int, tuple[list[int], list[float]]] = {}
            for i in sel.tolist():
                c, j = pairs[i]
                ids, ws = lists.get(c, ([], []))
                lists[c] = ([*ids, j], [*ws, float(w[i])])
            plan = {
                c: (np.asarray(a, dtype=np.int64), np.asarray(b)) for c, (a, b) in lists.items()
            }
            self.selections = dict(self.selections or {})
            self.selections[rnd] = [
                [int(c), int(j), float(x)]
                for c, (a, b) in sorted(plan.items())
                for j, x in zip(a, b)
            ]
        replies: list[ClientReply] = []
        agg: list[float] = []
        for c in sorted(plan):
            idx_c, w_c = plan[c]
            cfg = {spec.ALIGN: 1, spec.IDX: idx_c, spec.WEIGHTS: w_c, "first": first}
            if p.selection == "dpo":
                cfg[spec.DPO] = 1
            got = [
                r
                for r in self.communicate(grid, "train", [c], rnd, weights, cfg)
                if r.weights is not None
            ]
            replies += got
            agg += [float(np.sum(w_c))] * len(got)
        if replies and sum(agg) > 0:
            weights = weighted_average([r.weights for r in replies], agg)  # type: ignore[misc]
        metrics.update(
            {
                "num-clients": len(replies),
                "num-selected": int(sum(len(a) for a, _ in plan.values())),
            }
        )
        if p.trace and self.stage_dir is not None:
            from pathlib import Path

            d = Path(self.stage_dir) / "u2a_trace"
            d.mkdir(parents=True, exist_ok=True)
            np.savez(d / f"round-{rnd - self.sft_rounds}.npz", *weights)
        return list(weights), metrics, replies, list(getattr(self, "_last_failures", []))

    def evaluation_metrics(self, replies):
        fm = super().evaluation_metrics(replies)
        if fm is None:
            return None
        n = sum(float(r.metrics.get("gen-n", 0)) for r in replies)
        if n:
            fm.overall["banned_rate"] = (
                sum(float(r.metrics.get("gen-banned", 0)) for r in replies) / n
            )
            fm.overall["refusal_rate"] = (
                sum(float(r.metrics.get("gen-refusal", 0)) for r in replies) / n
            )
        return fm

    def after_evaluate(self, server_round, record, grid) -> None:
        if record.evaluation is not None:
            record.evaluation.overall["val_margin"] = self.margin(
                self.result.arrays.to_numpy_ndarrays()
            )[0]

    def write_outputs(self, out_dir) -> None:
        from pathlib import Path

        if self.selections:
            (Path(out_dir) / "u2a_selection.json").write_text(
                json.dumps({str(k): v for k, v in sorted(self.selections.items())})
            )

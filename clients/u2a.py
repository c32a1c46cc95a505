"""Client half of ``u2a`` (:mod:`fedrec.strategies.u2a`); see :class:`U2AClient`.

What leaves a client: ``fedlm``'s handshake plus its number of candidate negatives, the model
weights with the example count (and in fine-tuning rounds the mean loss) in ``train``, one
score per candidate negative in ``query.u2a_score`` (not the negatives, not their gradients),
and in ``evaluate`` ``fedlm``'s per-split sums plus the counts of greedy answers with a banned
word and of refusals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedrec.clients.base import Metrics, Weights
from fedrec.clients.fedlm import LMClient, _model
from fedrec.config import RunConfig
from fedrec.models import get_weights
from fedrec.seeding import derive_seed
from fedrec.specs import u2a as spec

REF_NEG = "u2a.ref-neg"  # NPO's reference log-probs of the negatives (the fine-tuned model)
REF_CHOSEN = "u2a.ref-chosen"  # DPO's reference log-probs of the chosen answers
#: at most this many kept answers enter GradDiff's retain batch and CG's curvature
RETAIN_CAP = 64


class U2AClient(LMClient):
    """A client holding its people's assistant data: SFT documents (chosen answers and the
    bad responses it produced), and candidate negatives (bad responses flagged locally).

    What leaves it, besides :class:`LMClient`'s replies: ``query.u2a_score`` → one score
    per candidate negative (``-<v, grad l_u>``, ``v`` = the broadcast ``grad J`` or its
    ``H^{-1}``-preconditioned version with ``H`` from the client's own kept answers);
    alignment ``train`` → the weights after weighted unlearning of the negatives the server
    selected (or DPO on its pairs). In ``evaluate`` also the counts of greedy answers with a
    banned word and of refusals over its prompts.
    """

    def __init__(self, cfg: RunConfig, client_id: int, state: dict[str, np.ndarray]):
        from fedrec.lmtask import u2a_task
        from fedrec.strategies.u2a import U2A

        super().__init__(cfg, client_id, state)
        self.p = U2A.parse_params(cfg)
        self.u2a = u2a_task(cfg, self.p)

    def training_documents(self) -> list[str]:
        return self.u2a.documents(self.client_id)

    def hello(self) -> Metrics:
        out = super().hello()
        out[spec.NUM_NEGATIVES] = len(self.u2a.negatives(self.client_id))
        out["num-train"] = len(self.training_documents())
        return out

    def _negatives(self):
        from fedrec.models.causal_lm import encode_qa

        negs = self.u2a.negatives(self.client_id)
        if not negs:
            return None
        return encode_qa(self.task.tok, [(n.prompt, n.response) for n in negs])  # type: ignore[arg-type]

    def _kept(self):
        from fedrec.models.causal_lm import encode_qa

        pairs = self.u2a.chosen(self.client_id)
        rng = np.random.default_rng(derive_seed(self.cfg.seed, "u2a-kept", self.client_id) % 2**63)
        if len(pairs) > RETAIN_CAP:
            pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), RETAIN_CAP, replace=False))]
        return encode_qa(self.task.tok, pairs) if pairs else None  # type: ignore[arg-type]

    def _ref(self, model, ids, mask, key_name: str, config) -> torch.Tensor:
        from fedrec.algorithms.lm_unlearning import answer_logprob

        if int(config.get("first", 0)) or key_name not in self.state:
            with torch.no_grad():
                self.state[key_name] = answer_logprob(model, ids, mask).numpy()
        return torch.as_tensor(self.state[key_name], dtype=torch.float32)

    def query(self, action, server_round, weights, config):
        if action == "u2a_score":
            return None, self.score(weights, config)
        return super().query(action, server_round, weights, config)

    def score(self, arrays: Weights, config: dict[str, Any]) -> Metrics:
        from fedrec.algorithms.u2a import score_negatives

        k = len(arrays) // 2
        model = _model(self.cfg, arrays[:k])
        enc = self._negatives()
        if enc is None:
            return {spec.SCORES: np.zeros(0)}
        ids, mask = enc
        names = [n for n, _ in model.named_parameters()]
        grad_J = {
            n: torch.as_tensor(np.asarray(a, dtype=np.float32)) for n, a in zip(names, arrays[k:])
        }
        ref = self._ref(model, ids, mask, REF_NEG, config)
        s = score_negatives(
            model,
            str(config["loss"]),
            ids,
            mask,
            grad_J,
            ref_lp=ref,
            beta=float(config["beta"]),
            score=str(config["score"]),
            curvature=self._kept(),
            cg_iters=int(config["cg-iters"]),
            damping=float(config["damping"]),
        )
        return {spec.SCORES: s.numpy().astype(np.float64)}

    def fit(self, server_round: int, weights: Weights, config: dict[str, Any]):
        if not int(config.get(spec.ALIGN, 0)):
            return super().fit(server_round, weights, config)
        from fedrec.algorithms.lm_unlearning import unlearn

        model = _model(self.cfg, weights)
        enc = self._negatives()
        if enc is None:
            return get_weights(model), {spec.NUM_EXAMPLES: 0}
        ids, mask = enc
        p = self.p
        seed = derive_seed(self.cfg.seed, "u2a", server_round, self.client_id) % 2**63
        if int(config.get(spec.DPO, 0)):
            return self._dpo(model, ids, mask, config, seed)
        ref = self._ref(model, ids, mask, REF_NEG, config)
        idx = np.asarray(config[spec.IDX], dtype=np.int64)
        w = np.asarray(config[spec.WEIGHTS], dtype=np.float64)
        if len(idx) == 0:
            return get_weights(model), {spec.NUM_EXAMPLES: 0}
        kept = self._kept()
        t = torch.as_tensor(idx)
        unlearn(
            model,
            ids[t],
            mask[t],
            kind=p.loss,
            steps=p.align_steps,
            batch_size=len(idx),
            lr=p.align_lr,
            weights=torch.as_tensor(w, dtype=torch.float32),
            r_ids=kept[0] if kept else None,
            r_mask=kept[1] if kept else None,
            ref_lp=ref[t],
            beta=p.beta,
            alpha=p.alpha,
            seed=seed,
        )
        return get_weights(model), {spec.NUM_EXAMPLES: len(idx)}

    def _dpo(self, model, ids, mask, config, seed):
        """The DPO baseline: ``align-steps`` Adam steps on all the client's (chosen,
        negative) pairs, reference = the fine-tuned model (stored at the first round)."""
        from fedrec.algorithms.u2a import dpo_loss
        from fedrec.models.causal_lm import encode_qa

        negs = self.u2a.negatives(self.client_id)
        # DPO needs pairs: the chosen answer of each flagged prompt (the assistant's curated
        # answer; with iid documents the client's own SFT share may not contain it)
        chosen = dict(self.u2a.corpus.chosen)  # type: ignore[attr-defined]
        L = ids.shape[1]
        c_ids, c_mask = encode_qa(self.task.tok, [(n.prompt, chosen[n.prompt]) for n in negs])  # type: ignore[arg-type]
        T = max(L, c_ids.shape[1])
        pad = lambda x: torch.nn.functional.pad(x, (0, T - x.shape[1]))  # noqa: E731
        ids, mask, c_ids, c_mask = pad(ids), pad(mask), pad(c_ids), pad(c_mask)
        ref_r = self._ref(model, ids, mask, REF_NEG, config)
        ref_c = self._ref(model, c_ids, c_mask, REF_CHOSEN, config)
        opt = torch.optim.Adam(model.parameters(), lr=self.p.align_lr)
        model.train()
        for _ in range(self.p.align_steps):
            loss = dpo_loss(model, c_ids, c_mask, ids, mask, ref_c, ref_r, self.p.beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        return get_weights(model), {spec.NUM_EXAMPLES: len(negs)}

    def evaluate(self, server_round: int, weights: Weights, config: dict[str, Any]) -> Metrics:
        from fedrec.algorithms.u2a import banned_rate, generate_answers
        from fedrec.data.factworld import REFUSAL

        out = super().evaluate(server_round, weights, config)
        prompts = [q for q, _ in self.u2a.prompts(self.client_id)]
        if prompts:
            model = _model(self.cfg, weights)
            ans = generate_answers(model, self.task.tok, prompts)  # type: ignore[arg-type]
            out["gen-banned"] = int(round(banned_rate(ans) * len(ans)))
            out["gen-refusal"] = sum(a == REFUSAL for a in ans)
            out["gen-n"] = len(ans)
        return out

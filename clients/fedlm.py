"""Client half of ``fedlm`` (:mod:`fedrec.strategies.fedlm`); see :class:`LMClient`.

What leaves a client: in the handshake its numbers of training documents, trained facts and
held-out facts, the vocabulary size and context length; in ``train`` the full model weights,
the document count and the mean loss; in ``evaluate`` per split sums of answer NLL, exact
matches and counts (never a text); in the unlearning actions a five-number MRD summary
(``query.lm_mrd``) or the weights after local unlearning and the forgotten-fact count
(``query.lm_unlearn``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedrec.clients.base import ClientHalf, Metrics, Weights
from fedrec.config import RunConfig
from fedrec.models import get_weights, set_weights
from fedrec.seeding import derive_seed
from fedrec.specs import fedlm as spec
from fedrec.unlearning.client import FORGET_USERS

#: private client state: per-forgotten-fact MRD scores and NPO's reference log-probs
MRD_STATE = "lm.mrd"
REF_STATE = "lm.ref-lp"

_MODELS: dict = {}


def _model(cfg: RunConfig, weights: Weights):
    """The process's model of the run's shape, loaded with ``weights``."""
    from fedrec.lmtask import build_model, lm_task, model_params

    k = (model_params(cfg), lm_task(cfg).context, cfg.dataset.options)
    if k not in _MODELS:
        _MODELS.clear()
        _MODELS[k] = build_model(cfg)
    m = _MODELS[k]
    set_weights(m, [np.asarray(w, dtype=np.float32) for w in weights])
    return m.eval()


class LMClient(ClientHalf):
    """A client holding the documents of its fact-world people.

    What leaves it: after training, the model weights, the document count and the mean
    loss; after evaluation, sums of answer NLL, exact matches and counts per split (never
    a text); for ``query.lm_mrd`` a five-number summary of its forgotten facts' log10 MRD
    (the per-fact scores stay in its private state); for ``query.lm_unlearn`` the weights
    after its local unlearning steps and the number of facts it forgets. Documents of
    people in its forget records (``unlearn.users``) are never trained on again.
    """

    unlearning_actions = ("lm_mrd", "lm_unlearn")

    def __init__(self, cfg: RunConfig, client_id: int, state: dict[str, np.ndarray]):
        from fedrec.lmtask import lm_task

        super().__init__(cfg, client_id, state)
        self.task = lm_task(cfg)

    @classmethod
    def owned_users(cls, cfg: RunConfig, client_id: int) -> np.ndarray:
        from fedrec.lmtask import lm_task

        return lm_task(cfg).people(client_id).astype(np.int64)

    @property
    def forgotten(self) -> np.ndarray:
        return np.asarray(self.state.get(FORGET_USERS, []), dtype=np.int64)

    def hello(self) -> Metrics:
        t = self.task
        return {
            spec.NUM_TRAIN: len(t.documents(self.client_id)),
            spec.NUM_FACTS: len(t.facts(self.client_id, "train")),
            spec.NUM_TEST: len(t.facts(self.client_id, "test")),
            spec.VOCAB: len(t.tok),  # type: ignore[arg-type]
            spec.CONTEXT: t.context,
        }

    def fit(
        self, server_round: int, weights: Weights, config: dict[str, Any]
    ) -> tuple[Weights, Metrics]:
        from fedrec.models.causal_lm import train_lm

        tr = self.cfg.train
        docs = self.training_documents()
        model = _model(self.cfg, weights)
        if not docs:
            return get_weights(model), {spec.NUM_EXAMPLES: 0, spec.TRAIN_LOSS: 0.0}
        seqs = [self.task.tok.encode(d, bos=True, eos=True) for d in docs]  # type: ignore[attr-defined]
        losses = train_lm(
            model,
            seqs,
            epochs=int(config.get("local-epochs", tr.local_epochs)),
            batch_size=tr.batch_size,
            lr=float(config.get("lr", tr.lr)),
            seed=derive_seed(self.cfg.seed, "train", server_round, self.client_id) % 2**63,
            optimizer=tr.optimizer,
            weight_decay=tr.weight_decay,
        )
        return get_weights(model), {spec.NUM_EXAMPLES: len(docs), spec.TRAIN_LOSS: losses[-1]}

    def training_documents(self) -> list[str]:
        """The documents :meth:`fit` trains on (without the forgotten people's)."""
        return self.task.documents(self.client_id, self.forgotten)

    def _encoded(self, which: str, held: bool = False):
        """Encoded facts: those the client evaluates (:meth:`LMTask.facts`), or with
        ``held`` those it holds documents of (``train`` = kept, ``forgot``)."""
        from fedrec.models.causal_lm import encode_qa

        if held:
            kind = "kept" if which == "train" else "forgot"
            facts = self.task.held_facts(self.client_id, kind, self.forgotten)
        else:
            facts = self.task.facts(self.client_id, which, self.forgotten)
        if not facts:
            return None
        return encode_qa(self.task.tok, [(f.question, f.answer) for f in facts])  # type: ignore[arg-type]

    def evaluate(self, server_round: int, weights: Weights, config: dict[str, Any]) -> Metrics:
        from fedrec.models.causal_lm import sequence_nll, teacher_forced_match

        model = _model(self.cfg, weights)
        out: Metrics = {}
        with torch.no_grad():
            for split in spec.EVAL_SPLITS:
                enc = self._encoded(split)
                if enc is None:
                    continue
                ids, mask = enc
                out[spec.eval_key(split, "nll-sum")] = float(sequence_nll(model, ids, mask).sum())
                out[spec.eval_key(split, "em")] = int(teacher_forced_match(model, ids, mask).sum())
                out[spec.eval_key(split, "n")] = len(ids)
        return out

    def query(self, action, server_round, weights, config):
        if action == "lm_mrd":
            return None, self.mrd(weights, config)
        if action == "lm_unlearn":
            return self.unlearn(weights, config)
        return super().query(action, server_round, weights, config)

    def mrd(self, weights: Weights, config: dict[str, Any]) -> Metrics:
        """MRD of the forgotten facts with the broadcast perturbation seed (common random
        numbers across clients); keeps the scores, replies a summary of log10 MRD."""
        from fedrec.algorithms.lm_unlearning import qa_mrd

        enc = self._encoded("forgot", held=True)
        if enc is None:
            return {spec.MRD_SUMMARY_KEYS[0]: 0}
        model = _model(self.cfg, weights)
        mrd, _ = qa_mrd(
            model,
            enc[0],
            enc[1],
            K=int(config[spec.MRD_K]),
            sigma=float(config[spec.MRD_SIGMA]),
            seed=int(config[spec.MRD_SEED]),
        )
        self.state[MRD_STATE] = mrd.numpy().astype(np.float64)
        lg = np.log10(mrd.numpy())
        q = np.quantile(lg, [0.25, 0.5, 0.75])
        return dict(zip(spec.MRD_SUMMARY_KEYS, [len(lg), float(lg.mean()), *map(float, q)]))

    def unlearn(self, weights: Weights, config: dict[str, Any]) -> tuple[Weights, Metrics]:
        """Local GA / GradDiff / NPO steps on the forgotten facts (uniform or MRD-weighted
        sampling; the temperature continues across rounds via step-offset / total-steps)."""
        from fedrec.algorithms.lm_unlearning import answer_logprob, unlearn

        enc = self._encoded("forgot", held=True)
        model = _model(self.cfg, weights)
        if enc is None:
            return get_weights(model), {spec.NUM_EXAMPLES: 0}
        ids, mask = enc
        offset = int(config["step-offset"])
        if offset == 0 or REF_STATE not in self.state:  # NPO's reference: the model as served
            with torch.no_grad():
                self.state[REF_STATE] = answer_logprob(model, ids, mask).numpy()
        ref = torch.as_tensor(self.state[REF_STATE], dtype=torch.float32)
        sampling = str(config["sampling"])
        mrd = self.state.get(MRD_STATE)
        if sampling == "mrd" and (mrd is None or len(mrd) != len(ids)):
            raise ValueError("lm_unlearn with sampling 'mrd' needs a preceding lm_mrd query")
        r = self._encoded("train", held=True)
        unlearn(
            model,
            ids,
            mask,
            kind=str(config["loss"]),
            steps=int(config["steps"]),
            batch_size=int(config["batch-size"]),
            lr=float(config["lr"]),
            sampling=sampling,
            mrd=torch.as_tensor(mrd) if mrd is not None else None,
            tau0=float(config["tau0"]),
            tau_end=float(config["tau-end"]),
            r_ids=r[0] if r else None,
            r_mask=r[1] if r else None,
            ref_lp=ref,
            beta=float(config["beta"]),
            alpha=float(config["alpha"]),
            seed=derive_seed(int(config["seed"]), "client", self.client_id) % 2**63,
            step_offset=offset,
            total_steps=int(config["total-steps"]),
        )
        return get_weights(model), {spec.NUM_EXAMPLES: len(ids)}

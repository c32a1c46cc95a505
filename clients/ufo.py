"""Client half of ``ufo`` (the item-token LLM-based recommender and its self-play).

A logical client is a silo of ``users-per-client`` federated users
(:class:`fedrec.recsys.item_lm.ItemLMTask`); their sequences never leave it.

What leaves a client:

- handshake: numbers of users, training interactions and items;
- ``query.ufo_hist``: the histogram over item groups of its users' SFT targets (G
  counts; summed by the server into the ideal ``GP``);
- train: the locally trained model (FedAvg), the number of training targets or
  self-play prompts, the mean loss and (self-play) the judger margin;
- ``query.ufo_judge``: the top-10 group exposure counts (G) of the served policy on its
  users' validation prompts;
- ``query.ufo_mass``: per user, the group shares of the pre-trained and of the
  fine-tuned model's next-item distributions on the validation prompt (the covariance
  diagnostic's bootstrap needs users as units; a measurement of the simulation, like
  the evaluation replies);
- evaluate: per-user ranking metrics and top-K lists.

Randomness (prompts, fair targets, opponent samples, batch order) is seeded by (run
seed, round, client).
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec import protocol
from fedrec.algorithms import ufo as algo
from fedrec.clients.ranking import CohortClient, ranking_replies, rerank
from fedrec.models import get_weights, set_weights
from fedrec.recsys import item_lm
from fedrec.seeding import derive_seed
from fedrec.specs import ranking as ranking_spec
from fedrec.specs import ufo as spec


class UFOClient(CohortClient):
    """Next-item SFT and the self-play corrector on a silo's sequences."""

    Params = spec.UFOParams

    @classmethod
    def _task(cls, cfg, p):
        d = cfg.dataset
        return item_lm.item_lm_task(d.name, d.options, p.public_fraction, cfg.seed, d.split)

    @classmethod
    def owned_users(cls, cfg, client_id):
        p = cls.params(cfg)
        return cls._task(cfg, p).client_users(client_id, p.users_per_client)

    @classmethod
    def _model(cls, p, task, weights):
        model = item_lm.build_model(
            task.num_items, p.d_model, p.n_layers, p.n_heads, p.context, seed=0
        )
        if weights is not None:
            set_weights(model, [np.asarray(a) for a in weights])
        model.eval()
        return model

    @classmethod
    def handle_cohort(cls, cfg, message_type, server_round, weights, config, states):
        p = cls.params(cfg)
        task = cls._task(cfg, p)
        ud = task.ud
        per = {c: task.client_users(c, p.users_per_client) for c in sorted(states)}
        if message_type == protocol.HELLO:
            return {
                c: (
                    None,
                    {
                        ranking_spec.NUM_USERS: len(us),
                        ranking_spec.NUM_ITEMS: ud.num_items,
                        ranking_spec.NUM_TRAIN: int(ud.train.lengths[us].sum()),
                        ranking_spec.NUM_TEST: int((ud.test.lengths[us] > 0).sum()),
                    },
                )
                for c, us in per.items()
            }
        if message_type == f"query.{spec.HIST}":
            groups = np.asarray(config[spec.ITEM_GROUP], dtype=np.int64)
            G = int(groups.max()) + 1
            return {
                c: (
                    [
                        np.bincount(
                            groups[np.concatenate([ud.train_seq[u] for u in us])], minlength=G
                        ).astype(np.float64)
                    ],
                    {},
                )
                for c, us in per.items()
            }
        if message_type == "train":
            return {
                c: cls._train(cfg, p, task, server_round, weights, config, c, us)
                for c, us in per.items()
            }
        users = np.concatenate(list(per.values()))
        owner = np.concatenate([np.full(len(us), c) for c, us in per.items()])
        if message_type == "evaluate":
            return cls._evaluate(p, task, weights, config, users, owner)
        if message_type == f"query.{spec.JUDGE}":
            return cls._judge(p, task, weights, config, per)
        if message_type == f"query.{spec.MASS}":
            return cls._mass(p, task, weights, config, per)
        raise ValueError(f"ufo clients do not handle '{message_type}'")

    # ------------------------------------------------------------------ serving
    @classmethod
    def _served_logp(cls, p, task, weights, config, prompts) -> torch.Tensor:
        """Next-item log-probs of the served policy ``pi^a pi_ref^(1-a)``."""
        with torch.no_grad():
            lp = item_lm.next_item_logprobs(cls._model(p, task, weights), prompts)
            ref = spec.unpack_model("ref", config)
            a = float(config.get(spec.SERVE, 1.0))
            if ref is not None and a < 1.0:
                lp_ref = item_lm.next_item_logprobs(cls._model(p, task, ref), prompts)
                lp = algo.geometric_mixture(lp, lp_ref, a)
        return lp

    @classmethod
    def _prompts(cls, p, task, users, split):
        seqs = task.ud.sequences(split)
        return [item_lm.prompt(seqs[u], p.context) for u in users]

    @classmethod
    def _evaluate(cls, p, task, weights, config, users, owner, split="test"):
        ud = task.ud
        scores = cls._served_logp(p, task, weights, config, cls._prompts(p, task, users, split))
        scores = rerank(ud, users, owner, scores.numpy(), config, split)
        return ranking_replies(ud, users, owner, scores, config, split)

    @classmethod
    def _judge(cls, p, task, weights, config, per):
        from fedrec.metrics.ranking import topk_items

        ud = task.ud
        groups = np.asarray(config[spec.ITEM_GROUP], dtype=np.int64)
        G = int(groups.max()) + 1
        hist = ud.history("valid")
        out = {}
        for c, us in per.items():
            lp = cls._served_logp(p, task, weights, config, cls._prompts(p, task, us, "valid"))
            s = lp.numpy().copy()
            for j, u in enumerate(us):
                s[j, hist[u]] = -np.inf
            top = topk_items(s, 10)
            counts = np.bincount(groups[top[top >= 0]], minlength=G).astype(np.float64)
            out[c] = ([counts], {spec.NUM_EXAMPLES: len(us)})
        return out

    @classmethod
    def _mass(cls, p, task, weights, config, per):
        from fedrec.metrics.ranking import group_mass, group_membership

        groups = np.asarray(config[spec.ITEM_GROUP], dtype=np.int64)
        M = group_membership(groups, int(groups.max()) + 1)
        pre_w = spec.unpack_model("pre", config)
        out = {}
        for c, us in per.items():
            prompts = cls._prompts(p, task, us, "valid")
            with torch.no_grad():
                post = item_lm.next_item_logprobs(cls._model(p, task, weights), prompts)
                pre = item_lm.next_item_logprobs(cls._model(p, task, pre_w), prompts)
            out[c] = (
                [
                    group_mass(pre.numpy(), M, log=True, normalize=True),
                    group_mass(post.numpy(), M, log=True, normalize=True),
                ],
                {spec.NUM_EXAMPLES: len(us)},
            )
        return out

    # ------------------------------------------------------------------ training
    @classmethod
    def _train(cls, cfg, p, task, rnd, weights, config, c, us):
        t = cfg.train
        stage = str(config[spec.STAGE])
        model = cls._model(p, task, weights)
        seed = derive_seed(cfg.seed, "ufo-train", rnd, c)
        if stage == spec.HOLD:
            return [np.asarray(a) for a in weights], {spec.NUM_EXAMPLES: 0, spec.TRAIN_LOSS: 0.0}
        if stage == spec.SFT:
            seqs = [w for u in us for w in item_lm.windows(task.ud.train_seq[u], p.context)]
            wt = config.get(spec.ITEM_WEIGHT)
            loss = item_lm.train_next_item(
                model,
                seqs,
                epochs=t.local_epochs,
                batch_size=t.batch_size,
                lr=t.lr,
                seed=seed,
                item_weight=None if wt is None else np.asarray(wt, dtype=np.float64),
            )
            n = int(sum(len(s) - 1 for s in seqs))
            return get_weights(model), {spec.NUM_EXAMPLES: n, spec.TRAIN_LOSS: loss}
        prompts, pos, neg, old = cls._self_play_data(p, task, config, stage, us, seed)
        if not prompts:
            return get_weights(model), {spec.NUM_EXAMPLES: 0, spec.TRAIN_LOSS: 0.0}
        loss, margin = item_lm.train_pairwise(
            model,
            old,
            prompts,
            pos,
            neg,
            beta=p.beta,
            epochs=t.local_epochs,
            batch_size=p.corrector_batch or t.batch_size,
            lr=p.corrector_lr,
            seed=seed,
            nll_weight=1.0 if stage == spec.SPREC else 0.0,
        )
        return get_weights(model), {
            spec.NUM_EXAMPLES: len(prompts),
            spec.TRAIN_LOSS: loss,
            spec.MARGIN: margin,
        }

    @classmethod
    def _self_play_data(cls, p, task, config, stage, us, seed):
        """Prompts, targets ``y+`` (n,), opponent samples ``y-`` (n, m) and the opponent's
        next-item log-probs ``log pi_t`` (n, n_items) of the prompts."""
        ud = task.ud
        rng = np.random.default_rng(seed)
        groups = np.asarray(config[spec.ITEM_GROUP], dtype=np.int64)
        fair_w = np.asarray(config[spec.FAIR_W], dtype=np.float64)
        prompts, pos, seen = [], [], []
        for u in us:
            s = np.asarray(ud.train_seq[u], dtype=np.int64)
            if len(s) < 2:
                continue
            if stage == spec.UFO and p.fair_targets == "next":
                # the SFT targets resampled toward the fair group distribution
                w = fair_w[groups[s[1:]]]
                prob = w / w.sum() if w.sum() > 0 else None
                cuts = 1 + rng.choice(len(s) - 1, size=p.prompts_per_user, p=prob)
            else:
                cuts = rng.integers(1, len(s), size=p.prompts_per_user)
            for t in cuts:
                prompts.append(item_lm.prompt(s[:t], p.context))
                if stage == spec.UFO and p.fair_targets == "horizon":
                    cand = s[t : t + p.horizon]
                    y = int(algo.sample_fair_targets(cand, groups[cand], fair_w, 1, rng)[0])
                else:
                    y = int(s[t])
                pos.append(y)
                seen.append(np.unique(np.append(s[max(0, t - p.context + 1) : t], y)))
        if not prompts:
            return [], np.zeros(0, np.int64), np.zeros((0, 1), np.int64), None
        opp = cls._model(p, task, spec.unpack_model("opp", config))
        with torch.no_grad():
            lp = item_lm.next_item_logprobs(opp, prompts)
            if stage == spec.UFO:
                ref = cls._model(p, task, spec.unpack_model("ref", config))
                lp_mix = algo.geometric_mixture(
                    lp, item_lm.next_item_logprobs(ref, prompts), p.alpha
                )
                gen = torch.Generator().manual_seed(int(seed) % 2**63)
                neg = algo.sample_from_logprobs(lp_mix, p.negatives, gen, exclude=seen).numpy()
            else:  # SPRec: the previous model's top prediction
                masked = lp.clone()
                for j, ex in enumerate(seen):
                    masked[j, torch.as_tensor(ex)] = -torch.inf
                neg = masked.argmax(-1, keepdim=True).numpy()
        return prompts, np.asarray(pos, dtype=np.int64), np.asarray(neg, dtype=np.int64), lp

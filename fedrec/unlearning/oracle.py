"""The simulation-only completeness oracle: membership inference against the served model.

This is an **evaluator**, not part of any client or strategy data path: it reads the
dataset directly (as an attacker who knows the candidate data would) and is only called
by the unlearning session's verification step in a simulation. Its choices:

- **Classifiers** (a forgotten client): the loss-based MIA of the survey (§5.4). The score
  of a row is its negated cross-entropy under the served model; the forgotten client's
  training rows (members before unlearning) are compared with its test rows, which no
  model ever saw. ``mia_auc`` is the AUC of that separation (ideal: Retrain's, about 0.5),
  ``mia_tpr@1%fpr`` the TPR at 1 % FPR, ``forget_accuracy`` the accuracy on the
  forgotten rows.
- **MF** (``fedmf``): the user embedding left with its client, so the attacker **folds
  in** a user: it fits a user vector to the served item matrix on the user's training
  items (``FOLD_IN_EPOCHS`` of BPR, seeded) and scores how well the item matrix explains
  them (mean ``log sigma(p . (q_pos - q_neg))``, fresh negatives).

  - ``users`` / ``client`` requests: forgotten users vs the ``never-seen`` users (held out
    of every model; without them the user-level metrics are not computed). ``mia_auc`` is
    this user-level AUC; ``rec_mia_auc`` the CCS'21 attack (Zhang et al.): features =
    centroid of the top-20 recommended items' vectors minus the centroid of the interacted
    items', an MLP trained on shadow users (retained users = members, half the never-seen
    users = non-members; the shadow model is the served model itself, a simplification of
    the paper's separately trained shadow recommender), tested on the forgotten users vs
    the other half of the never-seen users.
  - ``interactions`` requests: per forgetting user, the vector is folded in on its
    *kept* training items; ``pair_mia_auc`` separates the forgotten pairs' scores from the
    user's held-out (valid + test) pairs, which no model saw.

  A SISA ensemble is attacked through each user's own shard's item matrix.

- **Language models** (``fedlm``; ``users`` requests name fact-world people): the LOSS
  attack on the served model, scores = negated mean answer NLL: the forgotten people's
  facts (members before unlearning) against the held-out people's facts (never trained).
  ``mia_auc``, ``mia_tpr@1%fpr``, ``forget_em`` (greedy exact match on the forgotten facts)
  and ``forget_nll``. The full LM report (truth ratio, forget quality, zlib / Min-K,
  per-MRD quartile) is :mod:`fedrec.unlearning.lm_eval`, used by ``experiments/mrd``.

Other strategies (FedSASRec) get no oracle metrics yet.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrec.seeding import derive_seed
from fedrec.unlearning.metrics import mia_auc, mia_tpr_at_fpr, recommender_mia_auc

FOLD_IN_EPOCHS = 10


def completeness(strategy, weights, requests, session) -> dict[str, float]:
    name = getattr(strategy, "name", "")
    if name in ("fedlm", "u2a"):
        return _lm(strategy, weights, requests)
    if name in ("fedmf", "raid", "lego"):
        return _mf(strategy, weights, requests, session)
    if hasattr(strategy, "ud"):
        return {}
    return _classifier(strategy, weights, requests, session)


def _lm(strategy, weights, requests) -> dict[str, float]:
    import torch

    from fedrec.lmtask import lm_task, load_model
    from fedrec.models.causal_lm import encode_qa, sequence_nll, teacher_forced_match

    t = lm_task(strategy.cfg)
    people = {int(u) for r in requests if r.kind == "users" for u in r.ids}
    forgot = [f for f in t.world.facts if f.person in people]  # type: ignore[attr-defined]
    held = [f for f in t.world.facts if f.split == "holdout"]  # type: ignore[attr-defined]
    if not forgot or not held:
        return {}
    model = load_model(strategy.cfg, weights)
    with torch.no_grad():
        fi, fm = encode_qa(t.tok, [(f.question, f.answer) for f in forgot])  # type: ignore[arg-type]
        hi, hm = encode_qa(t.tok, [(f.question, f.answer) for f in held])  # type: ignore[arg-type]
        f_nll = sequence_nll(model, fi, fm).numpy()
        h_nll = sequence_nll(model, hi, hm).numpy()
        em = float(teacher_forced_match(model, fi, fm).float().mean())
    return {
        "mia_auc": mia_auc(-f_nll, -h_nll),
        "mia_tpr@1%fpr": mia_tpr_at_fpr(-f_nll, -h_nll, 0.01),
        "forget_em": em,
        "forget_nll": float(f_nll.mean()),
    }


def _forgotten_clients(requests) -> list[int]:
    return sorted({int(c) for r in requests if r.kind == "client" for c in r.ids})


# ---------------------------------------------------------------- classifiers
def _classifier(strategy, weights, requests, session) -> dict[str, float]:
    from fedrec.models import set_weights
    from fedrec.tasks import initial_model, load_client_data
    from fedrec.training import predict_proba

    cfg = strategy.cfg
    clients = _forgotten_clients(requests)
    if not clients:
        return {}
    S = int(strategy.serving_config.get("sisa-shards", 1))
    alpha = np.asarray(strategy.serving_config.get("sisa-weights", np.full(S, 1.0 / S)))
    k = len(weights) // S
    fs, us, correct, n = [], [], 0, 0
    for c in clients:
        d = load_client_data(cfg, c)

        def proba(X, d=d):
            out = []
            for i in range(S):
                m = initial_model(cfg, d.num_features, d.num_classes)
                set_weights(m, weights[i * k : (i + 1) * k])
                out.append(alpha[i] * predict_proba(m, X))
            return np.sum(out, axis=0)

        ptr, pte = proba(d.X_train), proba(d.X_test)
        fs.append(np.log(np.clip(ptr[np.arange(len(d.y_train)), d.y_train], 1e-12, 1)))
        us.append(np.log(np.clip(pte[np.arange(len(d.y_test)), d.y_test], 1e-12, 1)))
        correct += int((ptr.argmax(1) == d.y_train).sum())
        n += len(d.y_train)
    f, u = np.concatenate(fs), np.concatenate(us)
    return {
        "mia_auc": mia_auc(f, u),
        "mia_tpr@1%fpr": mia_tpr_at_fpr(f, u, 0.01),
        "forget_accuracy": correct / max(n, 1),
        "forget_loss": float(-f.mean()),
    }


# ---------------------------------------------------------------- MF
def fold_in(ud, users, Q, cfg, p, tag: str = "oracle") -> np.ndarray:
    """User vectors fitted to the frozen ``Q`` on ``ud``'s training items."""
    from fedrec.algorithms import fedmf as algo

    users = np.asarray(users, dtype=np.int64)
    P0 = algo.init_users(derive_seed(cfg.seed, tag), 0, len(users), Q.shape[1], p.init_std)
    res = algo.local_step(
        ud,
        users,
        P0,
        Q,
        0,
        seed=derive_seed(cfg.seed, tag, "fit"),
        lr=cfg.train.lr,
        reg=p.reg,
        epochs=FOLD_IN_EPOCHS,
        batch_size=cfg.train.batch_size,
        negatives=1,
    )
    return res.P


def fit_scores(ud, users, P, Q, seed: int) -> np.ndarray:
    """Mean ``log sigma(p . (q_pos - q_neg))`` over each user's training items."""
    from fedrec.recsys.splits import sample_negatives

    out = np.full(len(users), np.nan)
    for j, u in enumerate(users):
        pos = ud.train[int(u)]
        if not len(pos):
            continue
        neg = sample_negatives(ud.num_items, np.unique(pos), len(pos), derive_seed(seed, int(u)))
        x = (Q[pos].astype(np.float64) - Q[neg].astype(np.float64)) @ P[j].astype(np.float64)
        out[j] = float(np.mean(-np.logaddexp(0.0, -x)))
    return out


def _user_Q(strategy, weights) -> dict[int, np.ndarray]:
    """The served item matrices by shard index (one, unless a SISA ensemble is served)."""
    S = int(strategy.serving_config.get("sisa-shards", 1))
    if S == 1:
        return {0: np.asarray(weights[0], dtype=np.float32)}
    return {k: np.asarray(weights[k], dtype=np.float32) for k in range(S)}


def _shard_of(strategy, users) -> np.ndarray:
    assign = strategy.serving_config.get("sisa-assign")
    if assign is None:
        return np.zeros(len(users), dtype=np.int64)
    upc = strategy.params.users_per_client
    return np.asarray(assign)[np.asarray(users) // upc]


def _folded(strategy, ud, users, weights, tag) -> tuple[np.ndarray, np.ndarray]:
    """Folded-in vectors and fit scores of ``users`` (each against its own served Q)."""
    Qs = _user_Q(strategy, weights)
    shard = _shard_of(strategy, users)
    P = np.zeros((len(users), next(iter(Qs.values())).shape[1]), dtype=np.float32)
    score = np.full(len(users), np.nan)
    for k, Q in Qs.items():
        m = shard == k
        if m.any():
            P[m] = fold_in(ud, users[m], Q, strategy.cfg, strategy.params, tag)
            score[m] = fit_scores(ud, users[m], P[m], Q, derive_seed(strategy.cfg.seed, tag, "s"))
    return P, score


def _mf(strategy, weights, requests, session) -> dict[str, Any]:
    from fedrec.unlearning import client as ul
    from fedrec.unlearning.session import never_seen_clients

    ud, cfg = strategy.ud, strategy.cfg
    out: dict[str, Any] = {}
    gone: set[int] = set()
    pairs: dict[int, set[int]] = {}
    for r in requests:
        if r.kind == "users":
            gone |= {int(u) for u in r.ids}
        elif r.kind == "client":
            for c in r.ids:
                gone |= {int(u) for u in strategy.owned_users(int(c))}
        elif r.kind == "interactions":
            for u, i in r.ids:
                pairs.setdefault(int(u), set()).add(int(i))
    ns_clients = never_seen_clients(len(strategy.node_of), cfg.unlearning.never_seen, cfg.seed)
    unseen = np.asarray(
        sorted({int(u) for c in ns_clients for u in strategy.owned_users(c)}), dtype=np.int64
    )
    if gone and len(unseen) >= 4:
        f_users = np.asarray(sorted(gone), dtype=np.int64)
        Pf, sf = _folded(strategy, ud, f_users, weights, "oracle")
        Pu, su = _folded(strategy, ud, unseen, weights, "oracle")
        ok_f, ok_u = np.isfinite(sf), np.isfinite(su)
        if ok_f.any() and ok_u.any():  # (a user whose SISA shard no longer exists: no model)
            out["mia_auc"] = mia_auc(sf[ok_f], su[ok_u])
            out["mia_tpr@1%fpr"] = mia_tpr_at_fpr(sf[ok_f], su[ok_u], 0.01)
            out.update(
                _ccs21(
                    strategy, ud, weights, f_users[ok_f], Pf[ok_f], unseen, Pu, gone | set(unseen)
                )
            )
    if pairs:
        users = np.asarray(sorted(pairs), dtype=np.int64)
        kept = ul.forget_view(ud, (), [(u, i) for u in pairs for i in pairs[u]], ())
        Qs = _user_Q(strategy, weights)
        shard = _shard_of(strategy, users)
        fsc, usc = [], []
        for k, Q in Qs.items():
            m = shard == k
            if not m.any():
                continue
            P = fold_in(kept, users[m], Q, cfg, strategy.params, "oracle-pairs")
            for j, u in enumerate(users[m]):
                fi = np.asarray(sorted(pairs[int(u)]), dtype=np.int64)
                ui = np.concatenate([ud.valid[int(u)], ud.test[int(u)]])
                fsc.append(Q[fi].astype(np.float64) @ P[j])
                usc.append(Q[ui].astype(np.float64) @ P[j])
        f, u_ = np.concatenate(fsc), np.concatenate(usc)
        if len(f) and len(u_):
            out["pair_mia_auc"] = mia_auc(f, u_)
            out["pair_mia_tpr@1%fpr"] = mia_tpr_at_fpr(f, u_, 0.01)
    return out


def _ccs21(strategy, ud, weights, f_users, Pf, unseen, Pu, not_members) -> dict[str, float]:
    """CCS'21 recommender MIA (see the module docstring); needs >= 8 never-seen users."""
    from fedrec.metrics.ranking import topk_items
    from fedrec.unlearning.metrics import mia_user_features

    if len(unseen) < 8:
        return {}
    rng = np.random.default_rng(derive_seed(strategy.cfg.seed, "ccs21") % 2**63)
    half = rng.permutation(len(unseen))
    sh_non, tg_non = half[: len(unseen) // 2], half[len(unseen) // 2 :]
    pool = np.asarray(
        sorted(set(range(ud.num_users)) - set(int(u) for u in not_members)), dtype=np.int64
    )
    members = np.sort(rng.choice(pool, size=min(len(pool), len(sh_non)), replace=False))
    Pm, _ = _folded(strategy, ud, members, weights, "oracle")

    def feats(users, P):
        Qs = _user_Q(strategy, weights)
        shard = _shard_of(strategy, users)
        out = np.zeros((len(users), P.shape[1]))
        for k, Q in Qs.items():
            m = np.flatnonzero(shard == k)
            if not len(m):
                continue
            scores = P[m].astype(np.float64) @ Q.T.astype(np.float64)
            for j, u in zip(range(len(m)), users[m]):
                scores[j, ud.train[int(u)]] = -np.inf
            top = topk_items(scores, 20)
            hist = [ud.train[int(u)] for u in users[m]]
            out[m] = mia_user_features(Q, top, hist)
        return out

    keep = [len(ud.train[int(u)]) > 0 for u in f_users]
    f_users, Pf = f_users[np.asarray(keep)], Pf[np.asarray(keep)]
    Xs = np.vstack([feats(members, Pm), feats(unseen[sh_non], Pu[sh_non])])
    ys = np.concatenate([np.ones(len(members)), np.zeros(len(sh_non))])
    Xt = np.vstack([feats(f_users, Pf), feats(unseen[tg_non], Pu[tg_non])])
    yt = np.concatenate([np.ones(len(f_users)), np.zeros(len(tg_non))])
    if len(f_users) == 0:
        return {}
    return {"rec_mia_auc": recommender_mia_auc(Xs, ys, Xt, yt, seed=strategy.cfg.seed)}

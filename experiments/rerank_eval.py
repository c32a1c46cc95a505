"""Post-hoc re-ranking of a finished run, through the client half's own evaluate path.

The re-ranking baseline (:func:`fedrec.clients.ranking.rerank`) needs no
retraining: this loads a run folder's final checkpoint and the clients' private state
(``client_state/``, written by the simulation), sends each node's clients the
``evaluate`` message with ``rerank-lambda`` set, exactly as the strategy would, and
turns the replies into NDCG and the item-group report. Used by ``experiments/bifair``
and ``experiments/ufo`` to sweep the re-ranking strength without a run per value.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def rerank_sweep(run_dir: Path, lambdas, serve_alphas=None) -> list[dict]:
    """Per ``lambda``: ``{"lambda", "ndcg@10", "hr@10", <group report>}``. With
    ``serve_alphas`` (UFO runs) the sweep is over the served geometric mixture
    ``pi_theta^a pi_ref^(1-a)`` instead (``pi_ref`` from the checkpoint's server state),
    without re-ranking: ``{"serve_alpha", ...}``."""
    from fedrec.config import validate
    from fedrec.plugins import load_strategy
    from fedrec.recsys.data import cfg_user_data
    from fedrec.recsys.item_groups import group_report, ideal_shares, memberships, training_groups
    from fedrec.specs import ranking as rspec
    from fedrec.state import StateStore

    run_dir = Path(run_dir)
    flat = json.loads((run_dir / "config.json").read_text())
    cfg = validate(flat)
    strategy_cls = load_strategy(cfg.strategy.name)
    module, cls_name = strategy_cls.client_half.split(":")
    import importlib

    client = getattr(importlib.import_module(module), cls_name)
    p = client.params(cfg)
    ds, ud = cfg_user_data(cfg)
    from fedrec.callbacks import load_checkpoint

    _, weights, server_state = load_checkpoint(run_dir / "checkpoint.npz")
    item_group = training_groups(ds, ud, p.groups, p.num_groups)
    G = int(item_group.max()) + 1
    from fedrec.metrics.ranking import group_membership

    target = ideal_shares(ud, group_membership(item_group, G))
    stores = [
        StateStore.from_arrays(dict(np.load(f, allow_pickle=False)))
        for f in sorted((run_dir / "client_state").glob("*.npz"))
    ]
    clients = sorted({c for s in stores for c in s.clients()}) or list(
        range(cfg.partition.num_clients)
    )
    store = stores[0] if len(stores) == 1 else StateStore()
    if len(stores) > 1:
        for s in stores:
            store.update({c: dict(s.load(c)) for c in s.clients()})
    eval_groups = memberships(ds, ud)
    out = []
    settings = (
        [("lambda", v) for v in lambdas]
        if serve_alphas is None
        else [("serve_alpha", a) for a in serve_alphas]
    )
    for name, value in settings:
        lam = value if name == "lambda" else 0.0
        config = {rspec.POPULAR: np.zeros(0, np.int64)}
        if lam > 0:
            config.update(rspec.pack_rerank(item_group, target, lam))
        if name == "serve_alpha" and value < 1:
            ref = server_state["reference"]
            config.update({"serve-alpha": float(value)})
            config.update({f"ref.{k}": np.asarray(a) for k, a in enumerate(ref)})
        states = store.cohort(clients)
        reply = client.handle_cohort(cfg, "evaluate", 0, weights, config, states)
        per = reply.as_dict() if hasattr(reply, "as_dict") else reply
        users = np.concatenate([np.asarray(m[rspec.USERS]) for _, m in per.values()])
        top = np.concatenate(
            [np.asarray(m[rspec.TOPK]).reshape(-1, rspec.TOPK_LEN) for _, m in per.values()]
        )
        ndcg = np.concatenate([np.asarray(m[rspec.PER_USER + "ndcg@10"]) for _, m in per.values()])
        hr = np.concatenate([np.asarray(m[rspec.PER_USER + "hr@10"]) for _, m in per.values()])
        flat_m, _ = group_report(ud, users, top, eval_groups, (10, 20))
        ok = ndcg >= 0
        out.append(
            {
                name: float(value),
                "ndcg@10": float(ndcg[ok].mean()),
                "hr@10": float(hr[ok].mean()),
                **flat_m,
            }
        )
    return out

"""Cohort invariance of federated LEGO: the same run on 1, 20 and 3 nodes, compared bit for bit.

The config is the dynamic request of ``tests/test_lego_strategy.py`` (``synthetic-rec``,
200 users, 10 users per client, requests gender + age_bucket, add occupation, withdraw
age_bucket, consent 80%). Prints, for the released original (after FedMF) and final
(after LEGO) embeddings, how many elements differ from the one-node run, and whether
the ``alpha`` of every request is identical.

``--per-user-fedmf`` runs FedMF's cohort step (``fedrec.models.recsys.mf_bpr_user_step``)
one user at a time, which takes the torch kernels' dependence on the cohort out of the
FedMF rounds (see README.md, "Cohort invariance"): what is left is LEGO's own.

    FEDREC_DATA_DIR=../shared/data python experiments/lego/cohort_invariance.py [--per-user-fedmf]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

OPTIONS = "num_users=200"
EXTRA = {"age_bucket": ["a", "b", "c"], "occupation": ["w", "x", "y", "z"]}
CONFIG = {
    "strategy.name": "lego",
    "dataset.name": "synthetic-rec",
    "dataset.options": OPTIONS,
    "strategy.params.users-per-client": 10,
    "partition.num-clients": 20,
    "strategy.params.dim": 16,
    "num-server-rounds": 2,
    "train.lr": 0.5,
    "train.batch-size": 8,
    "output.plots": False,
    "output.progress": False,
    "output.client-metrics": False,
    "output.checkpoint": False,
    "strategy.params.eps": 0.5,
    "strategy.params.steps": 8,
    "strategy.params.n-phi": 2,
    "strategy.params.warmup-phi": 4,
    "strategy.params.lr-phi": 1e-2,
    "strategy.params.lr-emb": 0.1,
    "strategy.params.hidden": 8,
    "strategy.params.combine-steps": 4,
    "strategy.params.combine-lr": 0.1,
    "strategy.params.attributes": "gender,age_bucket",
    "strategy.params.add-attributes": "occupation",
    "strategy.params.withdraw-attributes": "age_bucket",
    "strategy.params.consent-fraction": 0.8,
    "strategy.params.release-embeddings": True,
}


def per_user_cohort_step():
    """``mf_bpr_user_step`` replaced by a loop over its users (same results per user)."""
    import torch

    import fedrec.models.recsys as R

    original = R.mf_bpr_user_step

    def step(
        P_users,
        Q,
        pos_lists,
        neg_lists,
        lr,
        reg=0.0,
        epochs=1,
        seed=0,
        *,
        batch_size=None,
        item_bias=None,
        user_grad=None,
    ):
        seeds = [seed] * len(pos_lists) if isinstance(seed, int) else list(seed)
        outs = []
        for j in range(P_users.shape[0]):
            hook = (
                None if user_grad is None else (lambda Pa, active, j=j: user_grad(Pa, active + j))
            )
            outs.append(
                original(
                    P_users[j : j + 1],
                    Q,
                    pos_lists[j : j + 1],
                    neg_lists[j : j + 1],
                    lr,
                    reg,
                    epochs,
                    seeds[j : j + 1],
                    batch_size=batch_size,
                    item_bias=item_bias,
                    user_grad=hook,
                )
            )
        indptr = np.concatenate([[0], np.cumsum([o.indptr[-1] for o in outs])])
        bias = None if item_bias is None else torch.cat([o.item_bias for o in outs])
        return R.CohortUpdate(
            torch.cat([o.P for o in outs]),
            indptr,
            np.concatenate([o.item_ids for o in outs]),
            torch.cat([o.item_rows for o in outs]),
            bias,
            np.concatenate([o.losses for o in outs]),
        )

    R.mf_bpr_user_step = step


def released(path: Path, name: str) -> np.ndarray:
    z = np.load(path / name)
    return z["embeddings"][np.argsort(z["users"])]


def main(argv=None) -> int:
    import fedrec
    from fedrec.recsys.data import user_data

    ap = argparse.ArgumentParser()
    ap.add_argument("--per-user-fedmf", action="store_true")
    ap.add_argument(
        "--nodes",
        default="1,0,3",
        help="runtime.num-nodes of the runs (0: one node per client); the first is the reference",
    )
    args = ap.parse_args(argv)
    if args.per_user_fedmf:
        per_user_cohort_step()
    ds, _ = user_data("synthetic-rec", OPTIONS)
    rng = np.random.default_rng(123)  # the extra attributes of the test's fixture
    for name, classes in EXTRA.items():
        ds.user_attrs[name] = rng.integers(0, len(classes), ds.num_users).astype(np.int64)
        ds.attr_names[name] = list(classes)
    nodes = [int(x) for x in args.nodes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for n in nodes:
            fedrec.run(
                {**CONFIG, "runtime.num-nodes": n}, backend="local", out=out / f"n{n}", quiet=True
            )
        ref = out / f"n{nodes[0]}"
        for n in nodes[1:]:
            for name in ("embeddings_original.npz", "embeddings.npz"):
                a, b = released(ref, name), released(out / f"n{n}", name)
                print(
                    f"num-nodes {nodes[0]} vs {n}: {name}: {int((a != b).sum())} of {a.size} "
                    "elements differ"
                )
            la, lb = (json.loads((p / "lego.json").read_text()) for p in (ref, out / f"n{n}"))
            same = [r["alpha"] for r in la["requests"]] == [r["alpha"] for r in lb["requests"]]
            print(f"num-nodes {nodes[0]} vs {n}: alpha of every request identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

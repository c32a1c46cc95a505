"""Distance to Retrain and robustness to relearning, from the runs ``run.py`` wrote.

A simulation-only evaluator over the unlearned item matrices (FedMF user scenarios; SISA
ensembles are skipped: one item matrix per shard has no single counterpart). Per scenario,
seed and method, against the Retrain run of the same requests:

- ``param_dist``: ``||Q - Q_retrain|| / ||Q_retrain||`` (:func:`parameter_distance`);
- ``top20_overlap``: the forgotten users are folded in against both item matrices
  (same seeds) and their top-20 lists compared (:func:`topk_overlap`; 1 = Retrain's);
- ``relearn``: the forgotten users are split in halves A and B (seeded). Half A rejoins
  for ``--relearn-rounds`` FedMF rounds (local BPR from folded-in vectors, the run's
  sparse server step), then half B's user-level MIA AUC against the never-seen users is
  measured before and after: :func:`relearn_recovery` is the change. A model that holds
  traces of B moves differently from Retrain, which never saw B.

Writes ``robustness.jsonl`` and ``robustness.md`` next to ``results.jsonl``::

    FEDREC_DATA_DIR=../shared/data python experiments/unlearning/robustness.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load_q(run: Path) -> np.ndarray:
    from fedrec.callbacks import load_checkpoint

    return np.asarray(load_checkpoint(run / "checkpoint.npz")[1][0], dtype=np.float32)


def relearn(Q, cfg, params, ud, users, rounds: int) -> np.ndarray:
    """``rounds`` FedMF rounds in which only ``users`` take part (from folded-in vectors)."""
    from fedrec.algorithms import fedmf as algo
    from fedrec.unlearning.oracle import fold_in

    P = fold_in(ud, users, Q, cfg, params, "relearn")
    for r in range(rounds):
        res = algo.local_step(
            ud,
            users,
            P,
            Q,
            10_000 + r,
            seed=cfg.seed,
            lr=cfg.train.lr,
            reg=params.reg,
            epochs=cfg.train.local_epochs,
            batch_size=cfg.train.batch_size,
        )
        P = res.P
        ups = algo.client_uploads(res, np.arange(len(users) + 1))
        Q, _ = algo.sparse_server_step(Q, ups, params.server_lr)
    return Q


def evaluate(run_m: Path, run_r: Path, rounds: int) -> dict:
    from fedrec.config import validate
    from fedrec.metrics.ranking import topk_items
    from fedrec.plugins import load_strategy
    from fedrec.recsys.data import cfg_user_data
    from fedrec.seeding import derive_seed
    from fedrec.unlearning.metrics import (
        mia_auc,
        parameter_distance,
        relearn_recovery,
        topk_overlap,
    )
    from fedrec.unlearning.oracle import fit_scores, fold_in
    from fedrec.unlearning.session import never_seen_clients

    cfg = validate(json.loads((run_r / "config.json").read_text()))
    params = load_strategy("fedmf").parse_params(cfg)
    _, ud = cfg_user_data(cfg)
    reqs = json.loads(cfg.unlearning.requests)["request"]
    gone = np.asarray(sorted({u for r in reqs if r["kind"] == "users" for u in r["users"]}))
    if len(gone) < 2:
        return {}
    upc = params.users_per_client
    ns = never_seen_clients(cfg.partition.num_clients, cfg.unlearning.never_seen, cfg.seed)
    unseen = np.asarray([u for c in ns for u in range(c * upc, min((c + 1) * upc, ud.num_users))])
    Qm, Qr = load_q(run_m), load_q(run_r)
    out = {"param_dist": parameter_distance(Qm, Qr)}
    tops = []
    for Q in (Qm, Qr):
        P = fold_in(ud, gone, Q, cfg, params, "overlap")
        sc = P.astype(np.float64) @ Q.T.astype(np.float64)
        for j, u in enumerate(gone):
            sc[j, ud.train[int(u)]] = -np.inf
        tops.append(topk_items(sc, 20))
    out["top20_overlap"] = topk_overlap(tops[0], tops[1])
    rng = np.random.default_rng(derive_seed(cfg.seed, "relearn-split") % 2**63)
    perm = rng.permutation(gone)
    A, B = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2 :])

    def mia_b(Q):
        sb = fit_scores(ud, B, fold_in(ud, B, Q, cfg, params, "oracle"), Q, 1)
        su = fit_scores(ud, unseen, fold_in(ud, unseen, Q, cfg, params, "oracle"), Q, 1)
        return mia_auc(sb[np.isfinite(sb)], su[np.isfinite(su)])

    for tag, Q in (("method", Qm), ("retrain", Qr)):
        before = mia_b(Q)
        after = mia_b(relearn(Q.copy(), cfg, params, ud, A, rounds))
        out[f"mia_B_{tag}"] = before
        out[f"mia_B_relearned_{tag}"] = after
        out[f"relearn_recovery_{tag}"] = relearn_recovery(after, before)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/unlearning")
    ap.add_argument("--relearn-rounds", type=int, default=2)
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x]
    done = []
    seen = set()
    for r in rows:  # the Original model itself, once per scenario and seed (the baseline)
        sc, seed = r["scenario"], r["seed"]
        run_r = out / f"{sc}-s{seed}-retrain"
        if (
            (sc, seed) in seen
            or not sc.startswith(("users-", "user1", "seq"))
            or not run_r.exists()
        ):
            continue
        seen.add((sc, seed))
        res = evaluate(out / f"fedmf_ml100k-s{seed}-original", run_r, args.relearn_rounds)
        if res:
            done.append({"scenario": sc, "seed": seed, "method": "(original)", **res})
            print(json.dumps(done[-1]), flush=True)
    for r in rows:
        sc, seed, m = r["scenario"], r["seed"], r["method"]
        if m in ("retrain", "sisa", "sisa-learned") or not sc.startswith(
            ("users-", "user1", "seq")
        ):
            continue
        runs = sorted(out.glob(f"{sc}-s{seed}-{m}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
        run_r = out / f"{sc}-s{seed}-retrain"
        if not runs or not run_r.exists():
            continue
        res = evaluate(runs[-1], run_r, args.relearn_rounds)
        if res:
            done.append({"scenario": sc, "seed": seed, "method": m, **res})
            print(json.dumps(done[-1]), flush=True)
    (out / "robustness.jsonl").write_text("".join(json.dumps(d) + "\n" for d in done))
    lines = [
        "| scenario | method | param. distance to Retrain | top-20 overlap with Retrain | "
        "MIA AUC on B (method / Retrain) | after relearning on A | recovery (method / Retrain) |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(d["scenario"], d["method"]) for d in done})
    for sc, m in keys:
        ds = [d for d in done if d["scenario"] == sc and d["method"] == m]

        def f(k, ds=ds):
            v = [d[k] for d in ds]
            return f"{np.mean(v):.3f}" + (f" ± {np.std(v):.3f}" if len(v) > 1 else "")

        lines.append(
            f"| {sc} | {m} | {f('param_dist')} | {f('top20_overlap')} | "
            f"{f('mia_B_method')} / {f('mia_B_retrain')} | "
            f"{f('mia_B_relearned_method')} / {f('mia_B_relearned_retrain')} | "
            f"{f('relearn_recovery_method')} / {f('relearn_recovery_retrain')} |"
        )
    (out / "robustness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

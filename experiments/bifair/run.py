"""BiFair on ML-100K: the method, its ablations and baselines, federated and centralized.

Every variant is the ``bifair`` strategy with other settings (``VARIANTS``); the
re-ranking baseline is swept post hoc on the plain model of the same seed through the
client half's evaluate path (``experiments/rerank_eval.py``). Results (one folder per
run, plus ``results/bifair.jsonl`` with the final metrics and ``results/rerank.jsonl``)
go to ``experiments/bifair/results/`` (git-ignored); ``summarize.py`` makes the tables
and plots of README.md.

    python experiments/bifair/run.py --seeds 0 1 2 --modes fed central
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

VARIANTS = {
    "plain": {"balance": "none", "update-z": False},  # LLM-enhanced MF, no fairness
    "reweight": {"balance": "uniform", "update-z": False},  # inverse-frequency baseline
    "no-z": {"balance": "mgda", "update-z": False},  # training unfairness only
    "no-mgda": {"balance": "uniform", "update-z": True},  # uniform group weights
    "no-inner": {"balance": "mgda", "inner-balancing": False},  # prior unfairness only
    "bifair": {},
    # the prior-unfair control representation (SVD of a popularity-skewed corpus)
    "plain-svdpop": {"balance": "none", "update-z": False, "representation": "svd-pop"},
    "bifair-svdpop": {"representation": "svd-pop"},
    # groups = primary genre (19) instead of popularity quintiles
    "reweight-genre": {"balance": "uniform", "update-z": False, "groups": "genre"},
    "bifair-genre": {"groups": "genre"},
}
MODES = {
    "fed": {},
    "central": {"strategy.params.users-per-client": 943, "partition.num-clients": 1},
}
DATASETS = {  # lastfm has no item texts: its representation is the svd-pop control
    "ml-100k": {},
    "lastfm": {
        "dataset.name": "lastfm",
        "dataset.split": "random",  # no timestamps: a seeded random leave-one-out
        "partition.num-clients": 40,
        "strategy.params.representation": "svd-pop",
    },
}
LAMBDAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--modes", nargs="+", default=["fed", "central"], choices=list(MODES))
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--dataset", default="ml-100k", choices=list(DATASETS))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    import fedrec
    from fedrec.config import load_toml

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    base = load_toml(HERE / "bifair_ml100k.toml")
    base.update({"num-server-rounds": args.rounds, "output.progress": False})
    base.update(DATASETS[args.dataset])
    tag = "" if args.dataset == "ml-100k" else f"{args.dataset}-"
    for mode in args.modes:
        for variant in args.variants:
            for seed in args.seeds:
                name = f"{tag}{variant}-{mode}-s{seed}"
                run_dir = args.out / name
                if (run_dir / "summary.json").exists():
                    print(f"{name}: done already", flush=True)
                    continue
                cfg = {
                    **base,
                    "seed": seed,
                    **{f"strategy.params.{k}": v for k, v in VARIANTS[variant].items()},
                    **MODES[mode],
                }
                if mode == "central" and args.dataset == "lastfm":
                    cfg["strategy.params.users-per-client"] = 1892
                t0 = time.perf_counter()
                s = fedrec.run(cfg, backend="local", out=run_dir)
                g = s["final"]["global"]
                row = {"dataset": args.dataset, "variant": variant, "mode": mode, "seed": seed, **g}
                row["wall_s"] = time.perf_counter() - t0
                with (args.out / "bifair.jsonl").open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                shown = ("ndcg@10", "pop_worst25@10", "genre_worst25@10", "pop_mgu@10")
                print(
                    f"{name}: "
                    + " ".join(f"{k} {g[k]:.4f}" for k in shown if k in g)
                    + f" ({row['wall_s']:.0f} s)",
                    flush=True,
                )
                if variant == "plain":
                    from rerank_eval import rerank_sweep

                    for r in rerank_sweep(run_dir, LAMBDAS):
                        with (args.out / "rerank.jsonl").open("a") as fh:
                            row = {"dataset": args.dataset, "mode": mode, "seed": seed, **r}
                            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

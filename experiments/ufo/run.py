"""UFO on the item-token LLM-based recommender: the method and its baselines, federated
and centralized, on ML-100K (and lastfm-2k with popularity groups).

Variants are the ``ufo`` strategy with other settings (``VARIANTS``); the post-hoc
re-ranking baseline is swept on the fine-tuned (``sft``) model of the same seed through
the client half's evaluate path (``experiments/rerank_eval.py``). One folder per run and
``results/ufo.jsonl`` (final metrics, the covariance diagnostic, the judger's log) go to
``experiments/ufo/results/`` (git-ignored); ``summarize.py`` makes README.md's tables.

    python experiments/ufo/run.py --seeds 0 1 2 --modes fed central
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
    "sft": {"corrector": "none"},  # fine-tuning only
    "reweight": {"corrector": "none", "sft-weighting": "inverse"},  # IFairLRS-style
    "sprec": {"corrector": "sprec"},  # self-play DPO
    "ufo": {},
    "ufo-next": {"fair-targets": "next"},  # ablation: fair targets = resampled next items
    # centralized with the federation's optimizer steps per round (batch 64 x 28 silos)
    "ufo-steps": {"corrector-batch": 64 * 28},
}
LAMBDAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
DATASETS = {"ml-100k": {}, "lastfm": {"dataset.name": "lastfm", "dataset.split": "random"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--modes", nargs="+", default=["fed", "central"], choices=["fed", "central"])
    ap.add_argument("--dataset", default="ml-100k", choices=list(DATASETS))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("-c", "--set", nargs="*", default=[], help="extra key=value overrides")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    import fedrec
    from fedrec.config import load_toml, parse_override
    from fedrec.recsys.item_lm import item_lm_task

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    base = load_toml(HERE / "ufo_ml100k.toml")
    base.update({"output.progress": False, **DATASETS[args.dataset]})
    base.update(dict(parse_override(t) for t in args.set))
    upc = int(base["strategy.params.users-per-client"])
    for mode in args.modes:
        for seed in args.seeds:
            task = item_lm_task(
                base["dataset.name"],
                "",
                float(base["strategy.params.public-fraction"]),
                seed,
                base.get("dataset.split", "time"),
            )
            n_fed = len(task.fed)
            part = (
                {"strategy.params.users-per-client": upc, "partition.num-clients": -(-n_fed // upc)}
                if mode == "fed"
                else {"strategy.params.users-per-client": n_fed, "partition.num-clients": 1}
            )
            for variant in args.variants:
                name = f"{args.dataset}-{variant}-{mode}-s{seed}"
                run_dir = args.out / name
                if (run_dir / "summary.json").exists():
                    print(f"{name}: done already", flush=True)
                    continue
                cfg = {
                    **base,
                    "seed": seed,
                    **{f"strategy.params.{k}": v for k, v in VARIANTS[variant].items()},
                    **part,
                }
                t0 = time.perf_counter()
                s = fedrec.run(cfg, backend="local", out=run_dir)
                g = s["final"]["global"]
                extra = json.loads((run_dir / "ufo.json").read_text())
                rounds = [
                    json.loads(x)
                    for x in (run_dir / "rounds.jsonl").read_text().splitlines()
                    if '"scope": "global"' in x
                ]
                sft_round = int(cfg["strategy.params.sft-rounds"])
                at_sft = next(r for r in rounds if r["round"] == sft_round)
                row = {
                    "dataset": args.dataset,
                    "variant": variant,
                    "mode": mode,
                    "seed": seed,
                    **g,
                    "covariance": extra["covariance"],
                    "judge": extra["judge"],
                    "sft_ndcg@10": at_sft["ndcg@10"],
                    "sft_pop_mgu@10": at_sft["pop_mgu@10"],
                    "sft_pop_dgu@10": at_sft["pop_dgu@10"],
                    "per_round": [
                        {k: r.get(k) for k in ("round", "ndcg@10", "pop_mgu@10", "pop_dgu@10")}
                        for r in rounds
                    ],
                    "wall_s": time.perf_counter() - t0,
                }
                with (args.out / "ufo.jsonl").open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(
                    f"{name}: ndcg@10 {g['ndcg@10']:.4f} mgu@10 {g['pop_mgu@10']:.4f} "
                    f"dgu@10 {g['pop_dgu@10']:.4f} cov {extra['covariance'].get('cov', 0):.2e} "
                    f"({row['wall_s']:.0f} s)",
                    flush=True,
                )
                if variant == "sft":
                    from rerank_eval import rerank_sweep

                    for r in rerank_sweep(run_dir, LAMBDAS):
                        with (args.out / "rerank.jsonl").open("a") as fh:
                            fh.write(
                                json.dumps(
                                    {"dataset": args.dataset, "mode": mode, "seed": seed, **r}
                                )
                                + "\n"
                            )


if __name__ == "__main__":
    main()

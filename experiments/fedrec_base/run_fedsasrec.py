"""FedSASRec vs centralized SASRec on ML-100K.

Runs the federated config (fedsasrec_ml100k.toml) and two centralized references
(:func:`fedrec.recsys.train.train_sasrec`): (1) the same hyperparameters, i.e.
full-batch Adam (batch = all users, lr = server-lr, betas (0.9, 0.98)) for as many
epochs as rounds, which is what FedSASRec with one local step computes; (2) the
usual recipe (batch 128, lr 1e-3, 200 epochs) for context.

    FEDREC_DATA_DIR=../shared/data python experiments/fedrec_base/run_fedsasrec.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    import fedrec
    from fedrec.recsys.data import user_data
    from fedrec.recsys.train import evaluate_full_ranking, sasrec_score_fn, train_sasrec

    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--out", default="runs/fedrec_base")
    p.add_argument(
        "--skip-standard",
        action="store_true",
        help="skip the batch-128 / 200-epoch centralized reference",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    run_dir = out / f"fedsasrec-r{args.rounds}"
    if not (run_dir / "summary.json").exists():
        fedrec.run(
            HERE / "fedsasrec_ml100k.toml",
            out=run_dir,
            overrides=[f"num-server-rounds={args.rounds}"],
        )
    fed = json.loads((run_dir / "summary.json").read_text())
    ds, ud = user_data("ml-100k")
    gender = np.asarray(ds.user_attrs["gender"])
    rows = [("FedSASRec, 943 per-user clients", fed["final"]["global"], fed["wall_s"])]
    refs = [
        (
            "centralized SASRec, same hyperparameters (full-batch Adam 1e-2, "
            f"{args.rounds} epochs)",
            dict(batch_size=ud.num_users, lr=1e-2, epochs=args.rounds),
        )
    ]
    if not args.skip_standard:
        refs.append(
            (
                "centralized SASRec, usual recipe (batch 128, Adam 1e-3, 200 epochs)",
                dict(batch_size=128, lr=1e-3, epochs=200),
            )
        )
    for name, kw in refs:
        t0 = time.perf_counter()
        model = train_sasrec(
            ud, ud.num_items, d=64, max_len=50, num_blocks=2, num_heads=1, dropout=0.2, seed=0, **kw
        )
        wall = time.perf_counter() - t0
        m = evaluate_full_ranking(
            sasrec_score_fn(model, ud, "test"), ud, (10, 20), user_groups=gender
        )
        rows.append((name, m, wall))
    lines = [
        "| model | NDCG@10 | HR@10 | exposure popular@10 | Gini@10 | coverage@10 | "
        "NDCG@10 gap (pop − tail) | user NDCG@10 gap (gender) | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m, wall in rows:
        lines.append(
            f"| {name} | {m['ndcg@10']:.4f} | {m['hr@10']:.4f} | "
            f"{m['exposure_pop@10']:.3f} | {m['gini@10']:.3f} | "
            f"{m['coverage@10']:.3f} | {m['ndcg_gap@10']:.4f} | "
            f"{m.get('user_ndcg@10_gap', m.get('ndcg@10_gap', float('nan'))):.4f} | "
            f"{wall:.0f} |"
        )
    ratio = rows[0][1]["ndcg@10"] / rows[1][1]["ndcg@10"]
    lines.append("")
    lines.append(f"FedSASRec / centralized (same hyperparameters) NDCG@10 = {ratio:.3f}")
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report_fedsasrec.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

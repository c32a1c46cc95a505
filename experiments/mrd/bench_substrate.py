"""Benchmark of the LM substrate: train a ~1 M-parameter causal LM on the fact world.

Issue 12's substrate target: >= 95 % exact match on the retain facts in under 10 minutes
on 2 CPU cores (a benchmark, not a timed test). Prints parameters, per-epoch loss, exact
match on retain / forget / holdout facts and wall seconds::

    python experiments/mrd/bench_substrate.py --epochs 60
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fedrec.data.factworld import make_fact_world
from fedrec.models.causal_lm import CausalLM, WordTokenizer, exact_match, train_lm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--people", type=int, default=200)
    ap.add_argument("--d-model", type=int, default=160)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--device", default="cpu", help="cpu, cuda, or auto (cuda when a GPU is present)"
    )
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    w = make_fact_world(num_people=args.people, seed=args.seed)
    tok = WordTokenizer(w.vocabulary())
    docs = [tok.encode(d, bos=True, eos=True) for d in w.training_corpus()]
    ctx = max(len(d) for d in docs)
    model = CausalLM(len(tok), args.d_model, args.layers, args.heads, ctx, seed=args.seed)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    losses = train_lm(model, docs, args.epochs, args.batch_size, args.lr, args.seed)
    train_s = time.perf_counter() - t0
    em = {
        s: float(sum(exact_match(model, tok, [(f.question, f.answer) for f in w.split(s)])))
        / max(len(w.split(s)), 1)
        for s in ("retain", "forget", "holdout")
    }
    out = {
        "params": n_params,
        "vocab": len(tok),
        "docs": len(docs),
        "context": ctx,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "train_s": round(train_s, 1),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "exact_match": em,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

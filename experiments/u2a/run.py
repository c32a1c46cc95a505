"""U2A experiment (issue 12): alignment by unlearning selected, weighted negatives.

Per seed, on the fact world's assistant corpus (``make_assistant_corpus``: every prompt's
chosen answer twice and two bad responses -- banned word, contradiction, refusal -- in the
fine-tuning data; the server's validation set; clients' candidate negatives with planted
**harmful** ones, correct answers flagged by mistake):

1. fine-tune the assistant (*Base*) centralized (``train_lm``) and federated (``fedrec run``
   with the ``u2a`` strategy's fine-tuning rounds, 10 clients, documents dealt iid);
2. align it for ``--rounds`` rounds x ``--steps`` local steps with every method, from the
   same Base: U2A (greedy budget ``m`` + mirror-descent weights; scores ``dot`` and the
   CG-preconditioned ``cg``) on GA, GradDiff and NPO; the same losses on **all** negatives
   with uniform weights, and on **random** ``m`` negatives; and a **DPO** fine-tune on the
   (chosen, negative) pairs. Equal steps for every method;
3. report the validation margin ``J``, the rule-judge win rate against Base, the
   banned-token and refusal rates of greedy answers, fact accuracy (greedy exact match of
   the chosen answers), and how many planted harmful negatives each selection picked.

Usage::

    python experiments/u2a/run.py --seeds 0 1 2
    python experiments/u2a/run.py --seeds 0 --skip-federated

Writes ``<out>/seed-<s>.json``; ``summarize.py`` makes the README tables and plot.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedrec.algorithms.lm_unlearning import unlearn
from fedrec.algorithms.u2a import (
    banned_rate,
    dpo_loss,
    encode_preferences,
    generate_answers,
    greedy_select,
    mirror_descent,
    objective_grad,
    preference_margin,
    score_negatives,
    win_rate,
)
from fedrec.data.factworld import REFUSAL, make_assistant_corpus, make_fact_world
from fedrec.models.causal_lm import CausalLM, WordTokenizer, encode_qa, train_lm
from fedrec.seeding import derive_seed

HERE = Path(__file__).resolve().parent


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Setup:
    """One seed's world, corpus, encodings and evaluation prompts."""

    def __init__(self, args, seed):
        self.world = make_fact_world(num_people=args.people, seed=seed)
        self.corpus = make_assistant_corpus(
            self.world,
            negatives_per_prompt=2,
            harmful_fraction=args.harmful_fraction,
            validation_fraction=0.2,
            chosen_repeats=2,
            seed=derive_seed(seed, "assistant") % 2**32,  # as the u2a strategy (fedrec.lmtask)
        )
        self.tok = WordTokenizer(self.world.vocabulary())
        c = self.corpus
        self.val = encode_preferences(self.tok, c.validation)
        self.neg = encode_qa(self.tok, [(n.prompt, n.response) for n in c.negatives])
        self.harmful = np.asarray([n.harmful for n in c.negatives])
        self.kinds = [n.kind for n in c.negatives]
        self.kept = encode_qa(self.tok, c.chosen)
        answer = dict(c.chosen)
        self.pairs_c = encode_qa(self.tok, [(n.prompt, answer[n.prompt]) for n in c.negatives])
        value = {f.question: f.value for f in self.world.facts}
        self.prompts = [q for q, _ in c.chosen]
        self.chosen = [a for _, a in c.chosen]
        self.values = [value[q] for q in self.prompts]
        docs = c.sft_documents()
        self.sft = [self.tok.encode(d, bos=True, eos=True) for d in docs]
        self.context = max(len(s) for s in self.sft) + 2


def margin(model, s):
    with torch.no_grad():
        return float(preference_margin(model, *s.val))


def evaluate(model, s, base_answers):
    from fedrec.models.causal_lm import teacher_forced_match

    ans = generate_answers(model, s.tok, s.prompts)
    with torch.no_grad():
        em = teacher_forced_match(model, *s.kept).float().mean()
    return {
        "val_margin": margin(model, s),
        "win_rate": win_rate(ans, base_answers, s.chosen, s.values),
        "banned_rate": banned_rate(ans),
        "refusal_rate": float(np.mean([a == REFUSAL for a in ans])),
        "fact_accuracy": float(em),
    }


def align_central(args, base, s, selection, loss, score, seed):
    """The centralized counterpart of the ``u2a`` strategy's alignment rounds."""
    m = copy.deepcopy(base)
    ids, mask = s.neg
    n = len(ids)
    with torch.no_grad():
        from fedrec.algorithms.lm_unlearning import answer_logprob

        ref = answer_logprob(m, ids, mask)
        ref_c = answer_logprob(m, *s.pairs_c)
    kept_ids, kept_mask = s.kept
    rng = np.random.default_rng(derive_seed(seed, "u2a-kept") % 2**63)
    cap = rng.choice(len(kept_ids), min(64, len(kept_ids)), replace=False)
    curv = (kept_ids[cap], kept_mask[cap])
    picked_harmful: set[int] = set()
    margins = [margin(m, s)]
    w_prev = None
    t0 = time.perf_counter()
    for t in range(args.rounds):
        if selection == "dpo":
            opt = torch.optim.Adam(m.parameters(), lr=args.lr_align)
            m.train()
            for _ in range(args.steps):
                loss_v = dpo_loss(m, *s.pairs_c, ids, mask, ref_c, ref, args.beta)
                opt.zero_grad()
                loss_v.backward()
                opt.step()
            m.eval()
            margins.append(margin(m, s))
            continue
        if selection == "u2a":
            gJ = objective_grad(m, lambda mm: preference_margin(mm, *s.val))
            sc = score_negatives(
                m, loss, ids, mask, gJ, ref, args.beta, score, curv, args.cg_iters, args.damping
            )
            sel = greedy_select(sc, args.budget)
            w = mirror_descent(w_prev, sc, sel, args.eta)
            w_prev = w
        elif selection == "all":
            sel = torch.arange(n)
            w = torch.full((n,), 1.0 / n, dtype=torch.float64)
        else:
            r = np.random.default_rng(derive_seed(seed, "u2a-random", t) % 2**63)
            sel = torch.as_tensor(np.sort(r.choice(n, min(args.budget, n), replace=False)))
            w = torch.zeros(n, dtype=torch.float64)
            w[sel] = 1.0 / len(sel)
        picked_harmful |= {int(i) for i in sel.tolist() if s.harmful[int(i)]}
        if len(sel):
            unlearn(
                m,
                ids[sel],
                mask[sel],
                kind=loss,
                steps=args.steps,
                batch_size=len(sel),
                lr=args.lr_align,
                weights=w[sel].float(),
                r_ids=curv[0],
                r_mask=curv[1],
                ref_lp=ref[sel],
                beta=args.beta,
                seed=derive_seed(seed, "u2a", t) % 2**63,
            )
        margins.append(margin(m, s))
    return m, {
        "margins": margins,
        "harmful_selected": len(picked_harmful),
        "harmful_total": int(s.harmful.sum()),
        "seconds": time.perf_counter() - t0,
    }


METHODS = [
    ("u2a", "ga", "dot"),
    ("u2a", "ga", "cg"),
    ("all", "ga", "dot"),
    ("random", "ga", "dot"),
    ("u2a", "graddiff", "dot"),
    ("all", "graddiff", "dot"),
    ("u2a", "npo", "dot"),
    ("all", "npo", "dot"),
    ("dpo", "ga", "dot"),
]


def name_of(sel, loss, score):
    if sel == "dpo":
        return "dpo"
    return f"{loss}/{sel}" + ("-cg" if sel == "u2a" and score == "cg" else "")


# ------------------------------------------------------------------ federated
def fed_config(args, seed, **extra):
    cfg = {
        "seed": seed,
        "num-server-rounds": args.fed_rounds,
        "dataset.name": "factworld",
        "dataset.options": f"num_people={args.people},seed={seed}",
        "partition.num-clients": args.clients,
        "partition.scheme": "iid",
        "runtime.num-nodes": args.clients,
        "model.name": "causal-lm",
        "model.params.d-model": args.d_model,
        "model.params.n-layers": args.layers,
        "model.params.n-heads": args.heads,
        "train.local-epochs": args.fed_local_epochs,
        "train.batch-size": args.fed_batch_size,
        "train.lr": args.lr,
        "train.optimizer": "adam",
        "strategy.name": "u2a",
        "strategy.fraction-evaluate": 1.0,
        "strategy.params.harmful-fraction": args.harmful_fraction,
        "strategy.params.align-rounds": args.rounds,
        "strategy.params.align-steps": args.steps,
        "strategy.params.align-lr": args.lr_align,
        "strategy.params.budget": args.budget,
        "strategy.params.eta": args.eta,
        "strategy.params.beta": args.beta,
        "strategy.params.cg-iters": args.cg_iters,
        "strategy.params.damping": args.damping,
        "output.plots": False,
        "output.progress": False,
        "output.client-metrics": False,
    }
    cfg.update(extra)
    return cfg


def load(model_like, path):
    """A copy of ``model_like`` holding the weights of a trace or checkpoint file."""
    from fedrec.callbacks import load_weights
    from fedrec.models import set_weights

    m = copy.deepcopy(model_like)
    set_weights(m, load_weights(path))
    return m.eval()


def federated(args, s, seed, work: Path, like):
    import fedrec

    t0 = time.perf_counter()
    # fine-tuning only: one alignment round is the minimum; the Base is the round-R checkpoint
    fedrec.run(
        fed_config(
            args,
            seed,
            **{
                "strategy.params.align-rounds": 1,
                "strategy.params.selection": "all",
                "strategy.params.trace": True,
            },
        ),
        backend="local",
        out=work / "sft",
        quiet=True,
    )
    rows = [json.loads(x) for x in (work / "sft" / "rounds.jsonl").read_text().splitlines()]
    sft_s = time.perf_counter() - t0
    log(f"  federated fine-tuning: {args.fed_rounds} rounds, {sft_s:.0f} s")
    # the Base: rerun is avoided by keeping the fine-tuning checkpoint of round R
    base_ckpt = work / "base.npz"
    _export_round(work / "sft", args.fed_rounds, base_ckpt)
    base = load(like, base_ckpt)
    base_answers = generate_answers(base, s.tok, s.prompts)
    out = {"sft_s": sft_s, "sft_rounds": rows[: args.fed_rounds], "runs": {}}
    out["runs"]["base"] = evaluate(base, s, base_answers)
    for sel, loss, score in METHODS:
        if sel != "u2a" and loss != "ga" and not args.fed_all_losses:
            continue
        nm = name_of(sel, loss, score)
        d = work / nm.replace("/", "-")
        t0 = time.perf_counter()
        fedrec.run(
            fed_config(
                args,
                seed,
                **{
                    "strategy.params.init": str(base_ckpt),
                    "strategy.params.selection": sel,
                    "strategy.params.loss": loss,
                    "strategy.params.score": score,
                },
            ),
            backend="local",
            out=d,
            quiet=True,
        )
        secs = time.perf_counter() - t0
        m = load(like, d / "checkpoint.npz")
        res = evaluate(m, s, base_answers)
        sel_file = d / "u2a_selection.json"
        harmful = 0
        if sel_file.exists():
            from fedrec.config import validate
            from fedrec.lmtask import u2a_task
            from fedrec.strategies.u2a import U2A

            cfg = validate(fed_config(args, seed))
            t = u2a_task(cfg, U2A.parse_params(cfg))
            picked = {(c, j) for r in json.loads(sel_file.read_text()).values() for c, j, _ in r}
            harmful = sum(t.negatives(c)[j].harmful for c, j in picked)
        rounds = [json.loads(x) for x in (d / "rounds.jsonl").read_text().splitlines()]
        res.update(
            {
                "seconds": secs,
                "harmful_selected": int(harmful),
                "margins": [r.get("train_val_margin_before") for r in rounds],
            }
        )
        out["runs"][nm] = res
        log(
            f"  fed {nm}: "
            + ", ".join(f"{k}={v:.3f}" for k, v in res.items() if isinstance(v, float))
        )
    return out


def _export_round(run_dir: Path, rnd: int, path: Path):
    """The fine-tuned weights: the ``u2a`` trace is not written for fine-tuning rounds, so
    the SFT run has one alignment round; its round-0 trace is the Base."""
    import shutil

    shutil.copy(run_dir / "u2a_trace" / "round-0.npz", path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--people", type=int, default=60)
    ap.add_argument("--harmful-fraction", type=float, default=0.1)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr-align", type=float, default=1e-3)
    ap.add_argument("--budget", type=int, default=32)
    ap.add_argument("--eta", type=float, default=1.0)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--cg-iters", type=int, default=10)
    ap.add_argument("--damping", type=float, default=0.1)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--fed-rounds", type=int, default=30)
    ap.add_argument("--fed-local-epochs", type=int, default=5)
    ap.add_argument("--fed-batch-size", type=int, default=16)
    ap.add_argument("--fed-all-losses", action="store_true")
    ap.add_argument("--skip-federated", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        log(f"seed {seed}")
        s = Setup(args, seed)
        res: dict = {"seed": seed, "args": vars(args), "num_negatives": len(s.neg[0])}
        res["harmful_total"] = int(s.harmful.sum())
        base = CausalLM(len(s.tok), args.d_model, args.layers, args.heads, s.context, seed=seed)
        t0 = time.perf_counter()
        train_lm(base, s.sft, args.epochs, args.batch_size, args.lr, seed, "adam")
        res["sft_s"] = time.perf_counter() - t0
        base_answers = generate_answers(base, s.tok, s.prompts)
        central = {"base": evaluate(base, s, base_answers)}
        log("  base: " + ", ".join(f"{k}={v:.3f}" for k, v in central["base"].items()))
        for sel, loss, score in METHODS:
            nm = name_of(sel, loss, score)
            m, info = align_central(args, base, s, sel, loss, score, seed)
            central[nm] = {**evaluate(m, s, base_answers), **info}
            log(
                f"  {nm}: "
                + ", ".join(f"{k}={v:.3f}" for k, v in central[nm].items() if isinstance(v, float))
                + f", harmful={info['harmful_selected']}/{info['harmful_total']}"
            )
        res["central"] = central
        if not args.skip_federated:
            from fedrec.config import validate
            from fedrec.lmtask import build_model

            like = build_model(validate(fed_config(args, seed)))
            with tempfile.TemporaryDirectory(prefix="fedrec-u2a-") as tmp:
                res["federated"] = federated(args, s, seed, Path(tmp), like)
        (out_dir / f"seed-{seed}.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

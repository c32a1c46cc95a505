"""MRD experiment (issue 12): is MRD a measure of forgetting difficulty, and does MRD-weighted
(easy-first) sampling make GA / GradDiff / NPO reach retrain-level forget quality sooner?

Per seed (the fact world, the models and every draw follow the seed):

1. **Models.** A causal LM trained on the full corpus (*Original*) and one trained on the
   corpus without the forget people (*Retrain*, the gold reference), with the same
   settings; centralized (``train_lm``) and federated (``fedrec run`` with the ``fedlm``
   strategy on 10 clients, people split over clients; Retrain = ``fedrec unlearn --method
   retrain``).
2. **MRD validation.** MRD of every forget fact on Original (K perturbations, per-tensor
   scaled, common random numbers) for sigma in ``--sigmas``, against the number of plain
   GA steps each fact needs alone until it is forgotten (greedy answer wrong, or NLL above
   the holdout mean NLL): Spearman correlation (target >= 0.5).
3. **Unlearning curves.** GA, GradDiff and NPO with uniform and MRD-weighted sampling;
   after every step (centralized) or round (federated), forget quality (KS p-value of the
   forget facts' truth ratios against Retrain's). Steps/rounds to reach retrain-level forget
   quality: the first step with ``forget_quality >= --fq-target`` (default 0.05: the KS test
   no longer tells the model from Retrain at the 5 % level). Target: MRD-weighted needs
   <= 0.7x the steps of uniform for at least two of the three losses.
4. **Final report** of every run through the evaluation registry (forget/retain NLL and EM,
   truth ratio, forget quality, MIA AUC with LOSS / zlib / Min-K and PrivLeak against
   Retrain, relearning, per-MRD-quartile metrics).

Usage::

    python experiments/mrd/run.py --seeds 0 1 2             # centralized and federated
    python experiments/mrd/run.py --seeds 0 --skip-federated

Writes ``<out>/seed-<s>.json`` and, over all seeds, ``<out>/summary.json``, ``README``-ready
markdown tables on stdout, and ``<out>/curves.png``.
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

from fedrec.algorithms.lm_unlearning import LOSSES, qa_mrd, steps_to_forget, unlearn
from fedrec.data.factworld import make_fact_world
from fedrec.models.causal_lm import CausalLM, WordTokenizer, train_lm
from fedrec.unlearning import lm_eval
from fedrec.unlearning.metrics import forget_quality

HERE = Path(__file__).resolve().parent


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def centralized_models(args, world, tok, ctx, seed):
    docs = world.training_documents()
    forget_people = set(np.flatnonzero(world.person_split == 0).tolist())
    full = [tok.encode(t, bos=True, eos=True) for _, t in docs]
    kept = [tok.encode(t, bos=True, eos=True) for p, t in docs if p not in forget_people]
    out = {}
    for name, seqs in (("original", full), ("retrain", kept)):
        m = CausalLM(len(tok), args.d_model, args.layers, args.heads, ctx, seed=seed)
        t0 = time.perf_counter()
        train_lm(m, seqs, args.epochs, args.batch_size, args.lr, seed, "adam")
        out[name] = (m, time.perf_counter() - t0)
        log(f"  centralized {name}: {len(seqs)} docs, {out[name][1]:.0f} s")
    return out


def mrd_validation(args, model, ev, seed):
    f = ev.split("forget")
    holdout_nll = float(lm_eval.sample_stats(model, ev, "holdout")["nll"].mean())
    t0 = time.perf_counter()
    steps = steps_to_forget(
        model, f.ids, f.mask, holdout_nll, lr=args.stf_lr, max_steps=args.stf_max
    ).numpy()
    stf_s = time.perf_counter() - t0
    from scipy.stats import spearmanr

    out = {"holdout_nll": holdout_nll, "steps_to_forget": steps.tolist(), "stf_s": stf_s}
    mrds = {}
    for sigma in args.sigmas:
        t0 = time.perf_counter()
        mrd, frag = qa_mrd(model, f.ids, f.mask, K=args.mrd_k, sigma=sigma, seed=seed)
        mrds[sigma] = mrd
        rho = spearmanr(mrd.numpy(), steps).statistic
        out[f"sigma={sigma:g}"] = {
            "spearman": float(rho),
            "spearman_fragility": float(spearmanr(-frag.numpy(), steps).statistic),
            "mrd_s": time.perf_counter() - t0,
        }
        log(f"  MRD sigma={sigma:g}: Spearman(MRD, steps-to-forget) = {rho:.3f}")
    return out, mrds[args.sigma]


def curve_runs(args, original, ev, ref_tr, mrd, seed):
    """Centralized unlearning runs: forget quality after every step."""
    f, r = ev.split("forget"), ev.split("retain")
    runs = {}
    for loss in LOSSES:
        for sampling in ("uniform", "mrd"):
            m = copy.deepcopy(original)
            fq: list[float] = []
            util: list[float] = []
            at_target: dict = {}

            def probe(step, m=m, fq=fq, util=util, at_target=at_target):
                fq.append(forget_quality(lm_eval.truth_ratios(m, ev), ref_tr))
                util.append(float(lm_eval.sample_stats(m, ev, "retain")["em"].mean()))
                if fq[-1] >= args.fq_target and "model" not in at_target:
                    at_target["model"] = copy.deepcopy(m)

            probe(0)
            t0 = time.perf_counter()
            unlearn(
                m,
                f.ids,
                f.mask,
                kind=loss,
                steps=args.steps,
                batch_size=args.unlearn_batch,
                lr=args.unlearn_lr,
                sampling=sampling,
                mrd=mrd,
                tau0=args.tau0,
                tau_end=args.tau_end,
                r_ids=r.ids,
                r_mask=r.mask,
                beta=args.beta,
                seed=seed,
                on_step=probe,
            )
            secs = time.perf_counter() - t0
            hit = next((i for i, v in enumerate(fq) if v >= args.fq_target), None)
            runs[f"{loss}/{sampling}"] = {
                "fq": fq,
                "retain_em": util,
                "steps_to_target": hit,
                "seconds": secs,
                # the model when it first reached the target (else after the last step)
                "model": at_target.get("model", m),
            }
            log(f"  {loss}/{sampling}: steps to FQ>={args.fq_target}: {hit}, max FQ {max(fq):.3g}")
    return runs


def report(model, ev, ref_tr, retrain_auc, mrd, seed):
    rep = lm_eval.evaluate(model, ev, ref_tr, retrain_auc, mrd.numpy())
    rep.update(lm_eval.relearn(model, ev, steps=5, lr=1e-3, seed=seed))
    return rep


# ------------------------------------------------------------------ federated
def fed_config(args, seed, out):
    return {
        "seed": seed,
        "num-server-rounds": args.fed_rounds,
        "dataset.name": "factworld",
        "dataset.options": f"num_people={args.people},forget_fraction={args.forget_fraction},"
        f"seed={seed}",
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
        "strategy.name": "fedlm",
        "output.plots": False,
        "output.progress": False,
        "output.client-metrics": False,
    }


def load_trace(model_like, path):
    """A copy of ``model_like`` holding the weights of a trace or checkpoint file."""
    from fedrec.callbacks import load_weights
    from fedrec.models import set_weights

    m = copy.deepcopy(model_like)
    set_weights(m, load_weights(path))
    return m.eval()


def federated(args, world, tok, ev, seed, work: Path):
    import fedrec
    from fedrec.callbacks import load_checkpoint
    from fedrec.config import validate
    from fedrec.lmtask import build_model

    cfg = fed_config(args, seed, work)
    t0 = time.perf_counter()
    fedrec.run(cfg, backend="local", out=work / "run", quiet=True)
    train_s = time.perf_counter() - t0
    log(f"  federated original: {args.fed_rounds} rounds, {train_s:.0f} s")
    like = build_model(validate(cfg))
    _, w, _ = load_checkpoint(work / "run" / "checkpoint.npz")
    np.savez(work / "original.npz", *w)
    original = load_trace(like, work / "original.npz")
    forget = np.flatnonzero(world.person_split == 0).tolist()
    request = {"request": [{"kind": "users", "users": forget}]}
    t0 = time.perf_counter()
    fedrec.unlearn(work / "run", request, method="retrain", out=work / "retrain", quiet=True)
    retrain_s = time.perf_counter() - t0
    _, w, _ = load_checkpoint(work / "retrain" / "checkpoint.npz")
    np.savez(work / "retrain.npz", *w)
    retrain = load_trace(like, work / "retrain.npz")
    log(f"  federated retrain: {retrain_s:.0f} s")
    out = {"train_s": train_s, "retrain_s": retrain_s, "runs": {}}
    ref_tr = lm_eval.truth_ratios(retrain, ev)
    rr = lm_eval.evaluate(retrain, ev)
    retrain_auc = {k: rr[f"mia_auc_{k}"] for k in lm_eval.MIA_SCORES}
    f = ev.split("forget")
    mrd, _ = qa_mrd(original, f.ids, f.mask, K=args.mrd_k, sigma=args.sigma, seed=seed)
    models = {"original": original, "retrain": retrain}
    for loss in LOSSES:
        for sampling in ("uniform", "mrd"):
            name = f"{loss}/{sampling}"
            d = work / f"unlearn-{loss}-{sampling}"
            t0 = time.perf_counter()
            fedrec.unlearn(
                work / "run",
                request,
                method="lm-unlearn",
                out=d,
                quiet=True,
                overrides=[
                    f"unlearning.rounds={args.fed_unlearn_rounds}",
                    f"unlearning.params.loss={loss}",
                    f"unlearning.params.sampling={sampling}",
                    f"unlearning.params.curriculum={'true' if sampling == 'mrd' else 'false'}",
                    f"unlearning.params.steps={args.fed_local_steps}",
                    f"unlearning.params.lr={args.unlearn_lr}",
                    f"unlearning.params.batch-size={args.unlearn_batch}",
                    f"unlearning.params.tau0={args.tau0}",
                    f"unlearning.params.tau-end={args.tau_end}",
                    f"unlearning.params.beta={args.beta}",
                    f"unlearning.params.mrd-k={args.mrd_k}",
                    f"unlearning.params.mrd-sigma={args.sigma}",
                    "unlearning.params.trace=true",
                ],
            )
            secs = time.perf_counter() - t0
            fq, util, at = [], [], None
            for t in range(args.fed_unlearn_rounds + 1):
                mt = load_trace(like, d / "unlearning_trace" / f"round-{t}.npz")
                fq.append(forget_quality(lm_eval.truth_ratios(mt, ev), ref_tr))
                util.append(float(lm_eval.sample_stats(mt, ev, "retain")["em"].mean()))
                if at is None and fq[-1] >= args.fq_target:
                    at = mt
            hit = next((i for i, v in enumerate(fq) if v >= args.fq_target), None)
            audit = [json.loads(x) for x in (d / "unlearning.jsonl").read_text().splitlines()]
            out["runs"][name] = {
                "fq": fq,
                "retain_em": util,
                "rounds_to_target": hit,
                "seconds": secs,
                "bytes_down": audit[-1]["bytes_down"],
                "bytes_up": audit[-1]["bytes_up"],
            }
            models[name] = at if at is not None else mt
            log(f"  fed {name}: rounds to FQ>={args.fq_target}: {hit}, max FQ {max(fq):.3g}")
    out["reports"] = {k: report(m, ev, ref_tr, retrain_auc, mrd, seed) for k, m in models.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--people", type=int, default=60)
    ap.add_argument("--forget-fraction", type=float, default=0.2)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--mrd-k", type=int, default=16)
    ap.add_argument("--sigma", type=float, default=1e-2, help="sigma of the sampling runs")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    ap.add_argument("--stf-lr", type=float, default=0.05)
    ap.add_argument("--stf-max", type=int, default=200)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--unlearn-batch", type=int, default=8)
    ap.add_argument("--unlearn-lr", type=float, default=1e-3)
    ap.add_argument("--tau0", type=float, default=0.1)
    ap.add_argument("--tau-end", type=float, default=10.0)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--fq-target", type=float, default=0.05)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--fed-rounds", type=int, default=40)
    ap.add_argument("--fed-local-epochs", type=int, default=5)
    ap.add_argument("--fed-batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fed-unlearn-rounds", type=int, default=15)
    ap.add_argument("--fed-local-steps", type=int, default=2)
    ap.add_argument("--skip-federated", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        log(f"seed {seed}")
        world = make_fact_world(
            num_people=args.people, forget_fraction=args.forget_fraction, seed=seed
        )
        tok = WordTokenizer(world.vocabulary())
        ev = lm_eval.prepare(world, tok, seed=seed)
        ctx = max(
            ev.length, max(len(tok.encode(t, bos=True, eos=True)) for t in world.training_corpus())
        )
        res: dict = {"seed": seed, "args": vars(args)}
        models = centralized_models(args, world, tok, ctx, seed)
        original, retrain = models["original"][0], models["retrain"][0]
        res["train_s"] = {k: v[1] for k, v in models.items()}
        res["params"] = sum(p.numel() for p in original.parameters())
        val, mrd = mrd_validation(args, original, ev, seed)
        res["mrd_validation"] = val
        ref_tr = lm_eval.truth_ratios(retrain, ev)
        rr = lm_eval.evaluate(retrain, ev)
        retrain_auc = {k: rr[f"mia_auc_{k}"] for k in lm_eval.MIA_SCORES}
        runs = curve_runs(args, original, ev, ref_tr, mrd, seed)
        res["central"] = {
            "runs": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in runs.items()},
            "reports": {
                "original": report(original, ev, ref_tr, retrain_auc, mrd, seed),
                "retrain": report(retrain, ev, ref_tr, retrain_auc, mrd, seed),
                **{
                    k: report(v["model"], ev, ref_tr, retrain_auc, mrd, seed)
                    for k, v in runs.items()
                },
            },
        }
        if not args.skip_federated:
            with tempfile.TemporaryDirectory(prefix="fedrec-mrd-") as tmp:
                res["federated"] = federated(args, world, tok, ev, seed, Path(tmp))
        (out_dir / f"seed-{seed}.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

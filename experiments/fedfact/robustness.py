"""FedFACT-Post robustness: does the deployed classifier keep xi on data it was not tuned on?

For every dataset x criterion x scope x seed this runs ``fedfact-post`` with the FedFACT
protocol of this folder (5 clients, Dirichlet over A with gamma = 0.5, 60/40 split,
logistic regression, 20 FedAvg rounds then the calibration rounds; COMPAS: 2 clients),
changing only the dataset, and reports per cell:

- **train-set gap** of the deployed classifier (global, and the max over clients), in the
  constrained (subgroup) form, from the expected counts its last calibration round logs
  (``gap-on-train*``; for the randomized rule: its gap in expectation over the draws);
- **held-out gap** (global subgroup form) of the realized test predictions
  (``predictions.csv``) with its sampling standard error from the test group sizes
  (delta method for ``r_a - r``, binomial variances), the pairwise gap (what Fairlearn's
  ``*_difference`` functions report) and the held-out gap of FedAvg on the same seed;
- **accuracy** (test) and the **centralized fair LP's** test accuracy at the same xi and
  scope: :func:`fedrec.algorithms.lp.fair_lp_scipy` on the pooled train scores that
  fedfact-post sees (re-calibrated per group and client for eop/eo, as fedfact-post
  does), its duals applied to the test rows.

``--controllability`` adds the xi grid (0.005 .. 0.1; DP, scope both) on Adult and Bank.
Results are cached per run under ``--out`` (default runs/fedfact_robustness) so an
interrupted sweep resumes; ``--jobs`` runs cells in parallel processes.

Usage::

    FEDREC_DATA_DIR=../shared/data python experiments/fedfact/robustness.py --jobs 2
    FEDREC_DATA_DIR=../shared/data python experiments/fedfact/robustness.py \\
        --datasets bank --criteria dp --scopes both --seeds 0     # one cell
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

DATASETS = {
    # dataset -> (protocol TOML, overrides)
    "adult": ("adult_dp.toml", {}),
    "bank": ("adult_dp.toml", {"dataset.name": "bank", "dataset.sensitive": ""}),
    "german": ("adult_dp.toml", {"dataset.name": "german", "dataset.sensitive": ""}),
    "compas": ("compas_dp.toml", {}),
    "drug-consumption": ("drug_multiclass_dp.toml", {"model.name": "logreg"}),
}
CRITERIA = {"drug-consumption": ("dp", "eop")}
ALL_CRITERIA = ("dp", "eop", "eo")
SCOPES = ("global", "local", "both")
CONTROL_XI = (0.005, 0.01, 0.02, 0.05, 0.1)
SUB = {"dp": "dp_subgroup_max", "eop": "eop_subgroup_max", "eo": "eo_subgroup_max"}
PAIR = {"dp": "dp_pairwise_max", "eop": "eop_gap", "eo": "eo_gap"}


def criteria(dataset: str, allowed=ALL_CRITERIA) -> tuple[str, ...]:
    """The criteria run on ``dataset`` (Drug: dp and eop), restricted to ``allowed``."""
    return tuple(c for c in CRITERIA.get(dataset, ALL_CRITERIA) if c in allowed)


def run_config(dataset: str, seed: int, **overrides) -> dict:
    """The dataset's protocol TOML (without its strategy params), the dataset overrides,
    no plots or client metrics, test predictions saved, then ``overrides``."""
    from fedrec.config import load_toml

    toml, extra = DATASETS[dataset]
    flat = load_toml(HERE / toml)
    flat = {k: v for k, v in flat.items() if not k.startswith("strategy.params.")}
    return {
        **flat,
        **extra,
        "seed": seed,
        "output.plots": False,
        "output.client-metrics": False,
        "output.save-predictions": True,
        **overrides,
    }


# ------------------------------------------------------------------ statistics
def _rates(counts: np.ndarray, kind: str, y: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group rate and its denominator for one (kind, class) of a (A, m, m) tensor."""
    n_a = counts.sum(axis=(1, 2))
    pred = counts[:, :, y].sum(axis=1)
    true = counts[:, y, :].sum(axis=1)
    hit = counts[:, y, y]
    if kind == "sel":
        return pred, n_a
    if kind == "tpr":
        return hit, true
    return pred - hit, n_a - true  # fpr


def gap_with_se(counts: np.ndarray, criterion: str) -> tuple[float, float]:
    """Held-out subgroup gap ``max |r_a - r|`` (as fedrec.metrics) and its standard error.

    ``r = sum_b w_b r_b`` with ``w_b`` the denominator shares, so
    ``Var(r_a - r) = (1 - w_a)^2 v_a + sum_{b != a} w_b^2 v_b`` with binomial
    ``v_b = r_b (1 - r_b) / n_b``, evaluated at the (kind, class, group) of the max.
    """
    m = counts.shape[1]
    kinds = {"dp": ["sel"], "eop": ["tpr"], "eo": ["tpr", "fpr"]}[criterion]
    classes = list(range(m)) if criterion == "dp" or m > 2 else [1]
    best, best_se = 0.0, 0.0
    for kind in kinds:
        for y in classes:
            num, den = _rates(counts, kind, y)
            ok = den > 0
            if ok.sum() < 2:
                continue
            r_b = np.where(ok, num / np.where(ok, den, 1), 0.0)
            w = np.where(ok, den, 0) / den[ok].sum()
            r = float((w * r_b).sum())
            v = np.where(ok, r_b * (1 - r_b) / np.where(ok, den, 1), 0.0)
            for a in np.flatnonzero(ok):
                g = abs(r_b[a] - r)
                if g > best:
                    var = (1 - w[a]) ** 2 * v[a] + sum(
                        w[b] ** 2 * v[b] for b in np.flatnonzero(ok) if b != a
                    )
                    best, best_se = float(g), float(np.sqrt(var))
    return best, best_se


def heldout(run_dir: Path, criterion: str, A: int, m: int, xi: float | None = None) -> dict:
    """Held-out metrics of the realized test predictions of a run (with ``xi``: also
    whether every client's gap is within ``xi`` + 2 of its SEs)."""
    from fedrec.metrics import federated_metrics

    by_client: dict[int, np.ndarray] = {}
    with open(run_dir / "predictions.csv") as fh:
        for row in csv.DictReader(fh):
            k = int(row["client"])
            c = by_client.setdefault(k, np.zeros((A, m, m), dtype=np.int64))
            c[int(row["group"]), int(row["label"]), int(row["prediction"])] += 1
    fm = federated_metrics(by_client)
    gap, se = gap_with_se(sum(by_client.values()), criterion)
    out = {
        "acc": fm.overall["accuracy"],
        "dg": gap,
        "se": se,
        "dg_pairwise": fm.overall[PAIR[criterion]],
        "dl": fm.local[f"{SUB[criterion]}_local_max"],
        "dl_pairwise": fm.local[f"{PAIR[criterion]}_local_max"],
    }
    if xi is not None:
        local = [gap_with_se(c, criterion) for c in by_client.values()]
        out["dl_within_2se"] = all(g <= xi + 2 * e for g, e in local)
    return out


# ------------------------------------------------------------------ runs
def _run(cfg: dict, run_dir: Path) -> dict:
    import shutil

    import fedrec

    if run_dir.exists():
        shutil.rmtree(run_dir)
    return fedrec.run(cfg, backend="local", out=run_dir, quiet=True)


def _cached(out: Path, tag: str, compute) -> dict:
    """``compute(run_dir)`` once per tag: its result is cached as ``out/<tag>.json``."""
    cache = out / f"{tag}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    res = compute(out / "runs" / tag)
    cache.write_text(json.dumps(res))
    return res


def fedavg_cell(dataset: str, seed: int, out: Path) -> dict:
    def compute(run_dir: Path) -> dict:
        cfg = run_config(dataset, seed, **{"strategy.name": "fedavg", "output.checkpoint": False})
        A, m = _shape(_run(cfg, run_dir))
        return {c: heldout(run_dir, c, A, m) for c in ALL_CRITERIA}

    return _cached(out, f"{dataset}_fedavg_s{seed}", compute)


def _shape(summary: dict) -> tuple[int, int]:
    groups = summary["final_by_group"]
    return len(groups), len(groups[0]["selection_rate"])


def post_cell(dataset: str, crit: str, scope: str, xi: float, seed: int, out: Path) -> dict:
    def compute(run_dir: Path) -> dict:
        cfg = run_config(
            dataset,
            seed,
            **{
                "strategy.name": "fedfact-post",
                "strategy.params.criterion": crit,
                "strategy.params.scope": scope,
                "strategy.params.xi-global": xi,
                "strategy.params.xi-local": xi,
                "output.checkpoint": True,
            },
        )
        t0 = time.perf_counter()
        A, m = _shape(_run(cfg, run_dir))
        wall = time.perf_counter() - t0
        with open(run_dir / "rounds.jsonl") as fh:
            last = [r for r in map(json.loads, fh) if r.get("scope") == "global"][-1]
        return {
            "train_dg": last["train_gap_on_train"],
            "train_dl": last["train_gap_on_train_local_max"],
            "train_dg_pairwise": last["train_gap_on_train_pairwise"],
            "train_acc": last["train_accuracy_on_train"],
            **heldout(run_dir, crit, A, m, xi),
            "wall_s": wall,
            **central_lp(run_dir, crit, scope, xi),
        }

    return _cached(out, f"{dataset}_{crit}_{scope}_xi{xi}_s{seed}", compute)


def central_lp(run_dir: Path, crit: str, scope: str, xi: float) -> dict:
    """Test accuracy of the pooled-data fair LP on the scores fedfact-post used."""
    from fedrec.algorithms.calibration import GroupCalibrator
    from fedrec.algorithms.lp import fair_lp_scipy, lp_classifier_predict
    from fedrec.callbacks import load_checkpoint
    from fedrec.config import validate
    from fedrec.metrics import confusion_counts, federated_metrics
    from fedrec.models import set_weights
    from fedrec.tasks import initial_model, load_client_data
    from fedrec.training import predict_proba

    cfg = validate(json.loads((run_dir / "config.json").read_text()))
    _, weights, _ = load_checkpoint(run_dir / "checkpoint.npz")
    data = [load_client_data(cfg, k) for k in range(cfg.partition.num_clients)]
    model = initial_model(cfg, data[0].num_features, data[0].num_classes)
    set_weights(model, weights)
    tr, te = [], []
    for d in data:
        e_tr, e_te = predict_proba(model, d.X_train), predict_proba(model, d.X_test)
        if crit in ("eop", "eo"):  # fedfact-post's calibration = "auto"
            cal = GroupCalibrator().fit(e_tr, d.y_train, d.a_train, d.num_groups)
            e_tr, e_te = cal.apply(e_tr, d.a_train), cal.apply(e_te, d.a_test)
        tr.append(e_tr)
        te.append(e_te)
    eta = np.concatenate(tr)
    a = np.concatenate([d.a_train for d in data])
    y = np.concatenate([d.y_train for d in data])
    k = np.concatenate([np.full(len(d.y_train), i) for i, d in enumerate(data)])
    counts = np.stack([d.counts("train").T for d in data]).astype(float)
    t0 = time.perf_counter()
    lp = fair_lp_scipy(eta, a, k, crit, scope, xi, xi, counts=counts)
    by_client = {}
    for i, d in enumerate(data):
        pred = lp_classifier_predict(
            te[i], d.a_test, np.full(len(d.y_test), i), crit, scope, lp.lam, lp.mu, counts
        )
        by_client[i] = confusion_counts(d.y_test, pred, d.a_test, d.num_classes, d.num_groups)
    fm = federated_metrics(by_client)
    return {
        "lp_acc": fm.overall["accuracy"],
        # label-based accuracy of the LP's (fractional) solution on the same train rows
        "lp_train_acc": float(np.asarray(lp.h)[np.arange(len(y)), y].mean()),
        "lp_train_objective": lp.objective,
        "lp_status": lp.status,
        "lp_s": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------ report
def _task(job: tuple) -> tuple[tuple, dict]:
    kind, *rest = job
    if kind == "fedavg":
        return job, fedavg_cell(*rest)
    return job, post_cell(*rest)


def robustness_table(
    res: dict, fa: dict, datasets, crits, seeds, scopes, xi: float
) -> tuple[str, dict]:
    head = (
        "| dataset | criterion | scope | train D_g (max over seeds) | train D_l (max) | "
        "held-out D_g ± SE | D_g ≤ ξ+2SE | held-out D_l | D_l ≤ ξ+2SE, all clients | "
        "FedAvg held-out D_g | held-out D_g pairwise | acc % train / test | "
        "LP acc % train / test |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    tally: dict = {
        "cells": 0,
        "train": 0,
        "train_fail": [],
        "g_cells": 0,
        "heldout": 0,
        "heldout_fail": [],
        "l_cells": 0,
        "heldout_l": 0,
        "raised": [],
        "acc": 0,
        "acc_n": 0,
        "acc_fail": [],
    }
    for ds in datasets:
        for crit in criteria(ds, crits):
            for scope in scopes:
                runs = [res[(ds, crit, scope, xi, s)] for s in seeds]
                fav = [fa[(ds, s)][crit] for s in seeds]
                ok = [r["dg"] <= xi + 2 * r["se"] for r in runs]
                for r, f, s in zip(runs, fav, seeds):
                    name = f"{ds}/{crit}/{scope}/s{s}"
                    tally["cells"] += 1
                    # the scope's constrained gaps: global (global, both), local (local, both)
                    checks = []
                    if scope in ("global", "both"):
                        checks.append(r["train_dg"] <= xi + 0.002)
                        tally["g_cells"] += 1
                        if r["dg"] <= xi + 2 * r["se"]:
                            tally["heldout"] += 1
                        else:
                            tally["heldout_fail"].append(name)
                    if scope in ("local", "both"):
                        checks.append(r["train_dl"] <= xi + 0.002)
                        tally["l_cells"] += 1
                        tally["heldout_l"] += r["dl_within_2se"]
                    if all(checks):
                        tally["train"] += 1
                    else:
                        tally["train_fail"].append(name)
                    if r["dg"] > f["dg"] + 2 * r["se"]:
                        tally["raised"].append(name)
                    if r["lp_status"] == "optimal":
                        tally["acc_n"] += 1
                        if r["train_acc"] >= r["lp_train_acc"] - 0.01:
                            tally["acc"] += 1
                        else:
                            tally["acc_fail"].append(name)

                def mean(key, rr=runs):
                    return statistics.fmean(x[key] for x in rr)

                rows.append(
                    f"| {ds} | {crit} | {scope} | {max(r['train_dg'] for r in runs):.4f} | "
                    f"{max(r['train_dl'] for r in runs):.4f} | "
                    f"{mean('dg'):.4f} ± {mean('se'):.4f} | {sum(ok)}/{len(ok)} | "
                    f"{mean('dl'):.4f} | {sum(r['dl_within_2se'] for r in runs)}/{len(runs)} | "
                    f"{statistics.fmean(f['dg'] for f in fav):.4f} | {mean('dg_pairwise'):.4f} | "
                    f"{100 * mean('train_acc'):.2f} / {100 * mean('acc'):.2f} | "
                    f"{100 * mean('lp_train_acc'):.2f} / {100 * mean('lp_acc'):.2f} |"
                )
    return head + "\n" + "\n".join(rows), tally


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="*", default=list(DATASETS))
    p.add_argument("--criteria", nargs="*", default=list(ALL_CRITERIA))
    p.add_argument("--scopes", nargs="*", default=list(SCOPES))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--xi", type=float, default=0.01)
    p.add_argument("--controllability", nargs="*", default=["adult", "bank"])
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default="runs/fedfact_robustness")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for ds in args.datasets:
        if ds not in DATASETS:
            p.error(f"unknown dataset {ds!r}; choose from {', '.join(DATASETS)}")
    jobs: list[tuple] = [("fedavg", ds, s, out) for ds in args.datasets for s in args.seeds]
    for ds in args.datasets:
        for crit in criteria(ds, args.criteria):
            for scope in args.scopes:
                jobs += [("post", ds, crit, scope, args.xi, s, out) for s in args.seeds]
    for ds in args.controllability:
        for xi in CONTROL_XI:
            jobs += [("post", ds, "dp", "both", xi, s, out) for s in args.seeds]
    jobs = list(dict.fromkeys(jobs))
    results: dict = {}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for i, (job, res) in enumerate(pool.map(_task, jobs), 1):
            results[job] = res
            print(
                f"[{i}/{len(jobs)} {time.perf_counter() - t0:.0f}s] {job[:-1]}",
                file=sys.stderr,
                flush=True,
            )
    fa = {(j[1], j[2]): r for j, r in results.items() if j[0] == "fedavg"}
    post = {tuple(j[1:6]): r for j, r in results.items() if j[0] == "post"}
    table, tally = robustness_table(
        post, fa, args.datasets, args.criteria, args.seeds, args.scopes, args.xi
    )
    lines = [
        f"### Robustness (fedfact-post defaults, ξ_g = ξ_k = {args.xi}, seeds {args.seeds})\n",
        table,
        "",
        f"- train-set gap ≤ ξ + 0.002 (the scope's constrained gaps, global and/or local): "
        f"{tally['train']}/{tally['cells']} runs; not met: {tally['train_fail']}",
        f"- held-out D_global ≤ ξ + 2 SE (scopes global and both, where D_global is "
        f"constrained): {tally['heldout']}/{tally['g_cells']} runs; not met: "
        f"{tally['heldout_fail']}",
        f"- held-out D_local ≤ ξ + 2 SE on every client (scopes local and both): "
        f"{tally['heldout_l']}/{tally['l_cells']} runs",
        f"- held-out D_global above FedAvg's by more than 2 SE: "
        f"{len(tally['raised'])} runs {tally['raised']}",
        f"- train accuracy ≥ the LP's − 1 point (where the LP is optimal): "
        f"{tally['acc']}/{tally['acc_n']} runs; not met: {tally['acc_fail']}",
    ]
    for ds in args.controllability:
        lines += [
            f"\n### Controllability, {ds} (DP, scope both, seeds {args.seeds})\n",
            "| ξ | train D_g (max) | train D_l (max) | held-out D_g ± SE | "
            "held-out D_l | acc % | LP acc % |\n|---|---|---|---|---|---|---|",
        ]
        for xi in CONTROL_XI:
            rr = [post[(ds, "dp", "both", xi, s)] for s in args.seeds]
            lines.append(
                f"| {xi} | {max(r['train_dg'] for r in rr):.4f} | "
                f"{max(r['train_dl'] for r in rr):.4f} | "
                f"{statistics.fmean(r['dg'] for r in rr):.4f} ± "
                f"{statistics.fmean(r['se'] for r in rr):.4f} | "
                f"{statistics.fmean(r['dl'] for r in rr):.4f} | "
                f"{100 * statistics.fmean(r['acc'] for r in rr):.2f} | "
                f"{100 * statistics.fmean(r['lp_acc'] for r in rr):.2f} |"
            )
    text = "\n".join(lines)
    (out / "robustness.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""FedFACT paper reproduction: Table 2 layout, controllability table, Pareto plot.

Runs every method of the paper's Table 2 that fedrec implements on the FedFACT
protocol configs of this folder (``<dataset>_<criterion>.toml``), over several seeds,
with the ``local`` runtime (bit-identical to ``ray``), and prints Markdown tables of
Acc (%) / D_global / D_local (mean ± std over seeds) next to the paper's numbers.

Methods: FedAvg, FairFed, FedFB, local-post (each client calibrates alone), FedFACT
g / l / g&l (Post and In), and the centralized limit: the pooled-data fair optimum on
the same scores (the LP of fedrec.algorithms.lp on the pooled training scores of the
FedAvg model; its duals define the classifier applied to the test rows, Theorem 5).

D_global / D_local are the pairwise DP gap (binary A: |P(Yhat=1|A=0) - P(Yhat=1|A=1)|,
what the paper's tables report; multi-class: max over classes) from pooled test counts
and the maximum over clients of the same gap on each client's test rows.

Usage::

    python experiments/fedfact/run_table2.py --datasets adult compas --seeds 0 1 2
    python experiments/fedfact/run_table2.py --controllability adult     # (xi_g, xi_k) grid
    python experiments/fedfact/run_table2.py --datasets drug_multiclass  # multi-class

Results are cached as JSON under ``--out`` (default runs/fedfact; one file per run),
so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# Paper Table 2 (Dirichlet gamma = 0.5, DP): Acc %, D_global, D_local (fedfact.md §10.1)
PAPER = {
    "adult": {
        "fedavg": (84.52, 0.1765, 0.2310),
        "fairfed": (80.73, 0.0983, 0.1434),
        "fedfb": (81.85, 0.0751, 0.1165),
        "post-g": (82.83, 0.0173, 0.0276),
        "post-l": (82.79, 0.0154, 0.0267),
        "post-gl": (82.74, 0.0134, 0.0274),
        "in-g": (82.05, 0.0015, 0.0408),
        "in-l": (82.44, 0.0140, 0.0508),
        "in-gl": (82.04, 0.0014, 0.0401),
    },
    "compas": {
        "fedavg": (69.73, 0.2766, 0.3590),
        "fairfed": (59.39, 0.1008, 0.1022),
        "fedfb": (58.09, 0.0879, 0.0983),
        "post-g": (67.27, 0.0128, 0.0660),
        "post-l": (67.49, 0.0315, 0.0552),
        "post-gl": (67.33, 0.0139, 0.0641),
        "in-g": (61.19, 0.0344, 0.0761),
        "in-l": (61.81, 0.0600, 0.0636),
        "in-gl": (61.17, 0.0407, 0.0732),
    },
}

SCOPE = {"g": "global", "l": "local", "gl": "both"}
LABEL = {
    "fedavg": "FedAvg",
    "fairfed": "FairFed",
    "fedfb": "FedFB",
    "local-post": "local-post",
    "post-g": "FedFACT g (Post)",
    "post-l": "FedFACT l (Post)",
    "post-gl": "FedFACT g&l (Post)",
    "in-g": "FedFACT g (In)",
    "in-l": "FedFACT l (In)",
    "in-gl": "FedFACT g&l (In)",
    "central": "Centralized limit (LP)",
}
METHODS = [
    "fedavg",
    "fairfed",
    "fedfb",
    "local-post",
    "post-g",
    "post-l",
    "post-gl",
    "in-g",
    "in-l",
    "in-gl",
]


def method_overrides(
    method: str, crit: str, xi_g: float, xi_k: float, rounds: int, in_rounds: int
) -> dict:
    """Flat config overrides selecting one method (common keys come from the TOML)."""
    fedfact = {
        "strategy.params.criterion": crit,
        "strategy.params.xi-global": xi_g,
        "strategy.params.xi-local": xi_k,
    }
    if method in ("fedavg", "fairfed", "fedfb"):
        extra = {"strategy.params.metric": crit} if method == "fairfed" and crit != "eo" else {}
        return {"strategy.name": method, "num-server-rounds": rounds, **extra}
    if method == "local-post":
        return {
            "strategy.name": "local-post",
            "num-server-rounds": rounds,
            **{k: v for k, v in fedfact.items()},
        }
    kind, scope = method.split("-")
    if kind == "post":
        return {
            "strategy.name": "fedfact-post",
            "num-server-rounds": rounds,
            "strategy.params.scope": SCOPE[scope],
            **fedfact,
        }
    return {
        "strategy.name": "fedfact-in",
        "num-server-rounds": in_rounds,
        "strategy.params.scope": SCOPE[scope],
        **fedfact,
    }


def base_config(dataset: str, crit: str, strategy: str) -> dict:
    """The TOML's keys; of its strategy.params only those ``strategy`` accepts."""
    from dataclasses import fields

    from fedrec.config import load_toml
    from fedrec.plugins import load_strategy

    flat = load_toml(HERE / f"{dataset}_{crit}.toml")
    accepted = {f.name.replace("_", "-") for f in fields(load_strategy(strategy).Params)}
    if strategy not in (flat.get("strategy.name"), "local-post"):
        # the TOML's [strategy.params] tune its own strategy; others share only these
        accepted &= {"criterion", "scope", "xi-global", "xi-local"}
    return {
        k: v
        for k, v in flat.items()
        if not k.startswith("strategy.")
        or (k.startswith("strategy.params.") and k.split(".", 2)[2] in accepted)
    }


def run_one(
    dataset: str,
    crit: str,
    method: str,
    seed: int,
    out: Path,
    xi_g: float,
    xi_k: float,
    rounds: int,
    in_rounds: int,
) -> dict:
    import fedrec

    tag = f"{dataset}_{crit}_{method}_s{seed}_xg{xi_g}_xk{xi_k}"
    cache = out / f"{tag}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    overrides = method_overrides(method, crit, xi_g, xi_k, rounds, in_rounds)
    cfg = {
        **base_config(dataset, crit, overrides["strategy.name"]),
        "seed": seed,
        "output.plots": False,
        "output.progress": False,
        "output.checkpoint": method == "fedavg",
        "output.client-metrics": False,
        **overrides,
    }
    run_dir = out / "runs" / tag
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    s = fedrec.run(cfg, backend="local", out=run_dir, quiet=True)
    res = {
        "acc": s["final"]["global"]["accuracy"],
        "wall_s": time.perf_counter() - t0,
        **_gaps(s["final"]["global"], s["final"]["local"], crit),
    }
    cache.write_text(json.dumps(res))
    return res


def _gaps(glob: dict, local: dict, crit: str) -> dict:
    key = {"dp": "dp_gap", "eop": "eop_gap", "eo": "eo_gap"}[crit]
    return {"dg": glob[key], "dl": local[f"{key}_local_max"]}


def central_limit(
    dataset: str, crit: str, seed: int, out: Path, xi_g: float, xi_k: float, rounds: int
) -> dict:
    """Pooled-data fair optimum on the FedAvg model's scores (LP on the pooled training
    scores, scope both; its duals define the test-time classifier)."""
    from fedrec.algorithms.lp import fair_lp_scipy, lp_classifier_predict
    from fedrec.config import validate
    from fedrec.metrics import confusion_counts, federated_metrics
    from fedrec.models import set_weights
    from fedrec.tasks import initial_model, load_client_data
    from fedrec.training import predict_proba

    tag = f"{dataset}_{crit}_central_s{seed}_xg{xi_g}_xk{xi_k}"
    cache = out / f"{tag}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    run_one(dataset, crit, "fedavg", seed, out, xi_g, xi_k, rounds, rounds)
    run_dir = out / "runs" / f"{dataset}_{crit}_fedavg_s{seed}_xg{xi_g}_xk{xi_k}"
    cfg = validate(json.loads((run_dir / "config.json").read_text()))
    ck = np.load(run_dir / "checkpoint.npz")
    weights = [ck[f"w{i}"] for i in range(len([k for k in ck.files if k.startswith("w")]))]
    data = [load_client_data(cfg, k) for k in range(cfg.partition.num_clients)]
    model = initial_model(cfg, data[0].num_features, data[0].num_classes)
    set_weights(model, weights)
    eta = np.concatenate([predict_proba(model, d.X_train) for d in data])
    a = np.concatenate([d.a_train for d in data])
    k = np.concatenate([np.full(len(d.y_train), i) for i, d in enumerate(data)])
    counts = np.stack([d.counts("train").T for d in data]).astype(float)  # (K, A, m)
    t0 = time.perf_counter()
    lp = fair_lp_scipy(eta, a, k, crit, "both", xi_g, xi_k, counts=counts)
    by_client = {}
    for i, d in enumerate(data):
        et = predict_proba(model, d.X_test)
        pred = lp_classifier_predict(
            et, d.a_test, np.full(len(d.y_test), i), crit, "both", lp.lam, lp.mu, counts
        )
        by_client[i] = confusion_counts(d.y_test, pred, d.a_test, d.num_classes, d.num_groups)
    fm = federated_metrics(by_client)
    res = {
        "acc": fm.overall["accuracy"],
        "wall_s": time.perf_counter() - t0,
        "lp_train_accuracy": lp.objective,
        **_gaps(fm.overall, fm.local, crit),
    }
    cache.write_text(json.dumps(res))
    return res


def fmt(vals: list[float], pct: bool = False) -> str:
    vals = [v * 100 if pct else v for v in vals]
    mean = statistics.fmean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{mean:.2f} ± {sd:.2f}" if pct else f"{mean:.4f} ± {sd:.4f}"


def table(dataset: str, crit: str, seeds: list[int], out: Path, args) -> tuple[str, dict]:
    rows, raw = [], {}
    head = "| Method | Acc % | D_global | D_local | paper Acc / Dg / Dl |\n|---|---|---|---|---|"
    from fedrec.errors import FedrecError

    for method in METHODS + ["central"]:
        runs = []
        try:
            for s in seeds:
                if method == "central":
                    runs.append(
                        central_limit(dataset, crit, s, out, args.xi_g, args.xi_k, args.rounds)
                    )
                else:
                    runs.append(
                        run_one(
                            dataset,
                            crit,
                            method,
                            s,
                            out,
                            args.xi_g,
                            args.xi_k,
                            args.rounds,
                            args.in_rounds,
                        )
                    )
                print(
                    f"  {dataset}/{crit} {method} seed {s}: acc {runs[-1]['acc']:.4f} "
                    f"Dg {runs[-1]['dg']:.4f} Dl {runs[-1]['dl']:.4f}",
                    file=sys.stderr,
                    flush=True,
                )
        except FedrecError as exc:  # e.g. a binary-only baseline on multi-class data
            rows.append(f"| {LABEL[method]} | n/a: {exc} | | | |")
            continue
        raw[method] = runs
        paper = PAPER.get(dataset, {}).get(method) if crit == "dp" else None
        ptxt = f"{paper[0]:.2f} / {paper[1]:.4f} / {paper[2]:.4f}" if paper else "—"
        rows.append(
            f"| {LABEL[method]} | {fmt([r['acc'] for r in runs], True)} | "
            f"{fmt([r['dg'] for r in runs])} | {fmt([r['dl'] for r in runs])} | {ptxt} |"
        )
    return head + "\n" + "\n".join(rows), raw


def controllability(dataset: str, seeds: list[int], out: Path, args) -> str:
    grid = [
        (0.0, 0.0),
        (0.02, 0.0),
        (0.04, 0.0),
        (0.0, 0.02),
        (0.02, 0.02),
        (0.04, 0.02),
        (0.0, 0.04),
        (0.02, 0.04),
        (0.04, 0.04),
    ]
    lines = ["| (xi_g, xi_l) | Post Acc % / Dg / Dl | In Acc % / Dg / Dl |", "|---|---|---|"]
    pareto = {"post": [], "in": []}
    for xg, xk in grid:
        cells = []
        for kind in ("post", "in"):
            runs = [
                run_one(dataset, "dp", f"{kind}-gl", s, out, xg, xk, args.rounds, args.in_rounds)
                for s in seeds
            ]
            acc = statistics.fmean(r["acc"] for r in runs) * 100
            dg = statistics.fmean(r["dg"] for r in runs)
            dl = statistics.fmean(r["dl"] for r in runs)
            pareto[kind].append((dg, acc))
            cells.append(f"{acc:.2f} / {dg:.4f} / {dl:.4f}")
        lines.append(f"| ({xg:.2f}, {xk:.2f}) | {cells[0]} | {cells[1]} |")
    return "\n".join(lines), pareto


def pareto_plot(raw: dict, pareto: dict | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, runs in raw.items():
        if method == "central":
            continue
        dg = statistics.fmean(r["dg"] for r in runs)
        acc = statistics.fmean(r["acc"] for r in runs) * 100
        marker = "*" if method.startswith(("post", "in")) else "o"
        ax.scatter(dg, acc, marker=marker, s=70 if marker == "*" else 40)
        ax.annotate(LABEL[method], (dg, acc), fontsize=7, xytext=(4, 2), textcoords="offset points")
    if pareto:
        for kind, pts in pareto.items():
            ax.scatter(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="x",
                alpha=0.7,
                label=f"FedFACT g&l ({kind}), (xi_g, xi_l) grid",
            )
    if "central" in raw:
        acc = statistics.fmean(r["acc"] for r in raw["central"]) * 100
        ax.axhline(acc, color="k", lw=1, ls=":", label="centralized limit (LP, same xi)")
    ax.set(xlabel="D_global (DP gap, lower is fairer)", ylabel="accuracy %", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="*", default=["adult", "compas"])
    p.add_argument("--criteria", nargs="*", default=["dp"])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=20, help="FedAvg / pre-training rounds")
    p.add_argument("--in-rounds", type=int, default=30, help="FedFACT-In rounds")
    p.add_argument("--xi-g", type=float, default=0.01)
    p.add_argument("--xi-k", type=float, default=0.01)
    p.add_argument("--controllability", nargs="*", default=[], help="datasets for the xi grid")
    p.add_argument("--out", default="runs/fedfact")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = [
        f"Seeds {args.seeds}; xi_g = {args.xi_g}, xi_k = {args.xi_k}; "
        f"{args.rounds} FedAvg rounds (+ the post rounds), {args.in_rounds} In rounds.\n"
    ]
    for ds in args.datasets:
        for crit in args.criteria:
            if not (HERE / f"{ds}_{crit}.toml").exists():
                continue
            md, raw = table(ds, crit, args.seeds, out, args)
            report.append(f"### {ds}, {crit.upper()}\n\n{md}\n")
            pareto = None
            if ds in args.controllability and crit == "dp":
                ctl, pareto = controllability(ds, args.seeds, out, args)
                report.append(f"### Controllability, {ds} (DP, g&l)\n\n{ctl}\n")
            pareto_plot(raw, pareto, out / f"pareto_{ds}_{crit}.png", f"{ds}, {crit.upper()}")
    text = "\n".join(report)
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tables (markdown, printed) and plots (``iterations.png``, ``tradeoff.png``) of the UFO
runs in ``results/``:

    python experiments/ufo/summarize.py
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
ALPHAS = (1.0, 0.75, 0.5, 0.25, 0.0)  # served mixture pi_theta^a pi_ref^(1-a); 0 = SFT
RES = HERE / "results"
COLS = [
    ("ndcg@10", "NDCG@10"),
    ("hr@10", "HR@10"),
    ("pop_mgu@10", "MGU@10"),
    ("pop_dgu@10", "DGU@10"),
    ("pop_kl@10", "KL(GP‖GR)"),
    ("pop_tv@10", "TV"),
    ("genre_mgu@10", "genre MGU@10"),
    ("coverage@10", "coverage@10"),
]
ORDER = ["sft", "reweight", "sprec", "ufo", "ufo-next", "ufo-steps"]


def _rows(name: str) -> list[dict]:
    path = RES / name
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _ms(vals) -> str:
    v = np.asarray([x for x in vals if x is not None], dtype=float)
    if not len(v):
        return "–"
    return f"{v.mean():.4f} ± {v.std():.4f}" if len(v) > 1 else f"{v.mean():.4f}"


def main() -> None:
    rows = _rows("ufo.jsonl")
    by = defaultdict(list)
    for r in rows:
        by[(r["dataset"], r["mode"], r["variant"])].append(r)
    for ds, mode in sorted({(d, m) for d, m, _ in by}):
        present = [v for v in ORDER if (ds, mode, v) in by]
        print(f"\n### {ds}, {mode} ({len(by[(ds, mode, present[0])])} seeds: mean ± std)\n")
        print("| variant | " + " | ".join(h for _, h in COLS) + " |")
        print("|---" * (len(COLS) + 1) + "|")
        for v in present:
            rs = by[(ds, mode, v)]
            print(f"| {v} | " + " | ".join(_ms([r.get(k) for r in rs]) for k, _ in COLS) + " |")
        if (ds, mode, "ufo") in by:
            rs = by[(ds, mode, "ufo")]
            print()
            for k in ("ndcg@10", "pop_mgu@10", "pop_dgu@10"):
                a = np.mean([r[f"sft_{k}"] for r in rs])
                b = np.mean([r[k] for r in rs])
                print(f"- {ds} {mode}: ufo vs its own SFT model {k}: {a:.4f} -> {b:.4f} "
                      f"({(b / a - 1) * 100:+.1f} %)")  # fmt: skip
            print(f"- iterations run (judger): {[len(r['judge']) for r in rs]}")
            for r in rs:
                c = r["covariance"]
                print(
                    f"- seed {r['seed']}: cov(pre-training bias, SFT shift) = {c['cov']:.2e} "
                    f"[{c['lo']:.2e}, {c['hi']:.2e}] (95 % user bootstrap), corr {c['corr']:.2f}"
                )
    serve = _serve_sweep(rows)
    rr = _rows("rerank.jsonl")
    _equal_ndcg(by, serve, rr)
    if rr:
        print("\n### post-hoc re-ranking of the SFT model (mean over seeds)\n")
        print("| dataset | mode | lambda | NDCG@10 | MGU@10 | DGU@10 |")
        print("|---|---|---|---|---|---|")
        grp = defaultdict(list)
        for r in rr:
            grp[(r["dataset"], r["mode"], r["lambda"])].append(r)
        for (ds, mode, lam), rs in sorted(grp.items()):
            print(
                f"| {ds} | {mode} | {lam:g} | {_ms([r['ndcg@10'] for r in rs])} | "
                f"{_ms([r['pop_mgu@10'] for r in rs])} | {_ms([r['pop_dgu@10'] for r in rs])} |"
            )
    _plots(by, rr, serve)


def _serve_sweep(rows) -> list[dict]:
    """The served geometric mixture of every finished ``ufo`` run, evaluated post hoc
    (cached in ``results/serve.jsonl``)."""
    from rerank_eval import rerank_sweep

    done = {(r["dataset"], r["mode"], r["seed"]) for r in _rows("serve.jsonl")}
    for r in rows:
        key = (r["dataset"], r["mode"], r["seed"])
        if r["variant"] != "ufo" or key in done:
            continue
        run = RES / f"{r['dataset']}-ufo-{r['mode']}-s{r['seed']}"
        for x in rerank_sweep(run, None, serve_alphas=ALPHAS):
            with (RES / "serve.jsonl").open("a") as fh:
                fh.write(json.dumps({"dataset": key[0], "mode": key[1], "seed": key[2], **x}))
                fh.write("\n")
        done.add(key)
    return _rows("serve.jsonl")


def _at(curve: list[tuple[float, float]], x0: float) -> float:
    """MGU interpolated at NDCG ``x0`` along a curve of (NDCG, MGU) points (the best
    MGU among the segments that reach ``x0``; NaN if none does)."""
    best = np.nan
    pts = sorted(curve)
    for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
        if xa <= x0 <= xb and xb > xa:
            y = ya + (yb - ya) * (x0 - xa) / (xb - xa)
            best = y if np.isnan(best) else min(best, y)
    for x, y in pts:
        if x >= x0:
            best = y if np.isnan(best) else min(best, y)
    return best


def _equal_ndcg(by, serve, rr) -> None:
    """MGU@10 each method reaches at a given share of its seed's SFT NDCG@10."""
    if not serve:
        return
    print("\n### at equal NDCG@10: MGU@10 reachable (mean over seeds; – = not reached)\n")
    print(
        "| dataset | mode | NDCG@10 ≥ | UFO (served mixture, a swept) "
        "| SFT + re-ranking (λ swept) | SPRec | SFT re-weighting |"
    )
    print("|---|---|---|---|---|---|---|")
    for ds, mode in sorted({(r["dataset"], r["mode"]) for r in serve}):
        seeds = sorted({r["seed"] for r in serve if (r["dataset"], r["mode"]) == (ds, mode)})
        sft = {r["seed"]: r["ndcg@10"] for r in by.get((ds, mode, "sft"), [])}
        for share in (1.0, 0.95, 0.9):
            cols = []
            for src in (serve, rr):
                vals = []
                for s_ in seeds:
                    if s_ not in sft:
                        continue
                    curve = [
                        (r["ndcg@10"], r["pop_mgu@10"])
                        for r in src
                        if (r["dataset"], r["mode"], r["seed"]) == (ds, mode, s_)
                    ]
                    vals.append(_at(curve, share * sft[s_]))
                v = np.asarray(vals, dtype=float)
                cols.append("–" if not len(v) or np.isnan(v).any() else f"{v.mean():.4f}")
            for variant in ("sprec", "reweight"):
                pts = [
                    r["pop_mgu@10"]
                    for r in by.get((ds, mode, variant), [])
                    if r["seed"] in sft and r["ndcg@10"] >= share * sft[r["seed"]]
                ]
                n = len(by.get((ds, mode, variant), []))
                cols.append(f"{np.mean(pts):.4f}" if n and len(pts) == n else "–")
            print(f"| {ds} | {mode} | {share:.0%} of SFT | " + " | ".join(cols) + " |")


def _plots(by, rr, serve) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for v in ("ufo", "sprec"):
        rs = by.get(("ml-100k", "fed", v))
        if not rs:
            continue
        rounds = [p["round"] for p in rs[0]["per_round"]]
        for ax, key in zip(axes, ("pop_mgu@10", "ndcg@10")):
            vals = np.array([[p[key] for p in r["per_round"]] for r in rs])
            ax.plot(rounds, vals.mean(0), marker=".", label=v)
            ax.fill_between(rounds, vals.min(0), vals.max(0), alpha=0.2)
    cfg = RES / "ml-100k-ufo-fed-s0" / "config.json"
    sft_rounds = json.loads(cfg.read_text())["strategy.params.sft-rounds"] if cfg.exists() else 0
    for ax, key in zip(axes, ("MGU@10", "NDCG@10")):
        if sft_rounds:
            ax.axvline(sft_rounds, color="grey", ls=":")
        ax.set_xlabel("round (SFT, then self-play iterations)")
        ax.set_ylabel(key)
        ax.legend(fontsize=8)
    fig.suptitle("ML-100K, federated: SFT then self-play (mean and range over seeds)")
    fig.tight_layout()
    fig.savefig(HERE / "iterations.png", dpi=110)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (ds, mode, v), rs in sorted(by.items()):
        if ds != "ml-100k" or mode != "fed":
            continue
        x, y = np.mean([r["ndcg@10"] for r in rs]), np.mean([r["pop_mgu@10"] for r in rs])
        ax.scatter(x, y, s=40)
        ax.annotate(v, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    pts = defaultdict(list)
    for r in rr:
        if r["dataset"] == "ml-100k" and r["mode"] == "fed":
            pts[r["lambda"]].append((r["ndcg@10"], r["pop_mgu@10"]))
    if pts:
        xy = np.array([np.mean(pts[k], axis=0) for k in sorted(pts)])
        ax.plot(xy[:, 0], xy[:, 1], "k--", marker=".", label="SFT + re-ranking (λ sweep)")
    mix = defaultdict(list)
    for r in serve:
        if r["dataset"] == "ml-100k" and r["mode"] == "fed":
            mix[r["serve_alpha"]].append((r["ndcg@10"], r["pop_mgu@10"]))
    if mix:
        xy = np.array([np.mean(mix[k], axis=0) for k in sorted(mix)])
        ax.plot(xy[:, 0], xy[:, 1], "r:", marker=".", label="UFO, served mixture (a sweep)")
    if pts or mix:
        ax.legend(fontsize=8)
    ax.set_xlabel("NDCG@10")
    ax.set_ylabel("MGU@10 (popularity quintiles; lower is fairer)")
    ax.set_title("ML-100K, federated")
    fig.tight_layout()
    fig.savefig(HERE / "tradeoff.png", dpi=110)


if __name__ == "__main__":
    main()

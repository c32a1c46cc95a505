"""Tables (markdown, printed) and plots (``iterations.png``, ``tradeoff.png``) of the UFO
runs in ``results/``:

    python experiments/ufo/summarize.py
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
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
ORDER = ["sft", "reweight", "sprec", "ufo"]


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
    rr = _rows("rerank.jsonl")
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
    _plots(by, rr)


def _plots(by, rr) -> None:
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
    sft = by.get(("ml-100k", "fed", "ufo"))
    for ax, key in zip(axes, ("MGU@10", "NDCG@10")):
        if sft:
            ax.axvline(int(sft[0]["per_round"][0]["round"]) - 1 + 10, color="grey", ls=":")
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
        ax.legend(fontsize=8)
    ax.set_xlabel("NDCG@10")
    ax.set_ylabel("MGU@10 (popularity quintiles; lower is fairer)")
    ax.set_title("ML-100K, federated")
    fig.tight_layout()
    fig.savefig(HERE / "tradeoff.png", dpi=110)


if __name__ == "__main__":
    main()

"""Tables (markdown, printed) and plots (``tradeoff.png``, ``groups.png``) of the BiFair
runs in ``results/``:

    python experiments/bifair/summarize.py
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
    ("pop_worst25@10", "pop worst-25%"),
    ("genre_worst25@10", "genre worst-25%"),
    ("pop_mgu@10", "pop MGU@10"),
    ("genre_mgu@10", "genre MGU@10"),
    ("gini@10", "Gini@10"),
    ("coverage@10", "coverage@10"),
]
ORDER = [
    "plain",
    "reweight",
    "reweight-genre",
    "no-z",
    "no-mgda",
    "no-inner",
    "bifair",
    "bifair-genre",
    "plain-svdpop",
    "bifair-svdpop",
]


def _rows(name: str) -> list[dict]:
    path = RES / name
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _ms(vals) -> str:
    v = np.asarray([x for x in vals if x is not None], dtype=float)
    if not len(v):
        return "–"
    return f"{v.mean():.4f} ± {v.std():.4f}" if len(v) > 1 else f"{v.mean():.4f}"


def main() -> None:
    rows = _rows("bifair.jsonl")
    by = defaultdict(list)
    for r in rows:
        tag = "" if r.get("dataset", "ml-100k") == "ml-100k" else f"{r['dataset']} "
        by[(f"{tag}{r['mode']}", r["variant"])].append(r)
    for mode in sorted({m for m, _ in by}):
        present = [v for v in ORDER if (mode, v) in by]
        if not present:
            continue
        print(f"\n### {mode} ({len(by[(mode, present[0])])} seeds: mean ± std)\n")
        print("| variant | " + " | ".join(h for _, h in COLS) + " |")
        print("|---" * (len(COLS) + 1) + "|")
        for v in present:
            print(
                f"| {v} | "
                + " | ".join(_ms([r.get(k) for r in by[(mode, v)]]) for k, _ in COLS)
                + " |"
            )
        if (mode, "plain") in by and (mode, "bifair") in by:
            print()
            for k in ("pop_worst25@10", "genre_worst25@10", "ndcg@10"):
                if k not in by[(mode, "plain")][0]:
                    continue
                a = np.mean([r[k] for r in by[(mode, "plain")]])
                b = np.mean([r[k] for r in by[(mode, "bifair")]])
                rel = (b / a - 1) * 100 if a else (float("inf") if b else 0.0)
                print(f"- {mode}: bifair vs plain {k}: {a:.4f} -> {b:.4f} ({rel:+.1f} %)")
    rr = _rows("rerank.jsonl")
    if rr:
        print("\n### post-hoc re-ranking of the plain model (mean over seeds)\n")
        print("| mode | lambda | NDCG@10 | pop worst-25% | genre worst-25% | pop MGU@10 |")
        print("|---|---|---|---|---|---|")
        grp = defaultdict(list)
        for r in rr:
            tag = "" if r.get("dataset", "ml-100k") == "ml-100k" else f"{r['dataset']} "
            grp[(f"{tag}{r['mode']}", r["lambda"])].append(r)
        for (mode, lam), rs in sorted(grp.items()):
            print(
                f"| {mode} | {lam:g} | {_ms([r['ndcg@10'] for r in rs])} | "
                f"{_ms([r['pop_worst25@10'] for r in rs])} | "
                f"{_ms([r.get('genre_worst25@10') for r in rs])} | "
                f"{_ms([r['pop_mgu@10'] for r in rs])} |"
            )
    _plots(by, rr)


def _plots(by, rr) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(
        axes, ("pop_worst25@10", "genre_worst25@10"), ("popularity quintiles", "genres")
    ):
        for (mode, v), rs in sorted(by.items()):
            if mode != "fed":
                continue
            x = np.mean([r["ndcg@10"] for r in rs])
            y = np.mean([r[key] for r in rs])
            ax.scatter(x, y, s=40)
            ax.annotate(v, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
        pts = defaultdict(list)
        for r in rr:
            if r["mode"] == "fed" and r.get("dataset", "ml-100k") == "ml-100k":
                pts[r["lambda"]].append((r["ndcg@10"], r[key]))
        if pts:
            lam = sorted(pts)
            xy = np.array([np.mean(pts[k], axis=0) for k in lam])
            ax.plot(xy[:, 0], xy[:, 1], "k--", marker=".", label="plain + re-ranking (λ sweep)")
            ax.legend(fontsize=8)
        ax.set_xlabel("NDCG@10")
        ax.set_ylabel("worst-25%-groups NDCG ratio")
        ax.set_title(f"federated, {title}")
    fig.tight_layout()
    fig.savefig(HERE / "tradeoff.png", dpi=110)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.25
    for k, v in enumerate(("plain", "reweight", "bifair")):
        runs = sorted(RES.glob(f"{v}-fed-s*/bifair.json"))
        if not runs:
            continue
        vals = np.array([json.loads(p.read_text())["groups"]["pop_ndcg@10"] for p in runs])
        vals = np.where(vals < 0, np.nan, vals)
        ax.bar(np.arange(vals.shape[1]) + (k - 1) * width, np.nanmean(vals, 0), width, label=v)
    ax.set_xticks(range(5), ["Q1 (most popular)", "Q2", "Q3", "Q4", "Q5"], fontsize=8)
    ax.set_ylabel("NDCG@10 of the group's test items")
    ax.set_title("per-group utility, federated, popularity quintiles")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "groups.png", dpi=110)


if __name__ == "__main__":
    main()

"""Run reports: PNG plots and the final table (pure; matplotlib, no flwr).

``plot_run(DIR)`` reads ``rounds.jsonl`` and ``partition.json`` and writes
``metrics.png`` (global and worst-client accuracy and fairness gaps per round),
``clients.png`` (final per-client accuracy and DP gap) and ``partition.png`` (rows
per client split by sensitive group).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_rounds(path: str | Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    plt = _plt()
    rows = read_rounds(run_dir / "rounds.jsonl")
    written = []
    glob_rows = [r for r in rows if r["scope"] == "global"]
    views = (  # (rows that have the key, file, [(panel title, keys), (panel title, keys)])
        (
            "ndcg@10",
            "metrics.png",
            [
                ("Ranking accuracy", ("ndcg@10", "hr@10")),
                ("Item-side exposure", ("exposure_pop@10", "gini@10", "coverage@10")),
            ],
        ),
        (
            "train_em",
            "metrics.png",
            [
                ("Greedy exact match of the answers", ("train_em", "forgot_em", "test_em")),
                ("Answer NLL", ("train_nll", "forgot_nll", "test_nll")),
            ],
        ),
        (  # u2a: the alignment view
            "val_margin",
            "alignment.png",
            [
                ("Validation preference margin", ("val_margin",)),
                (
                    "Greedy answers: banned, refusals, facts",
                    ("banned_rate", "refusal_rate", "train_em"),
                ),
            ],
        ),
    )
    for marker, name, panels in views:
        sel = [r for r in glob_rows if marker in r]
        if sel:
            written.append(_round_panels(plt, sel, panels, run_dir / name))
    glob = [r for r in rows if r["scope"] == "global" and "accuracy" in r]
    if glob:
        rounds = [r["round"] for r in glob]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        axes[0].plot(rounds, [r["accuracy"] for r in glob], "o-", label="global")
        if "accuracy_local_min" in glob[0]:
            axes[0].plot(
                rounds, [r["accuracy_local_min"] for r in glob], "s--", label="worst client"
            )
        axes[0].set(xlabel="round", ylabel="accuracy", title="Accuracy")
        for key, style in (("dp_gap", "o-"), ("eo_gap", "^-"), ("dp_gap_local_max", "s--")):
            if key in glob[0]:
                axes[1].plot(rounds, [r[key] for r in glob], style, label=key)
        axes[1].set(xlabel="round", ylabel="gap", title="Fairness gaps (lower is fairer)")
        from matplotlib.ticker import MaxNLocator

        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(run_dir / "metrics.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    clients = [r for r in rows if r["scope"] == "client"]
    if clients:
        last = max(r["round"] for r in clients)
        cl = sorted((r for r in clients if r["round"] == last), key=lambda r: r["client"])
        if len(cl) <= 200:
            fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(cl) + 2), 3.5))
            x = np.arange(len(cl))
            ax.bar(x - 0.2, [r["accuracy"] for r in cl], 0.4, label="accuracy")
            ax.bar(x + 0.2, [r.get("dp_gap", 0.0) for r in cl], 0.4, label="dp_gap")
            ax.set_xticks(x, [str(r["client"]) for r in cl], fontsize=7)
            ax.set(xlabel="client", title=f"Per-client metrics, round {last}")
            ax.legend(fontsize=8)
            fig.tight_layout()
            written.append(run_dir / "clients.png")
            fig.savefig(written[-1], dpi=110)
            plt.close(fig)
    part_path = run_dir / "partition.json"
    if part_path.exists():
        part = json.loads(part_path.read_text())
        cl = part.get("clients", [])
        if cl and cl[0].get("train_counts_label_by_group") and len(cl) <= 200:
            by_group = np.array(
                [
                    np.asarray(c["train_counts_label_by_group"]).sum(axis=0)
                    + np.asarray(c["test_counts_label_by_group"]).sum(axis=0)
                    for c in cl
                ]
            )
            fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(cl) + 2), 3.5))
            bottom = np.zeros(len(cl))
            for g in range(by_group.shape[1]):
                ax.bar(np.arange(len(cl)), by_group[:, g], bottom=bottom, label=f"group {g}")
                bottom += by_group[:, g]
            ax.set(xlabel="client", ylabel="rows", title="Partition: rows per client by group")
            ax.legend(fontsize=8)
            fig.tight_layout()
            written.append(run_dir / "partition.png")
            fig.savefig(written[-1], dpi=110)
            plt.close(fig)
    return written


def _round_panels(plt, rows: list[dict], panels, path: Path) -> Path:
    """Side-by-side per-round curves: one panel per ``(title, keys)``; a key is drawn when
    the last row has it (gaps as NaN)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 3.8))
    rounds = [r["round"] for r in rows]
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            if key in rows[-1]:
                ax.plot(rounds, [r.get(key, float("nan")) for r in rows], "o-", ms=3, label=key)
        ax.set(xlabel="round", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


RANKING_KEYS = (
    "hr@10",
    "ndcg@10",
    "recall@20",
    "ndcg@20",
    "exposure_pop@10",
    "gini@10",
    "coverage@10",
    "ndcg_gap@10",
    "user_ndcg@10_gap",
)


LM_KEYS = (
    "train_em",
    "train_nll",
    "forgot_em",
    "forgot_nll",
    "test_em",
    "test_nll",
    "val_margin",
    "banned_rate",
    "refusal_rate",
)


def format_table(summary: dict, keys=("accuracy", "dp_gap", "eop_gap", "eo_gap")) -> str:
    """The final metrics as a small text table: global, worst client, mean client
    (classification) or one row of ranking and item-fairness metrics (recommendation)."""
    g, loc = summary["final"]["global"], summary["final"]["local"]
    if "accuracy" not in g:
        ks = [k for k in (*RANKING_KEYS, *LM_KEYS) if k in g]
        return "\n".join(f"{k:<24}{g[k]:>10.4f}" for k in ks)
    head = f"{'scope':<14}" + "".join(f"{k:>12}" for k in keys)
    lines = [head, "-" * len(head)]
    lines.append(f"{'global':<14}" + "".join(f"{g.get(k, float('nan')):>12.4f}" for k in keys))
    for label, suffix in (("local (max)", "_local_max"), ("local (mean)", "_local_mean")):
        vals = []
        for k in keys:
            if k == "accuracy":
                v = loc.get(
                    "accuracy_local_min" if suffix == "_local_max" else "accuracy_local_mean",
                    float("nan"),
                )
            else:
                v = loc.get(k + suffix, float("nan"))
            vals.append(v)
        name = "local (min)" if False else label
        lines.append(f"{name:<14}" + "".join(f"{v:>12.4f}" for v in vals))
    lines.append(
        "(local rows: worst / mean over clients; accuracy column shows the minimum "
        "/ mean client accuracy)"
    )
    return "\n".join(lines)


def format_comparison(
    summaries: dict[str, dict], keys=("accuracy", "dp_gap", "eop_gap", "eo_gap")
) -> str:
    """One row per strategy: global metrics and the worst client's gaps (D_local)."""
    cols = [
        ("accuracy", "global"),
        ("dp_gap", "global"),
        ("dp_gap", "local max"),
        ("eo_gap", "global"),
        ("eo_gap", "local max"),
        ("accuracy", "worst client"),
    ]
    head = f"{'strategy':<16}" + "".join(f"{k + ' ' + s:>22}" for k, s in cols)
    lines = [head, "-" * len(head)]
    for name, sm in summaries.items():
        g, loc = sm["final"]["global"], sm["final"]["local"]
        vals = [
            g.get("accuracy"),
            g.get("dp_gap"),
            loc.get("dp_gap_local_max"),
            g.get("eo_gap"),
            loc.get("eo_gap_local_max"),
            loc.get("accuracy_local_min"),
        ]
        lines.append(
            f"{name:<16}" + "".join(f"{v:>22.4f}" if v is not None else f"{'-':>22}" for v in vals)
        )
    lines.append(
        "(dp_gap: max over classes and group pairs of |P(Yhat=y|A=a)-P(Yhat=y|A=b)|; "
        "local max = worst client, D_local)"
    )
    return "\n".join(lines)

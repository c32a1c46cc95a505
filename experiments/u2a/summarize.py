"""Tables and a plot of ``experiments/u2a/run.py``'s results (README-ready markdown).

python experiments/u2a/summarize.py experiments/u2a/results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

KEYS = (
    ("val_margin", "validation margin J"),
    ("win_rate", "win rate vs Base"),
    ("banned_rate", "banned-token rate"),
    ("refusal_rate", "refusal rate"),
    ("fact_accuracy", "fact accuracy"),
)


def ms(vals, fmt="{:.3f}"):
    v = [x for x in vals if x is not None]
    if not v:
        return "–"
    return (
        fmt.format(v[0]) if len(v) == 1 else f"{fmt.format(np.mean(v))} ± {fmt.format(np.std(v))}"
    )


def main(argv=None) -> int:
    d = Path((argv or sys.argv[1:] or [str(Path(__file__).parent / "results")])[0])
    runs = [json.loads(p.read_text()) for p in sorted(d.glob("seed-*.json"))]
    a = runs[0]["args"]
    print(
        f"seeds {[r['seed'] for r in runs]}; {a['people']} people, {runs[0]['num_negatives']} "
        f"candidate negatives ({runs[0]['harmful_total']} planted harmful); {a['rounds']} rounds "
        f"x {a['steps']} steps, lr {a['lr_align']}, budget m = {a['budget']}\n"
    )
    for part in ("central", "federated"):
        if part not in runs[0]:
            continue
        table = runs[0][part] if part == "central" else runs[0][part]["runs"]
        print(f"**{part}** (mean ± sd over seeds)\n")
        print("| method | " + " | ".join(k[1] for k in KEYS) + " | harmful selected |")
        print("|---|" + "---|" * (len(KEYS) + 1))
        for nm in table:
            cells = [ms([get_(r, part, nm).get(k) for r in runs]) for k, _ in KEYS]
            h = [get_(r, part, nm).get("harmful_selected") for r in runs]
            hs = (
                "–"
                if h[0] is None
                else ", ".join(f"{x}/{r['harmful_total']}" for x, r in zip(h, runs))
            )
            print(f"| {nm} | " + " | ".join(cells) + f" | {hs} |")
        print()
        print(
            f"**{part}: U2A against uniform unlearning of all negatives "
            "(same loss, equal steps)**\n"
        )
        print("| loss | Δ margin (U2A - all) per seed | Δ win rate per seed | U2A better on both |")
        print("|---|---|---|---|")
        for loss in ("ga", "graddiff", "npo"):
            u, al = f"{loss}/u2a", f"{loss}/all"
            if u not in table or al not in table:
                continue
            dm = [get_(r, part, u)["val_margin"] - get_(r, part, al)["val_margin"] for r in runs]
            dw = [get_(r, part, u)["win_rate"] - get_(r, part, al)["win_rate"] for r in runs]
            both = sum(x > 0 and y > 0 for x, y in zip(dm, dw))
            print(
                f"| {loss} | {', '.join(f'{x:+.3f}' for x in dm)} | "
                f"{', '.join(f'{x:+.3f}' for x in dw)} | {both}/{len(runs)} seeds |"
            )
        print()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for nm, v in runs[0]["central"].items():
        if "margins" not in v:
            continue
        arr = np.asarray([r["central"][nm]["margins"] for r in runs])
        ax.plot(arr.mean(0), "o-" if "u2a" in nm else "--", ms=3, label=nm)
    ax.set(xlabel="alignment round", ylabel="validation margin J", title="centralized")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(d / "margins.png", dpi=110)
    print(f"plot: {d / 'margins.png'}")
    return 0


def get_(r, part, nm):
    return r[part][nm] if part == "central" else r[part]["runs"][nm]


if __name__ == "__main__":
    raise SystemExit(main())

"""Tables and plots of ``experiments/mrd/run.py``'s results (README-ready markdown).

python experiments/mrd/summarize.py experiments/mrd/results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

LOSSES = ("ga", "graddiff", "npo")


def ms(vals, fmt="{:.2f}"):
    v = [x for x in vals if x is not None]
    if not v:
        return "–"
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(np.mean(v))} ± {fmt.format(np.std(v))}"


def main(argv=None) -> int:
    d = Path((argv or sys.argv[1:] or [str(Path(__file__).parent / "results")])[0])
    runs = [json.loads(p.read_text()) for p in sorted(d.glob("seed-*.json"))]
    seeds = [r["seed"] for r in runs]
    a = runs[0]["args"]
    print(
        f"seeds {seeds}; {a['people']} people, forget {a['forget_fraction']}, "
        f"d={a['d_model']} x {a['layers']} layers ({runs[0]['params']} parameters)\n"
    )
    # 1. MRD validation
    sig = [k for k in runs[0]["mrd_validation"] if k.startswith("sigma=")]
    print("| sigma | Spearman(MRD, GA steps-to-forget) | Spearman(-fragility, steps) | per seed |")
    print("|---|---|---|---|")
    for k in sig:
        rho = [r["mrd_validation"][k]["spearman"] for r in runs]
        fr = [r["mrd_validation"][k]["spearman_fragility"] for r in runs]
        print(f"| {k[6:]} | {ms(rho)} | {ms(fr)} | {', '.join(f'{x:.2f}' for x in rho)} |")
    print()
    # 2. steps / rounds to target
    for part, key in (("central", "steps_to_target"), ("federated", "rounds_to_target")):
        if part not in runs[0]:
            continue
        unit = "steps" if part == "central" else "rounds"
        print(
            f"**{part}**: {unit} to forget quality >= {a['fq_target']} "
            "(per seed; ratio = MRD / uniform)\n"
        )
        print("| loss | uniform | MRD-weighted | ratio | ratio <= 0.7 |")
        print("|---|---|---|---|---|")
        for loss in LOSSES:
            u = [r[part]["runs"][f"{loss}/uniform"][key] for r in runs]
            m = [r[part]["runs"][f"{loss}/mrd"][key] for r in runs]
            ratio = [
                (mm / uu if uu else None) if (uu is not None and mm is not None) else None
                for uu, mm in zip(u, m)
            ]
            mean_ratio = (
                np.mean([x for x in m if x is not None]) / np.mean([x for x in u if x is not None])
                if all(x is not None for x in u + m) and np.mean(u) > 0
                else None
            )
            ok = "yes" if mean_ratio is not None and mean_ratio <= 0.7 else "no"
            print(
                f"| {loss} | {', '.join(str(x) for x in u)} | {', '.join(str(x) for x in m)} | "
                f"{', '.join('–' if x is None else f'{x:.2f}' for x in ratio)} "
                f"(mean {'–' if mean_ratio is None else f'{mean_ratio:.2f}'}) | {ok} |"
            )
        print()
    # 3. reports
    keys = [
        ("forget_em", "forget EM"),
        ("retain_em", "retain EM"),
        ("forget_quality", "forget quality"),
        ("mia_auc_loss", "MIA LOSS"),
        ("mia_auc_zlib", "MIA zlib"),
        ("mia_auc_mink", "MIA Min-K"),
        ("privleak_loss", "PrivLeak"),
        ("relearn_em_after", "EM after relearning"),
        ("q1_forget_quality", "FQ q1 (easy)"),
        ("q4_forget_quality", "FQ q4 (hard)"),
    ]
    for part in ("central", "federated"):
        if part not in runs[0]:
            continue
        names = list(runs[0][part]["reports"])
        print(
            f"**{part}**: the model at its first step/round with forget quality >= target "
            "(else after the last), mean ± sd over seeds\n"
        )
        print("| model | " + " | ".join(k[1] for k in keys) + " |")
        print("|---|" + "---|" * len(keys))
        for nm in names:
            cells = [ms([r[part]["reports"][nm].get(k) for r in runs]) for k, _ in keys]
            print(f"| {nm} | " + " | ".join(cells) + " |")
        print()
    # plot
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    parts = [p for p in ("central", "federated") if p in runs[0]]
    fig, axes = plt.subplots(len(parts), 3, figsize=(12, 3.4 * len(parts)), squeeze=False)
    for i, part in enumerate(parts):
        for j, loss in enumerate(LOSSES):
            ax = axes[i][j]
            for sampling, style in (("uniform", "-"), ("mrd", "--")):
                curves = [r[part]["runs"][f"{loss}/{sampling}"]["fq"] for r in runs]
                n = min(len(c) for c in curves)
                arr = np.log10(np.maximum(np.asarray([c[:n] for c in curves]), 1e-12))
                ax.plot(np.arange(n), arr.mean(0), style, label=sampling)
            ax.axhline(np.log10(a["fq_target"]), color="grey", lw=0.8)
            ax.set(
                title=f"{part}: {loss}",
                xlabel="step" if part == "central" else "round",
                ylabel="log10 forget quality",
            )
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(d / "curves.png", dpi=110)
    print(f"plot: {d / 'curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

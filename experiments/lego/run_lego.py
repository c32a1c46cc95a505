"""Federated LEGO on ML-100K: attacks before/after, noise baseline, dynamic-request cost.

1. **Dynamic run** (``lego_ml100k.toml``): FedMF-BPR, 943 per-user clients, then the
   LEGO requests "gender + age_bucket" and "add occupation"; the audit release gives
   the original and the final (all three unlearned) user embeddings.
2. **Full run**: the same config with one request "gender + age_bucket + occupation"
   (its cost is the yardstick of the dynamic request; with ``--timing-rounds`` equal
   to ``--rounds`` its FedMF model and therefore its final embeddings are those of the
   dynamic run, which is checked: the "LEGO bricks" property).
3. **Attacks**: MLP attacker of :mod:`fedrec.attacks` (class-balanced, 5 folds x 3) on
   gender, age_bucket and occupation, original vs federated LEGO embeddings.
4. **Gaussian-noise baseline**: ``e_u + c * ||e_u^0|| / sqrt(d) * N(0, I)`` (expected
   shift ``~ c ||e_u^0||``, the same relative scale as LEGO's ``eps``) for several ``c``;
   NDCG@10 recomputed with the frozen item table (``evaluate_full_ranking``).
5. **eps sweep**: the pure drivers (:class:`fedrec.algorithms.lego.Lego`, same seed and
   options as the federated run, which equals them: ``tests/test_lego_strategy.py``)
   on the original embeddings, all three attributes, for several ``eps``.

Writes ``report.md``, ``results.json`` and ``lego_tradeoff.png`` to ``--out``
(default ``runs/lego``)::

    FEDREC_DATA_DIR=../shared/data python experiments/lego/run_lego.py
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ATTRS = ("gender", "age_bucket", "occupation")
log = logging.getLogger("fedrec.experiments.lego")


def released(path: Path, name: str) -> np.ndarray:
    z = np.load(path / name)
    return z["embeddings"][np.argsort(z["users"])].astype(np.float64)


def main(argv=None) -> int:
    import torch

    import fedrec
    from fedrec.algorithms import lego as L
    from fedrec.attacks import attack
    from fedrec.config import load_toml
    from fedrec.recsys.data import user_data
    from fedrec.recsys.train import evaluate_full_ranking

    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=30, help="FedMF rounds before unlearning")
    p.add_argument(
        "--timing-rounds",
        type=int,
        default=None,
        help="FedMF rounds of the full-request run (default: --rounds)",
    )
    p.add_argument("--out", default="runs/lego")
    p.add_argument(
        "--eps",
        default="0.1,0.2,1.0",
        help="eps sweep (pure drivers; the config's eps is always included)",
    )
    p.add_argument(
        "--noise",
        default="0.05,0.1,0.2,0.5,1.0",
        help="noise scales c (sigma_u = c ||e_u|| / sqrt(d))",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    toml = HERE / "lego_ml100k.toml"
    base = load_toml(toml)
    dyn_dir, full_dir = (
        out / f"dynamic-r{args.rounds}",
        out / f"full-r{args.timing_rounds or args.rounds}",
    )
    if not (dyn_dir / "summary.json").exists():
        fedrec.run(toml, out=dyn_dir, overrides=[f"num-server-rounds={args.rounds}"], quiet=True)
    if not (full_dir / "summary.json").exists():
        fedrec.run(
            toml,
            out=full_dir,
            quiet=True,
            overrides=[
                f"num-server-rounds={args.timing_rounds or args.rounds}",
                'strategy.params.attributes="gender,age_bucket,occupation"',
                'strategy.params.add-attributes=""',
            ],
        )
    dyn = json.loads((dyn_dir / "lego.json").read_text())
    full = json.loads((full_dir / "lego.json").read_text())

    ds, ud = user_data("ml-100k")
    labels = {a: np.asarray(ds.user_attrs[a]) for a in ATTRS}
    num_classes = {a: len(ds.attr_names[a]) for a in ATTRS}  # as the federated server
    U0 = released(dyn_dir, "embeddings_original.npz")
    U_fed = released(dyn_dir, "embeddings.npz")
    Q = torch.as_tensor(np.load(dyn_dir / "checkpoint.npz")["w0"].astype(np.float32))
    d = U0.shape[1]

    def ndcg(U):
        Ut = torch.as_tensor(np.asarray(U, dtype=np.float32))
        m = evaluate_full_ranking(lambda u: Ut[u] @ Q.T, ud, (10,))
        return {"ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"]}

    def attacks(U, tag):
        t0 = time.perf_counter()
        res = {
            a: attack(
                np.asarray(U, dtype=np.float32), labels[a], attacker="mlp", seed=0, attribute=a
            )
            for a in ATTRS
        }
        log.info(
            "attacked %s in %.0f s: %s",
            tag,
            time.perf_counter() - t0,
            {a: round(r.auc, 3) for a, r in res.items()},
        )
        return {
            a: {
                "auc": r.auc,
                "auc_std": r.auc_std,
                "balanced_accuracy": r.balanced_accuracy,
                "macro_f1": r.macro_f1,
                "tpr@1%fpr": r.tpr_at_1pct_fpr,
            }
            for a, r in res.items()
        }

    rows = {
        "original": {**ndcg(U0), "attack": attacks(U0, "original")},
        "lego_federated": {**ndcg(U_fed), "attack": attacks(U_fed, "federated LEGO")},
    }

    # pure drivers: the main eps (check against the federated run) and the sweep
    opts = dict(
        seed=dyn["seed"],
        calibrate_options=dyn["calibrate_options"],
        combine_options=dyn["combine_options"],
    )
    sweep = {}
    main_eps = dyn["eps"]
    for eps in sorted({float(x) for x in args.eps.split(",")} | {main_eps}):
        t0 = time.perf_counter()
        U, alpha = pure_lego(U0, eps, labels, num_classes, **opts)
        entry = {
            **ndcg(U),
            "alpha": alpha,
            "pure_s": time.perf_counter() - t0,
            "max_row_shift_rel": float(
                (L.row_shifts(U, U0) / np.maximum(np.linalg.norm(U0, axis=1), 1e-12)).max()
            ),
        }
        if eps == main_eps:
            entry["max_abs_diff_vs_federated"] = float(np.abs(U - U_fed).max())
            entry["attack"] = rows["lego_federated"]["attack"]  # same embeddings to 1e-6
        else:
            entry["attack"] = attacks(U, f"LEGO eps={eps}")
        sweep[eps] = entry
    noise = {}
    for c in (float(x) for x in args.noise.split(",")):
        sigma = c * np.linalg.norm(U0, axis=1) / np.sqrt(d)
        U = L.gaussian_noise(U0, sigma, seed=0)
        noise[c] = {**ndcg(U), "attack": attacks(U, f"noise c={c}")}

    U_full = released(full_dir, "embeddings.npz")
    same_model = (args.timing_rounds or args.rounds) == args.rounds
    add, first, comp = dyn["requests"][1], dyn["requests"][0], full["requests"][0]
    timing = {
        "first_request_s": first["total_s"],
        "add_request_s": add["total_s"],
        "full_request_s": comp["total_s"],
        "add_over_full": add["total_s"] / comp["total_s"],
        "add_calibrate_s": add["calibrate_s"],
        "add_combine_s": add["combine_s"],
        "full_calibrate_s": comp["calibrate_s"],
        "full_combine_s": comp["combine_s"],
        "add_messages": add["messages"],
        "full_messages": comp["messages"],
        "add_upload_bytes": add["upload_bytes"],
        "full_upload_bytes": comp["upload_bytes"],
        "add_over_full_upload": sum(add["upload_bytes"].values())
        / sum(comp["upload_bytes"].values()),
        "calibrations": [r["num_calibrations"] for r in dyn["requests"]],
        "full_run_same_model": same_model,
        "max_abs_diff_dynamic_vs_full": float(np.abs(U_full - U_fed).max()) if same_model else None,
        "alpha_dynamic": add["alpha"],
        "alpha_full": comp["alpha"],
    }
    results = {
        "rounds": args.rounds,
        "eps": main_eps,
        "lego_json": dyn,
        "rows": rows,
        "sweep": {str(k): v for k, v in sweep.items()},
        "noise": {str(k): v for k, v in noise.items()},
        "timing": timing,
        "fedmf_before": dyn["before"],
        "after_requests": [r["metrics"] for r in dyn["requests"]],
        "config": {k: v for k, v in base.items() if k.startswith("strategy.params.")},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    plot(out / "lego_tradeoff.png", rows, sweep, noise, main_eps)
    text = report(results, sweep, noise)
    (out / "report.md").write_text(text)
    log.info("wrote %s, %s, %s", out / "report.md", out / "results.json", out / "lego_tradeoff.png")
    return 0


def pure_lego(U0, eps, labels, num_classes, *, seed, calibrate_options, combine_options):
    """``Lego(U0, eps, seed).add(a)`` for every attribute, without the intermediate
    combinations (Step 2 always restarts, so the final state is the same)."""
    from fedrec.algorithms import lego as L

    radii = L.eps_rows(U0, eps)
    cal = {
        a: L.calibrate(
            U0,
            labels[a],
            eps=radii,
            relative=False,
            seed=L.attr_seed(seed, a),
            num_classes=num_classes[a],
            **calibrate_options,
        )
        for a in ATTRS
    }
    comb = L.combine(
        {a: c.U for a, c in cal.items()},
        {a: labels[a] for a in ATTRS},
        seed=seed,
        priors={a: c.prior for a, c in cal.items()},
        **combine_options,
    )
    return comb.U, comb.alpha


def noise_auc_at(noise: dict, attr: str, ndcg: float) -> float:
    """AUC of the noise baseline at a given NDCG@10 (linear interpolation along its curve)."""
    pts = sorted((v["ndcg@10"], v["attack"][attr]["auc"]) for v in noise.values())
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    if ndcg < xs[0] or ndcg > xs[-1]:
        return float("nan")
    return float(np.interp(ndcg, xs, ys))


def plot(path: Path, rows, sweep, noise, main_eps) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    o = rows["original"]
    for ax, a in zip(axes, ATTRS):
        xs = [sweep[e]["ndcg@10"] for e in sorted(sweep)]
        ax.plot(xs, [sweep[e]["attack"][a]["auc"] for e in sorted(sweep)], "o-", label="LEGO (eps)")
        for e in sorted(sweep):
            ax.annotate(
                f"{e:g}",
                (sweep[e]["ndcg@10"], sweep[e]["attack"][a]["auc"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ks = sorted(noise)
        ax.plot(
            [noise[c]["ndcg@10"] for c in ks],
            [noise[c]["attack"][a]["auc"] for c in ks],
            "s--",
            label="Gaussian noise (c)",
        )
        for c in ks:
            ax.annotate(
                f"{c:g}",
                (noise[c]["ndcg@10"], noise[c]["attack"][a]["auc"]),
                fontsize=7,
                xytext=(3, -9),
                textcoords="offset points",
            )
        f = rows["lego_federated"]
        ax.plot(
            [f["ndcg@10"]],
            [f["attack"][a]["auc"]],
            "D",
            ms=8,
            mfc="none",
            label=f"federated LEGO (eps {main_eps:g})",
        )
        ax.plot([o["ndcg@10"]], [o["attack"][a]["auc"]], "*", ms=12, label="original")
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.axhline(0.55, color="grey", lw=0.8, ls=":")
        ax.axvline(0.95 * o["ndcg@10"], color="grey", lw=0.8, ls=":")
        ax.set(xlabel="NDCG@10", ylabel="attacker AUC (MLP)", title=a)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(res, sweep, noise) -> str:
    rows, t = res["rows"], res["timing"]
    o = rows["original"]
    lines = [
        f"# Federated LEGO on ML-100K ({res['rounds']} FedMF rounds, 943 per-user clients)",
        "",
        "| embeddings | NDCG@10 | HR@10 | NDCG@10 / original | "
        + " | ".join(f"AUC {a}" for a in ATTRS)
        + " |",
        "|---|---|---|---|" + "---|" * len(ATTRS),
    ]

    def row(name, r):
        aucs = " | ".join(
            f"{r['attack'][a]['auc']:.3f} ± {r['attack'][a]['auc_std']:.3f}" for a in ATTRS
        )
        return (
            f"| {name} | {r['ndcg@10']:.4f} | {r['hr@10']:.4f} | "
            f"{r['ndcg@10'] / o['ndcg@10']:.1%} | {aucs} |"
        )

    lines.append(row("original (FedMF)", o))
    lines.append(row(f"federated LEGO, eps {res['eps']:g} (3 attributes)", rows["lego_federated"]))
    for e in sorted(sweep, key=float):
        if float(e) != res["eps"]:
            lines.append(row(f"LEGO eps {float(e):g} (pure drivers)", sweep[e]))
    for c in sorted(noise, key=float):
        lines.append(row(f"Gaussian noise c {float(c):g}", noise[c]))
    f = rows["lego_federated"]
    lines += [
        "",
        "Noise baseline at the NDCG@10 of federated LEGO (interpolated): "
        + ", ".join(
            f"{a} {noise_auc_at(noise, a, f['ndcg@10']):.3f} (LEGO {f['attack'][a]['auc']:.3f})"
            for a in ATTRS
        ),
        "",
        f"alpha after the dynamic request: {_rounded(t['alpha_dynamic'])}; "
        f"full request: {_rounded(t['alpha_full'])}",
        "",
        "| request | Step 1 s | Step 2 s | total s | messages (Step 1 + Step 2) | upload MB |",
        "|---|---|---|---|---|---|",
    ]
    dyn = res["lego_json"]["requests"]
    for name, r in (("gender + age_bucket (first)", dyn[0]), ("add occupation", dyn[1])):
        lines.append(
            f"| {name} | {r['calibrate_s']:.0f} | {r['combine_s']:.0f} | {r['total_s']:.0f} | "
            f"{r['messages']['calibrate']} + {r['messages']['combine']} | "
            f"{sum(r['upload_bytes'].values()) / 1e6:.0f} |"
        )
    lines.append(
        f"| gender + age_bucket + occupation (full) | {t['full_calibrate_s']:.0f} | "
        f"{t['full_combine_s']:.0f} | {t['full_request_s']:.0f} | "
        f"{t['full_messages']['calibrate']} + {t['full_messages']['combine']} | "
        f"{sum(t['full_upload_bytes'].values()) / 1e6:.0f} |"
    )
    lines += [
        "",
        f"Adding one attribute: {t['add_over_full']:.0%} of the full three-attribute "
        f"request's wall time, {t['add_over_full_upload']:.0%} of its upload; calibrations "
        f"run per request {t['calibrations']}.",
    ]
    if t["max_abs_diff_dynamic_vs_full"] is not None:
        lines.append(
            f"Final embeddings of the dynamic run vs the full run: max |diff| "
            f"{t['max_abs_diff_dynamic_vs_full']:.2e}."
        )
    main = sweep[next(k for k in sweep if float(k) == res["eps"])]
    lines.append(
        f"Pure drivers vs federated run (eps {res['eps']:g}): max |diff| "
        f"{main['max_abs_diff_vs_federated']:.2e}."
    )
    return "\n".join(lines) + "\n"


def _rounded(alpha: dict) -> str:
    return json.dumps({k: round(v, 3) for k, v in alpha.items()})


if __name__ == "__main__":
    sys.exit(main())

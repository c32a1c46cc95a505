"""RAID on FedMF-BPR / ML-100K against the attack suite, with the baselines, over seeds.

Runs per seed (each a ``fedrec.run`` of raid_ml100k.toml with overrides; finished runs
and their audits are reused):

* ``none``: gamma = 0 (plain FedMF through the same code path: same rounds, same seeds);
* ``raid-g{gamma}``: RAID, Gaussian mode (cross-device moments), per-user clients,
  resampled targets (``target-moments = "resampled"``, the default), a centroid round
  every round (the config's ``centroid-every = 1``), gamma swept;
* ``raid-joint-g{0.03,0.1}``: ``attribute = "gender,age_bucket"``, the 14 combinations
  aligned jointly (cells of 2 to d users only shifted);
* ``raid-F5-g0.1``: gamma 0.1 with a centroid round every 5 rounds instead of every round;
* ``raid-bary-g0.1``: gamma 0.1 with ``target-moments = "barycenter"`` (every group mapped
  onto the barycenter itself; the previous default, kept to show why it was replaced);
* ``silo-none`` / ``silo-raid-g0.1``: the cross-silo setting (95 clients of 10 users),
  undefended and RAID Gaussian mode;
* ``silo-raid-fs``: cross-silo, free-support mode (k-means atoms; every user moves with
  its atom's displacement under the server's plan of the pooled atoms onto a fresh
  sample of the barycenter);
* ``silo-raid-fs-plans``: the same with ``support-targets = "client-plans"`` (each
  client plans its own users onto the whole barycenter: the former behaviour);
* ``adv``: the gradient-reversal adversarial baseline (per-user clients);
* ``noise-s{sigma}``: Gaussian noise on the undefended released embeddings (post hoc),
  NDCG recomputed with the final item table.

For every embedding set: the attack suite's MLP, logistic-regression and flip-aware
attackers (class-balanced, 5-fold x 3) on gender, age bucket and occupation; the
symmetric AUC max(AUC, 1 - AUC) is the reported figure. NDCG@10 / HR@10 (full ranking),
the W2 between the gender groups (exact OT on standardised embeddings) and wall time.
Writes report.md (mean +- std over the seeds), rows.json and auc_vs_ndcg.png to --out.

    FEDREC_DATA_DIR=../shared/data python experiments/raid/run_raid.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ATTRS = ("gender", "age_bucket", "occupation")
ATTACKERS = ("mlp", "logreg", "flip-aware")
SILO = {"strategy.params.users-per-client": 10, "partition.num-clients": 95}


def plan(gammas, free_support: bool, adversarial: bool) -> dict[str, dict]:
    """Run name -> config overrides (the undefended reference of a run: ``ref_of``)."""
    runs: dict[str, dict] = {"none": {"strategy.params.gamma": 0.0}}
    for g in gammas:
        runs[f"raid-g{g:g}"] = {"strategy.params.gamma": g}
    for g in (0.03, 0.1):
        runs[f"raid-joint-g{g:g}"] = {
            "strategy.params.gamma": g,
            "strategy.params.attribute": "gender,age_bucket",
        }
    runs["raid-F5-g0.1"] = {"strategy.params.gamma": 0.1, "strategy.params.centroid-every": 5}
    runs["raid-bary-g0.1"] = {
        "strategy.params.gamma": 0.1,
        "strategy.params.target-moments": "barycenter",
    }
    runs["silo-none"] = {"strategy.params.gamma": 0.0, **SILO}
    runs["silo-raid-g0.1"] = {"strategy.params.gamma": 0.1, **SILO}
    if free_support:
        fs = {
            "strategy.params.mode": "free-support",
            "strategy.params.quantize-k": 4,
            "strategy.params.support-size": 200,
            **SILO,
        }
        runs["silo-raid-fs"] = fs
        runs["silo-raid-fs-plans"] = {**fs, "strategy.params.support-targets": "client-plans"}
    if adversarial:
        runs["adv"] = {"strategy.params.mode": "adversarial"}
    return runs


def ref_of(name: str) -> str:
    return "silo-none" if name.startswith("silo-") else "none"


def main(argv=None) -> int:
    import torch

    import fedrec
    from fedrec.algorithms.lego import gaussian_noise
    from fedrec.algorithms.raid import w2_between_groups
    from fedrec.attacks import attack
    from fedrec.models.recsys import MFParams
    from fedrec.recsys.data import user_data
    from fedrec.recsys.train import evaluate_full_ranking, mf_score_fn

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2, 0.4, 0.8, 1.6])
    ap.add_argument("--attackers", nargs="+", default=list(ATTACKERS), choices=ATTACKERS)
    ap.add_argument("--no-free-support", action="store_true")
    ap.add_argument("--no-adversarial", action="store_true")
    ap.add_argument("--out", default="runs/raid")
    args = ap.parse_args(argv)
    out = Path(args.out)
    ds, ud = user_data("ml-100k")
    labels = {a: np.asarray(ds.user_attrs[a]) for a in ATTRS}
    runs = plan(args.gammas, not args.no_free_support, not args.no_adversarial)
    rows: list[dict] = []

    def audit(cache: Path, name, seed, P, Q, wall, extra=""):
        if cache.exists():
            row = json.loads(cache.read_text())
        else:
            params = MFParams(torch.as_tensor(P, dtype=torch.float32), torch.as_tensor(Q))
            m = evaluate_full_ranking(mf_score_fn(params), ud, (10,))
            row = {"ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"]}
            t0 = time.perf_counter()
            for a in ATTRS:
                for atk in args.attackers:
                    r = attack(P, labels[a], attacker=atk, seed=seed, attribute=a)
                    row[f"auc:{a}:{atk}"] = r.auc
                    row[f"sym:{a}:{atk}"] = r.auc_sym
                    if a == "gender":
                        row[f"acc:{a}:{atk}"] = r.accuracy
                        row[f"majority:{a}"] = r.majority_rate
            row["attack_s"] = time.perf_counter() - t0
            row["w2"] = w2_between_groups(P, labels["gender"])["w2"]
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(row))
        row.update({"name": name, "seed": seed, "wall": wall, "extra": extra})
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("auc:")}), flush=True)

    for seed in args.seeds:
        base = None
        for name, ov in runs.items():
            d = out / f"seed{seed}" / name
            if not (d / "summary.json").exists():
                fedrec.run(
                    HERE / "raid_ml100k.toml",
                    out=d,
                    overrides=[f"num-server-rounds={args.rounds}", f"seed={seed}"]
                    + [f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in ov.items()],
                )
            s = json.loads((d / "summary.json").read_text())
            e = np.load(d / "embeddings.npz")
            P = e["embeddings"][np.argsort(e["users"])]
            Q = np.load(d / "checkpoint.npz")["w0"]
            raid_log = json.loads((d / "raid.json").read_text())
            audit(d / "audit.json", name, seed, P, Q, s["wall_s"], raid_log["final-gamma"])
            if name == "none":
                base = (P, Q, s["wall_s"])
        assert base is not None
        P0, Q0, wall0 = base
        for sigma in args.sigmas:
            t0 = time.perf_counter()
            Pn = gaussian_noise(P0, sigma, seed=seed).astype(np.float32)
            wall = wall0 + time.perf_counter() - t0
            cache = out / f"seed{seed}" / f"noise-s{sigma:g}" / "audit.json"
            audit(cache, f"noise-s{sigma:g}", seed, Pn, Q0, wall)

    text = report(rows, args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n")
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    _plot(summarise(rows, args.attackers), out / "auc_vs_ndcg.png")
    print(text)
    return 0


def worst(row: dict, attr: str, attackers) -> float:
    """The strongest attacker's symmetric AUC on ``attr``."""
    return max(row[f"sym:{attr}:{a}"] for a in attackers)


def summarise(rows: list[dict], attackers) -> dict[str, dict]:
    """Per run name: mean and std over seeds of every figure (NDCG as % of the reference)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["name"], []).append(r)
    refs = {(r["name"], r["seed"]): r["ndcg@10"] for r in rows}
    out = {}
    for name, rs in by.items():
        vals: dict[str, list[float]] = {}
        for r in rs:
            ref = refs[(ref_of(name) if not name.startswith("noise") else "none", r["seed"])]
            fig = {"ndcg%": 100 * r["ndcg@10"] / ref, "ndcg": r["ndcg@10"], "w2": r["w2"]}
            fig["wall"] = r["wall"]
            for a in ATTRS:
                for atk in attackers:
                    fig[f"{a}:{atk}"] = r[f"sym:{a}:{atk}"]
                fig[f"{a}:worst"] = worst(r, a, attackers)
            fig["acc"] = r["acc:gender:" + attackers[0]]
            fig["majority"] = r["majority:gender"]
            for k, v in fig.items():
                vals.setdefault(k, []).append(v)
        out[name] = {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in vals.items()} | {
            "extra": ", ".join(str(r["extra"]) for r in rs if r["extra"] != "")
        }
    return out


def noise_at(summary: dict, key: str, ndcg_pct: float) -> float | None:
    """The noise baseline's ``key`` interpolated at NDCG ``ndcg_pct`` (None outside its range)."""
    pts = sorted((v["ndcg%"][0], v[key][0]) for n, v in summary.items() if n.startswith("noise-"))
    pts.append((100.0, summary["none"][key][0]))
    pts.sort()
    xs = [p[0] for p in pts]
    if not xs or ndcg_pct < xs[0] or ndcg_pct > xs[-1]:
        return None
    return float(np.interp(ndcg_pct, xs, [p[1] for p in pts]))


def report(rows: list[dict], args) -> str:
    atk = tuple(args.attackers)
    S = summarise(rows, atk)
    short = {"mlp": "MLP", "logreg": "LR", "flip-aware": "flip"}
    head = ["run", "NDCG@10 % of undefended"]
    for a in ATTRS:
        head += [f"{a} {short[x]}" for x in atk]
    head += [f"gender accuracy {short[atk[0]]} (majority)", "W2 gender", "wall s", "final gamma"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(v):
        m, s, n = v
        return f"{m:.3f} ± {s:.3f}" if n > 1 else f"{m:.3f}"

    for name, v in S.items():
        cells = [name, f"{v['ndcg%'][0]:.1f} ± {v['ndcg%'][1]:.1f}"]
        for a in ATTRS:
            cells += [cell(v[f"{a}:{x}"]) for x in atk]
        cells += [f"{v['acc'][0]:.3f} ({v['majority'][0]:.3f})"]
        cells += [cell(v["w2"]), f"{v['wall'][0]:.0f}", v["extra"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Symmetric AUC max(AUC, 1 - AUC), mean ± std over seeds "
        f"{', '.join(map(str, args.seeds))}; NDCG@10 as % of the same seed's undefended run "
        "(silo-* runs: of silo-none; noise rows: of none).",
        "",
        "Against the noise baseline at equal NDCG (the strongest attacker's symmetric AUC, "
        "noise interpolated along its sigma curve at the run's NDCG %):",
        "",
        "| run | NDCG % | " + " | ".join(f"{a} run / noise" for a in ATTRS) + " |",
        "|---|---|" + "---|" * len(ATTRS),
    ]
    for name, v in S.items():
        if name.startswith(("noise", "none", "silo-none")):
            continue
        cells = [name, f"{v['ndcg%'][0]:.1f}"]
        for a in ATTRS:
            nz = noise_at(S, f"{a}:worst", v["ndcg%"][0])
            cells.append(f"{v[f'{a}:worst'][0]:.3f} / " + ("n/a" if nz is None else f"{nz:.3f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(S: dict, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ATTRS), figsize=(13, 4), sharey=True)
    for ax, a in zip(axes, ATTRS, strict=True):
        for prefix, label, style in (
            ("raid-g", "RAID (resampled targets), gamma swept", "o-"),
            ("noise-s", "Gaussian noise, sigma swept", "s--"),
        ):
            pts = sorted(
                (v["ndcg%"][0], v[f"{a}:worst"][0]) for n, v in S.items() if n.startswith(prefix)
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=label)
        for name, marker in (
            ("none", "k*"),
            ("raid-bary-g0.1", "mD"),
            ("raid-joint-g0.03", "bP"),
            ("silo-raid-g0.1", "c^"),
            ("silo-raid-fs", "g^"),
            ("silo-raid-fs-plans", "y^"),
            ("adv", "rv"),
        ):
            if name in S:
                v = S[name]
                ax.plot(v["ndcg%"][0], v[f"{a}:worst"][0], marker, markersize=9, label=name)
        ax.axhline(0.55, color="grey", lw=0.8, ls=":")
        ax.axvline(95, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("NDCG@10, % of undefended")
        ax.set_title(a)
    axes[0].set_ylabel("strongest attacker's symmetric AUC")
    axes[0].legend(fontsize=7)
    fig.suptitle("RAID on FedMF-BPR, ML-100K (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())

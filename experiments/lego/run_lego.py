"""LEGO on ML-100K: balanced Step 2, dynamic-request cost, attacks over seeds, noise baseline.

Two settings: **per-user** (943 clients of one user, ``lego_ml100k.toml``) and
**cross-silo** (10 users per client, 95 clients). Per setting:

1. **Federated cost runs** (pipeline seed ``--cost-seed``, default 0): the dynamic run
   (request "gender + age_bucket", then "add occupation") and the full run (one request
   "gender + age_bucket + occupation"), both after 30 FedMF rounds; the strategy records
   each request's wall time, steps, messages and upload. The full run's final
   embeddings are checked against the pure drivers on its released original
   embeddings (max |diff|).
2. **Seeds** (``--seeds``, default 0,1,2; the whole pipeline's seed: FedMF training,
   LEGO, attackers): FedMF-BPR with a no-op LEGO request (releases the original
   embeddings and the frozen item table), then the pure drivers (equal to the
   federated run: ``tests/test_lego_strategy.py`` and step 1) for the full request
   with the library defaults at ``eps = 0.5`` and, per-user only, the previous
   objective (``balance = "sum"``) and the eps sweep ``--eps``.
3. **Attacks** (:func:`fedrec.attacks.attack`, class-balanced, 5 folds x 3, seed = the
   pipeline seed): symmetric AUC ``max(AUC, 1 - AUC)`` per attribute; the MLP and
   logistic-regression attackers on every row, the flip-aware attacker (nested CV
   choosing model and sign on the training users) on the LEGO rows at the main eps.
   Also NDCG@10 relative to the original (frozen item table,
   ``evaluate_full_ranking``), W2 between the gender groups
   (:func:`fedrec.algorithms.raid.w2_between_groups`) and LEGO's wall time.
4. **Gaussian-noise baseline** ``e_u + c ||e_u|| / sqrt(d) N(0, I)`` for ``--noise``
   (MLP and logistic regression; the original is the point ``c = 0``), interpolated at
   LEGO's NDCG per seed (at an NDCG above the original's: the original's AUC).

Writes ``report.md``, ``results.json`` and ``lego_pareto.png`` to ``--out`` (default
``runs/lego``)::

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
sys.path.insert(0, str(HERE))
from select_defaults import load, make_ndcg, train_original  # noqa: E402

ATTRS = ("gender", "age_bucket", "occupation")
MAIN_EPS = 0.5
SETTINGS = {"per-user": 1, "cross-silo": 10}
log = logging.getLogger("fedrec.experiments.lego")


def released(path: Path, name: str) -> np.ndarray:
    z = np.load(path / name)
    return z["embeddings"][np.argsort(z["users"])].astype(np.float64)


def silo_overrides(upc: int) -> list[str]:
    if upc == 1:
        return []
    return [f"strategy.params.users-per-client={upc}", f"partition.num-clients={-(-943 // upc)}"]


def federated_cost(out: Path, upc: int, seed: int) -> dict:
    """The dynamic and the full federated run of one setting; their request records."""
    import fedrec

    runs = {
        "dynamic": ['strategy.params.attributes="gender,age_bucket"'],
        "full": [
            'strategy.params.attributes="gender,age_bucket,occupation"',
            'strategy.params.add-attributes=""',
        ],
    }
    res = {}
    for name, ov in runs.items():
        run = out / name
        if not (run / "lego.json").exists():
            t0 = time.perf_counter()
            fedrec.run(
                HERE / "lego_ml100k.toml",
                out=run,
                quiet=True,
                overrides=[f"seed={seed}", *ov, *silo_overrides(upc)],
            )
            log.info(
                "federated %s run (%d users/client): %.0f s", name, upc, time.perf_counter() - t0
            )
        lg = json.loads((run / "lego.json").read_text())
        res[name] = {
            "lego": {k: v for k, v in lg.items() if k != "requests"},
            "requests": [{k: v for k, v in r.items() if k != "history"} for r in lg["requests"]],
            "U0": released(run, "embeddings_original.npz"),
            "U": released(run, "embeddings.npz"),
        }
    return res


def federated_rows(fed: dict, run_dir: Path, labels, ud, seed: int) -> dict:
    """Attacks (three attackers) and NDCG of the federated runs' final embeddings: the
    full request and the dynamic sequence (first request + warm "add occupation")."""
    from fedrec.algorithms import lego as L

    U0 = fed["full"]["U0"]
    ndcg = make_ndcg(np.load(run_dir / "full" / "checkpoint.npz")["w0"].astype(np.float32), ud)
    ctx = {"setting": "federated", "seed": seed, "labels": labels, "ndcg": ndcg, "U0": U0}
    ctx.update(base=ndcg(U0), radii=L.eps_rows(U0, MAIN_EPS), rows={})
    for name in ("full", "dynamic"):
        measure(ctx, name, fed[name]["U"], ("mlp", "logreg", "flip-aware"))
    return ctx["rows"]


def pure_full(U0, eps, labels, K, lego_seed, **combine_overrides):
    """The full request (all three attributes) with the pure drivers and the defaults."""
    from fedrec.algorithms import lego as L

    t0 = time.perf_counter()
    lego = L.Lego(U0, eps=eps, seed=lego_seed, combine_options=combine_overrides)
    lego.request({a: labels[a] for a in ATTRS})
    return lego, time.perf_counter() - t0


def attack_row(U, labels, seed, attackers) -> dict:
    from fedrec.algorithms.raid import w2_between_groups
    from fedrec.attacks import attack

    X = np.asarray(U, dtype=np.float32)
    out = {"auc_sym": {}, "auc": {}}
    for a in ATTRS:
        for att in attackers:
            r = attack(X, labels[a], attacker=att, seed=seed, attribute=a)
            out["auc_sym"][f"{a}/{att}"] = r.auc_sym
            out["auc"][f"{a}/{att}"] = r.auc
        out["auc_sym"][a] = max(out["auc_sym"][f"{a}/{att}"] for att in attackers)
    out["worst"] = max(out["auc_sym"][a] for a in ATTRS)
    out["w2_gender"] = float(w2_between_groups(U, labels["gender"])["w2"])
    return out


def noise_at(noise: dict, attr: str, ndcg_rel: float) -> float:
    """Symmetric AUC (max over MLP / logreg) of the noise curve at ``ndcg_rel``
    (linear interpolation; above the original's NDCG: the original's AUC)."""
    pts = sorted((v["ndcg_rel"], v["auc_sym"][attr]) for v in noise.values())
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    if ndcg_rel >= xs[-1]:
        return float(ys[-1])
    if ndcg_rel < xs[0]:
        return float("nan")
    return float(np.interp(ndcg_rel, xs, ys))


def main(argv=None) -> int:
    from fedrec.algorithms import lego as L
    from fedrec.recsys.data import user_data

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--cost-seed", type=int, default=0)
    p.add_argument("--eps", default="0.1,0.2,1.0", help="per-user eps sweep (besides 0.5)")
    p.add_argument("--noise", default="0.1,0.2,0.5,1.0")
    p.add_argument("--silo-noise", default="0.2,0.5,1.0")
    p.add_argument("--out", default="runs/lego")
    p.add_argument("--report-only", action="store_true", help="rebuild from results.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
        results.setdefault("minutes", float("nan"))
        plot(out / "lego_pareto.png", results)
        (out / "report.md").write_text(report(results))
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    ds, ud = user_data("ml-100k")
    labels = {a: np.asarray(ds.user_attrs[a]) for a in ATTRS}
    K = {a: len(ds.attr_names[a]) for a in ATTRS}
    results: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cost_seed": args.cost_seed,
        "settings": {},
    }
    t_all = time.perf_counter()
    for setting, upc in SETTINGS.items():
        sdir = out / setting
        res: dict = {"cost": {}, "seeds": {}}
        # 1. federated cost runs
        fed = federated_cost(sdir / f"cost-s{args.cost_seed}", upc, args.cost_seed)
        ref, _ = pure_full(fed["full"]["U0"], MAIN_EPS, labels, K, fed["full"]["lego"]["seed"])
        res["cost"] = {
            "dynamic": fed["dynamic"]["requests"],
            "full": fed["full"]["requests"],
            "max_abs_diff_full_vs_pure": float(np.abs(fed["full"]["U"] - ref.embeddings()).max()),
            "max_abs_diff_dynamic_vs_full": float(
                np.abs(fed["dynamic"]["U"] - fed["full"]["U"]).max()
            ),
        }
        log.info("%s cost: %s", setting, json.dumps(cost_summary(res["cost"])))
        res["cost"]["rows"] = federated_rows(
            fed, sdir / f"cost-s{args.cost_seed}", labels, ud, args.cost_seed
        )
        # 2.-4. seeds
        for seed in seeds:
            run = train_original(seed, sdir / f"orig-s{seed}", upc)
            U0, Q, lseed = load(run)
            ndcg = make_ndcg(Q, ud)
            base = ndcg(U0)
            radii = L.eps_rows(U0, MAIN_EPS)
            rows: dict = {}

            ctx = {"setting": setting, "seed": seed, "labels": labels, "ndcg": ndcg}
            ctx.update(base=base, U0=U0, radii=radii, rows=rows)

            def row(name, U, attackers=("mlp", "logreg"), ctx=ctx, **extra):
                measure(ctx, name, U, attackers, **extra)

            row("original", U0)
            lego, secs = pure_full(U0, MAIN_EPS, labels, K, lseed)
            row(
                f"lego eps {MAIN_EPS:g}",
                lego.embeddings(),
                ("mlp", "logreg", "flip-aware"),
                alpha=lego.alpha,
                seconds=secs,
                steps=lego.timings[-1]["calibration_steps"],
            )
            if upc == 1:
                old, secs = pure_full(U0, MAIN_EPS, labels, K, lseed, balance="sum")
                row(f"lego-sum eps {MAIN_EPS:g}", old.embeddings(), alpha=old.alpha, seconds=secs)
                for eps in (float(x) for x in args.eps.split(",")):
                    lg, secs = pure_full(U0, eps, labels, K, lseed)
                    row(f"lego eps {eps:g}", lg.embeddings(), alpha=lg.alpha, seconds=secs)
            noise = {"c 0": rows["original"]}
            cs = args.noise if upc == 1 else args.silo_noise
            for c in (float(x) for x in cs.split(",")):
                sigma = c * np.linalg.norm(U0, axis=1) / np.sqrt(U0.shape[1])
                row(f"noise c {c:g}", L.gaussian_noise(U0, sigma, seed=seed))
                noise[f"c {c:g}"] = rows[f"noise c {c:g}"]
            main = rows[f"lego eps {MAIN_EPS:g}"]
            main["noise_at_ndcg"] = {a: noise_at(noise, a, main["ndcg_rel"]) for a in ATTRS}
            res["seeds"][seed] = rows
            (out / "results.json").write_text(
                json.dumps(
                    {**results, "settings": {**results["settings"], setting: res}},
                    indent=1,
                    default=float,
                )
                + "\n"
            )
        results["settings"][setting] = res
    results["minutes"] = (time.perf_counter() - t_all) / 60
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    plot(out / "lego_pareto.png", results)
    (out / "report.md").write_text(report(results))
    log.info("wrote %s (%.0f min)", out / "report.md", results["minutes"])
    return 0


def measure(ctx: dict, name: str, U, attackers, **extra) -> None:
    """One row: NDCG, attacks, W2 and the mean row shift (as a share of the eps-0.5 ball)."""
    from fedrec.algorithms import lego as L

    t0 = time.perf_counter()
    r = {"ndcg": ctx["ndcg"](U), **attack_row(U, ctx["labels"], ctx["seed"], attackers), **extra}
    r["ndcg_rel"] = r["ndcg"] / ctx["base"]
    shift = L.row_shifts(U, ctx["U0"]) / np.maximum(ctx["radii"], 1e-12)
    r["shift_rel"] = float(np.mean(shift))
    ctx["rows"][name] = r
    log.info(
        "%s seed %d %-22s NDCG %.1f%% worst %.3f %s (%.0f s)",
        ctx["setting"],
        ctx["seed"],
        name,
        100 * r["ndcg_rel"],
        r["worst"],
        {a: round(r["auc_sym"][a], 3) for a in ATTRS},
        time.perf_counter() - t0,
    )


def _r3(d: dict) -> str:
    return json.dumps({k: round(v, 3) for k, v in d.items()})


# ------------------------------------------------------------------ tables
def cost_summary(cost: dict) -> dict:
    add, full = cost["dynamic"][1], cost["full"][0]

    def tot(r, k):
        return sum(r[k].values())

    return {
        "add_over_full_wall": add["total_s"] / full["total_s"],
        "add_over_full_messages": tot(add, "messages") / tot(full, "messages"),
        "add_over_full_upload": tot(add, "upload_bytes") / tot(full, "upload_bytes"),
    }


def _ms(values) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "-"
    return f"{v.mean():.3f} ± {v.std():.3f}"


def _pct(values) -> str:
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.1f} ± {v.std():.1f} %"


def report(results: dict) -> str:
    lines = [f"# LEGO on ML-100K (started {results['started']}, {results['minutes']:.0f} min)", ""]
    for setting, res in results["settings"].items():
        seeds = list(res["seeds"])
        names = list(next(iter(res["seeds"].values())))
        lines += [
            f"## {setting}: mean ± std over seeds {', '.join(map(str, seeds))}",
            "",
            "Symmetric AUC per attribute = max over the attackers run on the row (MLP, "
            "logistic regression; + flip-aware on the main LEGO row).",
            "",
            "| embeddings | NDCG@10 / original | AUC gender | AUC age_bucket | AUC occupation "
            "| worst | W2 gender | s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n in names:
            rs = [res["seeds"][s][n] for s in seeds]
            lines.append(
                f"| {n} | {_pct([r['ndcg_rel'] for r in rs])} | "
                + " | ".join(_ms([r["auc_sym"][a] for r in rs]) for a in ATTRS)
                + f" | {_ms([r['worst'] for r in rs])} | {_ms([r['w2_gender'] for r in rs])} | "
                + (_ms([r.get("seconds") for r in rs]) if "seconds" in rs[0] else "-")
                + " |"
            )
        main = f"lego eps {MAIN_EPS:g}"
        rs = [res["seeds"][s][main] for s in seeds]
        lines += ["", f"Per attacker, {main} (symmetric AUC):", ""]
        lines.append("| attribute | " + " | ".join(("mlp", "logreg", "flip-aware")) + " |")
        lines.append("|---|---|---|---|")
        for a in ATTRS:
            lines.append(
                f"| {a} | "
                + " | ".join(
                    _ms([r["auc_sym"][f"{a}/{t}"] for r in rs])
                    for t in ("mlp", "logreg", "flip-aware")
                )
                + " |"
            )
        lines += ["", f"Noise baseline at the NDCG of {main} (interpolated per seed):", ""]
        lines.append("| attribute | LEGO | noise at equal NDCG | LEGO lower in seeds |")
        lines.append("|---|---|---|---|")
        for a in ATTRS:
            lw = [r["auc_sym"][a] for r in rs]
            nz = [r["noise_at_ndcg"][a] for r in rs]
            lines.append(
                f"| {a} | {_ms(lw)} | {_ms(nz)} | {sum(x < y for x, y in zip(lw, nz))}/{len(rs)} |"
            )
        alphas = [r["alpha"] for r in rs]
        lines += [
            "",
            "alpha per seed: "
            + "; ".join(json.dumps({k: round(v, 3) for k, v in x.items()}) for x in alphas),
            "calibration steps per seed: " + "; ".join(json.dumps(r["steps"]) for r in rs),
            "",
        ]
        c = res["cost"]
        lines += [
            f"Cost (federated, seed {results.get('cost_seed', 0)}):",
            "",
            "| request | steps (Step 1) | Step-2 steps (warm) | Step 1 s | Step 2 s | total s "
            "| messages (Step 1 + Step 2) | upload GB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in (
            ("gender + age_bucket (first)", c["dynamic"][0]),
            ("add occupation", c["dynamic"][1]),
            ("gender + age_bucket + occupation (full)", c["full"][0]),
        ):
            warm = "warm" if r["warm"] else "cold"
            lines.append(
                f"| {name} | {json.dumps(r['calibration_steps'])} | {r['combine_steps']} "
                f"({warm}) | {r['calibrate_s']:.0f} | {r['combine_s']:.0f} "
                f"| {r['total_s']:.0f} | {r['messages']['calibrate']} + {r['messages']['combine']} "
                f"| {sum(r['upload_bytes'].values()) / 1e9:.1f} |"
            )
        if "rows" in c:
            lines += [
                "",
                "| federated final embeddings | NDCG@10 / original | "
                + " | ".join(f"AUC {a}" for a in ATTRS)
                + " | worst |",
                "|---|---|---|---|---|---|",
            ]
            for n, r in c["rows"].items():
                lines.append(
                    f"| {n} | {100 * r['ndcg_rel']:.1f} % | "
                    + " | ".join(f"{r['auc_sym'][a]:.3f}" for a in ATTRS)
                    + f" | {r['worst']:.3f} |"
                )
        cs = cost_summary(c)
        lines += [
            "",
            f"add / full: wall {cs['add_over_full_wall']:.0%}, messages "
            f"{cs['add_over_full_messages']:.0%}, upload {cs['add_over_full_upload']:.0%}. "
            f"Full run vs pure drivers: max |diff| {c['max_abs_diff_full_vs_pure']:.1e}; "
            "dynamic vs full final embeddings: max |diff| "
            f"{c['max_abs_diff_dynamic_vs_full']:.3f}; alpha dynamic "
            f"{_r3(c['dynamic'][1]['alpha'])}, full {_r3(c['full'][0]['alpha'])}.",
            "",
        ]
    return "\n".join(lines) + "\n"


def plot(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = results["settings"].get("per-user")
    if res is None:
        return
    seeds = list(res["seeds"])
    names = list(next(iter(res["seeds"].values())))
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))

    def mean(n, key):
        return float(np.mean([key(res["seeds"][s][n]) for s in seeds]))

    for ax, a in zip(axes, [*ATTRS, "worst"]):
        key = (lambda r: r["worst"]) if a == "worst" else (lambda r, a=a: r["auc_sym"][a])
        for prefix, style, label in (
            ("lego eps", "o-", "LEGO (eps)"),
            ("noise c", "s--", "noise (c)"),
        ):
            pts = sorted(
                (mean(n, lambda r: r["ndcg_rel"]), mean(n, key), n)
                for n in names
                if n.startswith(prefix)
            )
            ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], style, label=label)
            for x, y, n in pts:
                ax.annotate(
                    n.split()[-1], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        for n, m in (("original", "*"), (f"lego-sum eps {MAIN_EPS:g}", "x")):
            if n in names:
                ax.plot([mean(n, lambda r: r["ndcg_rel"])], [mean(n, key)], m, ms=10, label=n)
        ax.axhline(0.55, color="grey", lw=0.8, ls=":")
        ax.axvline(0.95, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="NDCG@10 / original", ylabel="symmetric AUC", title=a)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

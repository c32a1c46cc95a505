"""Federated unlearning benchmark: Original, Retrain and every method side by side.

For each seed, the **Original** federation is trained once (with the server storing the
client updates for FedEraser, 5 % of the clients held out as the never-seen reference of
the membership-inference metrics, and every node keeping its clients' state); a SISA
federation with ``--shards`` shards is trained once too. Every scenario then serves its
requests on copies of these runs with ``fedrec.unlearn`` (``fedrec unlearn`` on the
command line): ``retrain`` (the gold reference), ``federaser``, ``gradient-ascent``,
``finetune``, ``influence`` and, on the sharded run, ``sisa``.

Scenarios (``--scenarios``):

- ``users-<sel>-<pct>``: forget ``pct`` % of the users (``sel``: random, core = most
  active, edge = least active; CURE4Rec's "deeper influence" selections);
- ``user1``: forget one random user (SISA's best case: one shard);
- ``pairs-<pct>``: forget ``pct`` % of the training interactions (at least one kept per
  user);
- ``seq10``: ten successive one-user requests, served one after the other (approximate
  methods and sisa; Retrain once with all ten users forgotten);
- ``silo``: the cross-silo federation (``users-per-client = 10``, 95 clients) forgets one
  silo;
- ``adult``: FedAvg on Adult, 10 clients, forgets one client (accuracy and fairness gaps);
- ``sasrec-<scenario>``: a user scenario on FedSASRec (30 rounds; retrain, finetune, sisa).

Writes ``results.jsonl`` (one line per scenario x method) and ``report.md`` (tables with the
distance to Retrain) under ``--out`` (default ``runs/unlearning``)::

    FEDREC_DATA_DIR=../shared/data python experiments/unlearning/run.py --seeds 0
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
APPROX = ("federaser", "gradient-ascent", "finetune", "influence")
log = logging.getLogger("fedrec.experiments.unlearning")


def base_config(kind: str, seed: int, rounds: int | None) -> dict:
    from fedrec.config import load_toml

    flat = load_toml(HERE / f"{kind}.toml")
    flat["seed"] = seed
    if rounds:
        flat["num-server-rounds"] = rounds
    flat.update({"output.plots": False, "output.progress": False})
    return flat


def train(flat: dict, out: Path) -> dict:
    import fedrec

    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = fedrec.run(flat, backend="local", out=out, quiet=True)
    log.info("trained %s in %.0f s", out.name, time.perf_counter() - t0)
    return s


def select_users(flat: dict, sel: str, pct: float, seed: int) -> list[int]:
    """``pct`` % of the users that are not held out, by ``sel``."""
    from fedrec.config import validate
    from fedrec.recsys.data import cfg_user_data
    from fedrec.unlearning.session import never_seen_clients

    cfg = validate(flat)
    _, ud = cfg_user_data(cfg)
    upc = int(flat.get("strategy.params.users-per-client", 1))
    held = never_seen_clients(cfg.partition.num_clients, cfg.unlearning.never_seen, cfg.seed)
    held_users = {u for c in held for u in range(c * upc, (c + 1) * upc)}
    pool = np.asarray([u for u in range(ud.num_users) if u not in held_users])
    n = max(1, int(round(pct / 100 * ud.num_users)))
    counts = ud.train.lengths[pool]
    if sel == "random":
        rng = np.random.default_rng(10_000 + seed)
        return sorted(int(u) for u in rng.choice(pool, size=n, replace=False))
    order = np.lexsort((pool, -counts if sel == "core" else counts))
    return sorted(int(u) for u in pool[order[:n]])


def select_pairs(flat: dict, pct: float, seed: int) -> list[list[int]]:
    from fedrec.config import validate
    from fedrec.recsys.data import cfg_user_data
    from fedrec.unlearning.session import never_seen_clients

    cfg = validate(flat)
    _, ud = cfg_user_data(cfg)
    held = set(never_seen_clients(cfg.partition.num_clients, cfg.unlearning.never_seen, seed))
    rng = np.random.default_rng(20_000 + seed)
    rows, items = ud.train.rows, ud.train.indices
    ok = ~np.isin(rows, list(held))
    idx = np.flatnonzero(ok)
    chosen = rng.choice(idx, size=int(round(pct / 100 * len(rows))), replace=False)
    pairs, per_user = [], {}
    for j in sorted(chosen.tolist()):
        u = int(rows[j])
        if per_user.get(u, 0) + 1 >= ud.train.lengths[u]:
            continue  # keep at least one training interaction per user
        per_user[u] = per_user.get(u, 0) + 1
        pairs.append([u, int(items[j])])
    return pairs


def unlearn(run: Path, request: dict, method: str, out: Path) -> dict | None:
    """Serve ``request`` on ``run`` with ``method``; None when the method cannot serve the
    run (e.g. ``influence`` on a classifier), which the error says."""
    import fedrec
    from fedrec.errors import ConfigError

    shutil.rmtree(out, ignore_errors=True)
    # only a federaser output keeps the stored updates (the next request of a chain needs
    # them); the others would re-record 30 rounds of FedMF uploads (over 1 GB) per copy
    keep = "true" if method == "federaser" else "false"
    try:
        s = fedrec.unlearn(
            run,
            request,
            method=method,
            out=out,
            backend="local",
            quiet=True,
            overrides=[f"unlearning.record-history={keep}"],
        )
    except ConfigError as exc:
        log.warning("skipping %s: %s", method, exc)
        return None
    return s["unlearning"][-1]


def row(scenario: str, seed: int, method: str, entry: dict) -> dict:
    return {
        "scenario": scenario,
        "seed": seed,
        "method": method,
        "seconds": entry["seconds"],
        "rounds": entry["rounds"],
        "bytes_up": entry["bytes_up"],
        "bytes_down": entry["bytes_down"],
        "metrics": entry["metrics"],
        "original": entry.get("before", {}),
    }


def scenario_requests(name: str, flat: dict, seed: int) -> list[dict]:
    """The request batches a scenario serves (one batch, or ten for seq10)."""
    name = name.removeprefix("sasrec-")
    if name.startswith("users-"):
        _, sel, pct = name.split("-")
        return [
            {"request": [{"kind": "users", "users": select_users(flat, sel, float(pct), seed)}]}
        ]
    if name == "user1":
        return [{"request": [{"kind": "users", "users": select_users(flat, "random", 0.01, seed)}]}]
    if name.startswith("pairs-"):
        pairs = select_pairs(flat, float(name.split("-")[1]), seed)
        return [{"request": [{"kind": "interactions", "pairs": pairs}]}]
    if name == "seq10":
        users = select_users(flat, "random", 10 * 100 / 943, seed)[:10]
        return [{"request": [{"kind": "users", "users": [u]}]} for u in users]
    raise SystemExit(f"unknown scenario {name}")


def run_rec_scenario(name, seed, trained, out, methods, results):
    orig, runs, flat = trained
    batches = scenario_requests(name, flat, seed)
    merged = {"request": [r for b in batches for r in b["request"]]}
    # Retrain serves everything at once (the gold reference)
    if "retrain" in methods:
        e = unlearn(orig, merged, "retrain", out / f"{name}-s{seed}-retrain")
        if e is not None:
            results.append(row(name, seed, "retrain", e))
    for m in [m for m in methods if m != "retrain"]:
        src = runs.get(m, orig)
        total = {"seconds": 0.0, "rounds": 0, "bytes_up": 0, "bytes_down": 0}
        first_before, e = None, {}
        for k, batch in enumerate(batches):
            dst = out / f"{name}-s{seed}-{m}-{k}"
            e = unlearn(src, batch, m.split("-learned")[0], dst)
            if e is None:
                break
            first_before = first_before or e.get("before", {})
            for key in total:
                total[key] += e[key]
            src = dst
        if e is None:
            continue
        results.append(row(name, seed, m, {**e, **total, "before": first_before}))
        log.info("%s seed %d %s: %.1f s", name, seed, m, total["seconds"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument(
        "--scenarios",
        nargs="+",
        default=[
            "users-random-5",
            "users-random-1",
            "users-random-10",
            "users-core-5",
            "users-edge-5",
            "pairs-5",
            "user1",
            "silo",
            "adult",
        ],
    )
    ap.add_argument("--methods", nargs="+", default=["retrain", "sisa", "sisa-learned", *APPROX])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=0, help="override num-server-rounds")
    ap.add_argument("--out", default="runs/unlearning")
    ap.add_argument("--report", action="store_true", help="only rebuild report.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.jsonl"
    if not args.report:
        for seed in args.seeds:
            for sc in args.scenarios:
                results: list[dict] = []
                kind = {"silo": "fedmf_silo", "adult": "fedavg_adult"}.get(sc, "fedmf_ml100k")
                if sc.startswith("sasrec-"):
                    kind = "fedsasrec_ml100k"
                flat = base_config(kind, seed, args.rounds)
                orig = out / f"{kind}-s{seed}-original"
                train(flat, orig)
                sharded = out / f"{kind}-s{seed}-sisa{args.shards}"
                if "sisa" in args.methods:
                    train({**flat, "unlearning.shards": args.shards}, sharded)
                learned = out / f"{kind}-s{seed}-sisa{args.shards}-learned"
                if "sisa-learned" in args.methods:
                    train(
                        {
                            **flat,
                            "unlearning.shards": args.shards,
                            "unlearning.aggregator": "learned",
                        },
                        learned,
                    )
                runs = {"sisa": sharded, "sisa-learned": learned}
                if sc in ("silo", "adult"):
                    request = {
                        "request": [{"kind": "client", "clients": [pick_client(flat, seed)]}]
                    }
                    for m in args.methods:
                        src = runs.get(m, orig)
                        e = unlearn(src, request, m.split("-learned")[0], out / f"{sc}-s{seed}-{m}")
                        if e is not None:
                            results.append(row(sc, seed, m, e))
                else:
                    run_rec_scenario(sc, seed, (orig, runs, flat), out, args.methods, results)
                add_reference(results, out, kind, seed, args.shards)
                with res_path.open("a") as fh:
                    for r in results:
                        fh.write(json.dumps(r, sort_keys=True) + "\n")
    report(res_path, out / "report.md")
    plot(res_path, out / "tradeoff.png")
    print((out / "report.md").read_text())
    return 0


def plot(res_path: Path, dst: Path) -> None:
    """Per scenario: speedup over Retrain (x, log) against the distance to Retrain's
    membership-inference AUC (y); the label is NDCG@10 (or accuracy) as % of Retrain's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in res_path.read_text().splitlines() if x.strip()]
    # seq10's completeness columns cover the last request only; FedSASRec has no MIA yet
    scen = [
        sc
        for sc in dict.fromkeys(r["scenario"] for r in rows)
        if not sc.startswith(("sasrec", "seq"))
    ]
    if not scen:
        return
    cols = min(3, len(scen))
    nrows = -(-len(scen) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, sc in zip(axes.ravel(), scen):
        rs = [r for r in rows if r["scenario"] == sc]
        ret = {r["seed"]: r for r in rs if r["method"] == "retrain"}
        util = "retain_ndcg@10" if "retain_ndcg@10" in rs[0]["metrics"] else "retain_accuracy"
        mia = "mia_auc" if "mia_auc" in rs[0]["metrics"] else "pair_mia_auc"
        for m in dict.fromkeys(r["method"] for r in rs):
            if m == "retrain":
                continue
            pts = [
                (
                    ret[r["seed"]]["seconds"] / r["seconds"],
                    abs(r["metrics"].get(mia, np.nan) - ret[r["seed"]]["metrics"].get(mia, np.nan)),
                    r["metrics"][util] / ret[r["seed"]]["metrics"][util],
                )
                for r in rs
                if r["method"] == m and r["seed"] in ret and r["seconds"] > 0
            ]
            if not pts:
                continue
            x, y, u = (float(np.nanmean([p[i] for p in pts])) for i in range(3))
            ax.scatter([x], [y], s=40)
            ax.annotate(f"{m} ({100 * u:.0f} %)", (x, y), fontsize=7)
        ax.set_xscale("log")
        ax.axvline(1.0, color="grey", lw=0.5)
        ax.axvline(10.0, color="grey", lw=0.5, ls="--")  # the targets: >= 10x,
        ax.axhline(0.03, color="grey", lw=0.5, ls="--")  # MIA AUC within 0.03 of Retrain
        ax.set_title(sc, fontsize=9)
        ax.set_xlabel("speedup over Retrain")
        ax.set_ylabel(f"|{mia} - Retrain's|")
    for ax in axes.ravel()[len(scen) :]:
        ax.axis("off")
    fig.suptitle("utility in parentheses: NDCG@10 / accuracy as % of Retrain's", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=120)
    plt.close(fig)


def pick_client(flat: dict, seed: int) -> int:
    from fedrec.config import validate
    from fedrec.unlearning.session import never_seen_clients

    cfg = validate(flat)
    held = set(never_seen_clients(cfg.partition.num_clients, cfg.unlearning.never_seen, seed))
    rng = np.random.default_rng(30_000 + seed)
    pool = [c for c in range(cfg.partition.num_clients) if c not in held]
    return int(rng.choice(pool))


def add_reference(results: list[dict], out: Path, kind: str, seed: int, shards: int) -> None:
    """The trained runs' own utility: the unsharded and the sharded model."""
    for name in ("original", f"sisa{shards}", f"sisa{shards}-learned"):
        p = out / f"{kind}-s{seed}-{name}" / "summary.json"
        if p.exists():
            g = json.loads(p.read_text())["final"]["global"]
            for r in results:
                r.setdefault("trained", {})[name] = {
                    k: g[k] for k in ("ndcg@10", "hr@10", "accuracy") if k in g
                }
                r["trained"][name]["wall_s"] = json.loads(p.read_text())["wall_s"]


KEYS = (
    ("retain_ndcg@10", "NDCG@10 (retained)"),
    ("retain_accuracy", "accuracy (retained)"),
    ("mia_auc", "MIA AUC"),
    ("pair_mia_auc", "pair MIA AUC"),
    ("rec_mia_auc", "CCS'21 MIA AUC"),
    ("retain_dp_gap", "DP gap"),
    ("retain_eo_gap", "EO gap"),
    ("active_inactive_gap", "active-inactive gap"),
)


def report(res_path: Path, dst: Path) -> None:
    rows = [json.loads(x) for x in res_path.read_text().splitlines() if x.strip()]
    lines = ["# Federated unlearning results", ""]
    by_sc: dict[str, list[dict]] = {}
    for r in rows:
        by_sc.setdefault(r["scenario"], []).append(r)
    for sc, rs in by_sc.items():
        seeds = sorted({r["seed"] for r in rs})
        keys = [(k, lbl) for k, lbl in KEYS if any(k in r["metrics"] for r in rs)]
        lines += [f"## {sc} (seeds {', '.join(map(str, seeds))})", ""]
        head = "| model | seconds | speedup vs retrain | rounds | MB up | MB down | "
        head += " | ".join(lbl for _, lbl in keys) + " |"
        lines += [head, "|" + "---|" * (6 + len(keys))]

        def mean(vals):
            vals = [v for v in vals if v is not None]
            if not vals:
                return None
            return float(np.mean(vals)), float(np.std(vals)) if len(vals) > 1 else 0.0

        def fmt(m, d=4):
            return "–" if m is None else (f"{m[0]:.{d}f}" + (f" ± {m[1]:.{d}f}" if m[1] else ""))

        orig = {
            k: mean([r["original"].get(k) for r in rs if r["method"] == "retrain"]) for k, _ in keys
        }
        lines.append(
            "| Original | – | – | – | – | – | " + " | ".join(fmt(orig[k]) for k, _ in keys) + " |"
        )
        ret = {r["seed"]: r for r in rs if r["method"] == "retrain"}
        for m in dict.fromkeys(r["method"] for r in rs):
            mr = [r for r in rs if r["method"] == m]
            sec = mean([r["seconds"] for r in mr])
            sp = mean([ret[r["seed"]]["seconds"] / r["seconds"] for r in mr if r["seed"] in ret])
            cells = []
            for k, _ in keys:
                v = mean([r["metrics"].get(k) for r in mr])
                cell = fmt(v)
                if m != "retrain" and v is not None:
                    d = mean(
                        [
                            abs(r["metrics"][k] - ret[r["seed"]]["metrics"][k])
                            for r in mr
                            if r["seed"] in ret
                            and k in r["metrics"]
                            and k in ret[r["seed"]]["metrics"]
                        ]
                    )
                    if d is not None:
                        cell += f" (Δ {d[0]:.4f})"
                cells.append(cell)
            n_rounds = mean([r["rounds"] for r in mr])[0]
            lines.append(
                f"| {m} | {fmt(sec, 1)} | {fmt(sp, 1)} | {n_rounds:.0f} | "
                f"{mean([r['bytes_up'] for r in mr])[0] / 1e6:.1f} | "
                f"{mean([r['bytes_down'] for r in mr])[0] / 1e6:.1f} | " + " | ".join(cells) + " |"
            )
        tr = rs[0].get("trained", {})
        if tr:
            lines += [
                "",
                f"Trained models (seed {rs[0]['seed']}): "
                + "; ".join(
                    f"{n}: " + ", ".join(f"{k} {v:.4f}" for k, v in d.items())
                    for n, d in tr.items()
                ),
            ]
        lines.append("")
    dst.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())

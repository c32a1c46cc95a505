"""Tables and plots of ``experiments/creat`` from the runs in ``results/``.

Per run: the final round's target-item metrics over the benign users (HR@10 / NDCG@10 / MRR of
the target among 100 popularity-sampled negatives, as CREAT's Table 1; exposure@10 and NDCG@10
in the full ranking), the clean NDCG@10, and the stealth of the run's pollution rule
(:func:`stealth`: a detector's cross-validated AUC and the co-OT distance on 200 probe profiles,
clean vs polluted). With defenses: the clean NDCG@10 cost of each defense (pure runs), the residual
attack effect, and the detection AUC of the defense's per-client scores (malicious vs benign).

    python experiments/creat/summarize.py            # writes README tables to stdout + pngs
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ATTACK_ORDER = ["pure", "random", "popular", "substitution", "gradient", "gradient-x10", "creat"]
TARGET_KEYS = ("tgt_hr@10_s", "tgt_ndcg@10_s", "tgt_mrr_s", "tgt_exposure@10")
# CREAT's Table 1 (AAAI-26), ML-1M, HR@10: pure, the best baseline, CREAT
PAPER = {
    "NARM": (0.0174, 0.1069, 0.1428),
    "BERT4Rec": (0.0128, 0.1065, 0.1492),
}


LABELS = {
    "sasrec": "FedSASRec, ML-100K",
    "gru4rec": "FedGRU4Rec, ML-100K",
    "sasrec-lastfm": "FedSASRec, lastfm-2k",
}


def load(model: str) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for f in sorted((RESULTS / model).glob("*/summary.json")):
        name = f.parent.name
        head, seed = name.rsplit("-s", 1)
        attack, defense = _split(head)
        s = json.loads(f.read_text())
        rec = dict(s["final"]["global"])
        rec["seed"] = int(seed)
        rec["dir"] = str(f.parent)
        rec["wall_s"] = s.get("wall_s", np.nan)
        out.setdefault((attack, defense), []).append(rec)
    return out


def _split(head: str) -> tuple[str, str]:
    for a in sorted(ATTACK_ORDER, key=len, reverse=True):
        if head.startswith(a + "-"):
            return a, head[len(a) + 1 :]
    raise ValueError(head)


def ms(values, fmt="{:.4f}") -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not v.size:
        return "n/a"
    return (fmt + " ± " + fmt).format(v.mean(), v.std(ddof=1) if v.size > 1 else 0.0)


PROBE_USERS = 200


def stealth(run_dir: str) -> dict[str, float]:
    """Stealth of a run's pollution (cached in the run folder as ``stealth.json``).

    The attackers' own profiles are too few (10) for a detector, so the run's pollution rule is
    applied, with the run's final global model as the surrogate, to a probe of 200 benign
    users' profiles (seeded): ``probe_auc`` is the detector's cross-validated AUC separating
    those 200 profiles before and after pollution (sequence embeddings of the final model), with
    ``probe_auc_sym`` = max(AUC, 1 - AUC), and ``coot`` the co-OT distance between the two sets.
    CREAT's masker is trained as in the run: on the coalition's (the attackers') profiles.
    """
    cache = Path(run_dir) / "stealth.json"
    if cache.exists():
        return json.loads(cache.read_text())
    import dataclasses

    from fedrec.attacks import creat, pollution
    from fedrec.attacks.stealth import coot_distance, detector_auc, sequence_embeddings
    from fedrec.attacks.threat import resolve
    from fedrec.config import validate, validate_dataclass
    from fedrec.recsys.data import user_data
    from fedrec.seeding import derive_seed

    cfg = validate(json.loads((Path(run_dir) / "config.json").read_text()))
    kind = cfg.attack.kind
    if cfg.attack.start_round > cfg.num_server_rounds or kind not in POLLUTION:
        return {}
    _, ud = user_data(cfg.dataset.name, cfg.dataset.options, cfg.dataset.split)
    upc = int(cfg.strategy_params.get("users-per-client", 1))
    th = resolve(cfg.attack, cfg.seed, cfg.partition.num_clients, ud, upc)
    t, K = int(th.targets[0]), cfg.attack.budget
    model = _final_model(cfg, run_dir, ud.num_items)
    L = model.max_len
    rng = np.random.default_rng(derive_seed(cfg.seed, "stealth-probe"))
    benign = np.setdiff1d(np.arange(ud.num_users), th.attacker_users)
    probe = [np.asarray(ud.train_seq[u]) for u in rng.choice(benign, PROBE_USERS, replace=False)]
    if kind == "random":
        new = pollution.random_pollution(probe, t, K, L, rng)
    elif kind == "popular":
        new = pollution.popular_pollution(probe, t, K, L, ud.item_counts())
    elif kind == "substitution":
        new = pollution.substitution_pollution(model, probe, t, K)
    else:
        params = {k: v for k, v in cfg.attack_params.items()}
        p = validate_dataclass(creat.CreatParams, params, "attack.params.")
        p = dataclasses.replace(p, K=K)
        coalition = [np.asarray(ud.train_seq[u]) for u in th.attacker_users]
        masker, _ = creat.train_masker(model, coalition, t, p)
        new = creat.pollute(model, masker, probe, t, K)
    X_clean = sequence_embeddings(model, probe)
    X_pol = sequence_embeddings(model, new)
    det = detector_auc(X_clean, X_pol)
    out = {
        "probe_auc": float(det.auc),
        "probe_auc_sym": float(det.auc_sym),
        "coot": float(coot_distance(X_clean, X_pol)),
        "changed": float(np.mean([(a != b).sum() for a, b in zip(probe, new)])),
    }
    cache.write_text(json.dumps(out))
    return out


POLLUTION = ("random", "popular", "substitution", "creat")


def _final_model(cfg, run_dir, num_items):
    """The run's strategy model (its spec's ``build_model``) with the checkpoint's weights."""
    import torch

    from fedrec.plugins import load_strategy

    cls = load_strategy(cfg.strategy.name)
    m = cls.build_model(cls.parse_params(cfg), num_items)
    with np.load(Path(run_dir) / "checkpoint.npz") as z:
        ws = [z[f"w{i}"] for i in range(len(list(m.parameters())))]
    with torch.no_grad():
        for prm, w in zip(m.parameters(), ws):
            prm.copy_(torch.as_tensor(w))
    m.eval()
    return m


def anomaly_auc(run_dir: str, attackers: set[int]) -> float:
    """AUC of a defense's per-client suspicion (malicious vs benign), pooled over rounds."""
    from sklearn.metrics import roc_auc_score

    f = Path(run_dir) / "defense.jsonl"
    if not f.exists() or not attackers:
        return float("nan")
    y, s = [], []
    for line in f.read_text().splitlines():
        rec = json.loads(line)
        # anomaly: its score; norm-clip: the update norm; Krum family: 1 - the share of the
        # client's rows on which it was selected (coordinate-wise rules have no per-client score)
        score = rec.get("score") or [1.0 - k for k in rec.get("kept-share", [])]
        for c, v in zip(rec["clients"], score):
            y.append(int(c in attackers))
            s.append(v)
    if len(set(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def attackers_of(run_dir: str) -> set[int]:
    from fedrec.attacks.threat import attacker_ids
    from fedrec.config import validate

    cfg = validate(json.loads((Path(run_dir) / "config.json").read_text()))
    a = cfg.attack
    ids = attacker_ids(a.kind, a.fraction, a.client_ids, cfg.partition.num_clients, cfg.seed)
    return set(ids.tolist())


def table_attacks(model: str, runs) -> list[str]:
    pure = {r["seed"]: r for r in runs.get(("pure", "none"), [])}
    lines = [
        f"| {model} attack | target HR@10 | NDCG@10 | MRR | exposure@10 (full) | × pure HR@10 |"
        " clean NDCG@10 | Δ vs pure | detector AUC (sym.) | co-OT |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in ATTACK_ORDER:
        rs = runs.get((a, "none"))
        if not rs:
            continue
        st = [stealth(r["dir"]) for r in rs]
        ratio = [
            r["tgt_hr@10_s"] / pure[r["seed"]]["tgt_hr@10_s"]
            if r["seed"] in pure and pure[r["seed"]]["tgt_hr@10_s"] > 0
            else np.nan
            for r in rs
        ]
        drop = [
            100 * (r["ndcg@10"] / pure[r["seed"]]["ndcg@10"] - 1) if r["seed"] in pure else np.nan
            for r in rs
        ]
        lines.append(
            f"| {a} | "
            + " | ".join(ms([r.get(k, np.nan) for r in rs]) for k in TARGET_KEYS)
            + f" | {ms(ratio, '{:.1f}')} | {ms([r['ndcg@10'] for r in rs])}"
            + f" | {ms(drop, '{:+.1f}')} %"
            + f" | {ms([s.get('probe_auc', np.nan) for s in st], '{:.2f}')}"
            + f" ({ms([s.get('probe_auc_sym', np.nan) for s in st], '{:.2f}')})"
            + f" | {ms([s.get('coot', np.nan) for s in st], '{:.3f}')} |"
        )
    return lines


def table_defenses(model: str, runs) -> list[str]:
    base = {(a, r["seed"]): r for (a, d), rs in runs.items() if d == "none" for r in rs}
    defenses = sorted({d for (_, d) in runs if d != "none"})
    lines = [
        f"| {model} defense | clean NDCG@10 (pure) | cost vs no defense | popular: target HR@10"
        " | creat: target HR@10 | detection AUC (creat) |",
        "|---|---|---|---|---|---|",
    ]
    for d in defenses:
        pure = runs.get(("pure", d), [])
        cost = [
            100 * (r["ndcg@10"] / base[("pure", r["seed"])]["ndcg@10"] - 1)
            for r in pure
            if ("pure", r["seed"]) in base
        ]
        cr = runs.get(("creat", d), [])
        auc = [anomaly_auc(r["dir"], attackers_of(r["dir"])) for r in cr]
        lines.append(
            f"| {d} | {ms([r['ndcg@10'] for r in pure])} | {ms(cost, '{:+.1f}')} %"
            f" | {ms([r.get('tgt_hr@10_s') for r in runs.get(('popular', d), [])])}"
            f" | {ms([r.get('tgt_hr@10_s') for r in cr])} | {ms(auc, '{:.2f}')} |"
        )
    return lines


def paper_gains(models_runs) -> list[str]:
    """CREAT's relative gains in the paper (ML-1M) beside ours: × pure and vs the best baseline."""
    lines = [
        "| setting | CREAT ÷ pure (HR@10) | CREAT vs best baseline (HR@10) | best baseline |",
        "|---|---|---|---|",
    ]
    for name, (pure, base, creat) in PAPER.items():
        lines.append(
            f"| paper, ML-1M, {name} | {creat / pure:.1f}× | {100 * (creat / base - 1):+.0f} % |"
            " (Table 1) |"
        )
    for model, runs in models_runs.items():
        mean = {
            a: np.mean([r["tgt_hr@10_s"] for r in runs[(a, "none")]])
            for a in ATTACK_ORDER
            if (a, "none") in runs
        }
        if "creat" not in mean or "pure" not in mean:
            continue
        baselines = {a: v for a, v in mean.items() if a not in ("pure", "creat")}
        best = max(baselines, key=lambda a: baselines[a])
        ratio = mean["creat"] / mean["pure"] if mean["pure"] > 0 else float("inf")
        lines.append(
            f"| ours, {LABELS.get(model, model)} | {ratio:.1f}×"
            f" | {100 * (mean['creat'] / baselines[best] - 1):+.0f} % | {best} |"
        )
    return lines


def plot(models_runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models_runs), figsize=(5.5 * len(models_runs), 3.6))
    axes = np.atleast_1d(axes)
    for ax, (model, runs) in zip(axes, models_runs.items()):
        names = [a for a in ATTACK_ORDER if (a, "none") in runs]
        vals = [[r["tgt_hr@10_s"] for r in runs[(a, "none")]] for a in names]
        ax.bar(names, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals], color="C0")
        for i, v in enumerate(vals):
            ax.scatter([i] * len(v), v, color="k", s=8, zorder=3)
        ax.set_title(f"{LABELS.get(model, model)}: target HR@10")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(HERE / "attacks.png", dpi=120)


def plot_defenses(model: str, runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    defenses = ["none"] + sorted({d for (_, d) in runs if d != "none"})
    attacks = [a for a in ("pure", "popular", "creat") if any((a, d) in runs for d in defenses)]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8))
    w = 0.8 / max(len(attacks), 1)
    x = np.arange(len(defenses))
    for i, a in enumerate(attacks):
        v = [
            np.mean([r["tgt_hr@10_s"] for r in runs.get((a, d), [])] or [np.nan]) for d in defenses
        ]
        ax.bar(x + i * w, v, w, label=a)
    ax.set_xticks(x + w * (len(attacks) - 1) / 2, defenses, rotation=30)
    ax.set_title("target HR@10 (100 popularity-sampled negatives)")
    ax.legend()
    v = [np.mean([r["ndcg@10"] for r in runs.get(("pure", d), [])] or [np.nan]) for d in defenses]
    bx.bar(x, v, color="C2")
    bx.set_xticks(x, defenses, rotation=30)
    bx.set_ylim(min(np.nanmin(v) * 0.9, 0.05), np.nanmax(v) * 1.05)
    bx.set_title("clean NDCG@10 without attack (defense cost)")
    fig.tight_layout()
    fig.savefig(HERE / f"defenses_{model}.png", dpi=120)


def main() -> None:
    all_runs = {
        m: load(m) for m in ("sasrec", "gru4rec", "sasrec-lastfm") if (RESULTS / m).exists()
    }
    for model, runs in all_runs.items():
        print("\n".join(table_attacks(model, runs)))
        print()
        if any(d != "none" for (_, d) in runs):
            print("\n".join(table_defenses(model, runs)))
            print()
            plot_defenses(model, runs)
    if all_runs:
        plot(all_runs)
        print("\n".join(paper_gains(all_runs)))


if __name__ == "__main__":
    main()

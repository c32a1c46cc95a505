"""Utility against ε (issue 15, differential privacy).

Settings (``--only``; each a list of noise multipliers z, on the ``local`` runtime):

- ``fedmf-ldp``: FedMF on ML-100K (experiments/fedrec_base/fedmf_ml100k.toml, 943 per-user
  clients, 30 rounds) with local DP of every upload (``privacy.mechanism = local``,
  ``privacy.clip-norm = 0.5``, about the 40th percentile of the uploads' norms measured in
  round 1-2 at z = 0). z = 0 is the cost of hiding *which* items a user touched (every row
  uploaded, averaged over all clients) before any noise.
- ``adult-dpsgd``: FedAvg on Adult (experiments/quickstart/adult_fedavg.toml) with
  sample-level DP-SGD in every client (Opacus, per-example clip 1.0).
- ``adult-central``: FedAvg on Adult with 100 clients, 20 % sampled per round, 20 rounds,
  client-level central DP with adaptive clipping (Andrew et al.).

Prints a Markdown table: z, the reported ε(δ = 1e-5) after the last round, the final
metric and its share of the non-private run's, wall time.

    FEDREC_DATA_DIR=../shared/data python experiments/privacy/run.py --only fedmf-ldp
    python experiments/privacy/run.py --only adult-dpsgd --noise 0.5 1 2

Results are cached per run folder under --out (default runs/privacy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADULT = ROOT / "experiments/quickstart/adult_fedavg.toml"
SETTINGS: dict[str, tuple[Path, str, list[str], list[float]]] = {
    "fedmf-ldp": (
        ROOT / "experiments/fedrec_base/fedmf_ml100k.toml",
        "ndcg@10",
        ["privacy.mechanism=local", "privacy.clip-norm=0.5"],
        [0.0, 2.0, 8.0, 32.0],
    ),
    "adult-dpsgd": (
        ADULT,
        "accuracy",
        ["privacy.mechanism=dpsgd", "privacy.clip-norm=1.0"],
        [0.5, 1.0, 2.0, 4.0],
    ),
    "adult-central": (
        ADULT,
        "accuracy",
        [
            "partition.num-clients=100",
            "strategy.fraction-train=0.2",
            "num-server-rounds=20",
            "privacy.mechanism=central",
            "privacy.clip-norm=0",
        ],
        [0.1, 0.3, 1.0],
    ),
}


def one_run(name: str, z: float | None, seed: int, out: Path) -> dict:
    import fedrec

    toml, metric, privacy, _ = SETTINGS[name]
    tag = "off" if z is None else f"z{z:g}"
    run_dir = out / f"{name}-{tag}-s{seed}"
    over = [f"seed={seed}", "output.plots=false", "output.keep-client-state=false"]
    over += [p for p in privacy if not p.startswith("privacy.")]  # the setting's cohort
    if z is not None:
        over += [p for p in privacy if p.startswith("privacy.")]
        over += [f"privacy.noise-multiplier={z}"]
    if not (run_dir / "summary.json").exists():
        fedrec.run(toml, backend="local", out=run_dir, overrides=over, quiet=True)
    s = json.loads((run_dir / "summary.json").read_text())
    eps = s.get("privacy", {}).get("epsilon", None) if z is not None else None
    return {
        "setting": name,
        "z": z,
        "seed": seed,
        "metric": metric,
        "value": s["final"]["global"][metric],
        "epsilon": float("inf") if (z is not None and eps is None) else eps,
        "wall_s": s["wall_s"],
    }


def table(results: list[dict]) -> str:
    lines = [
        "| setting | z | ε (δ = 1e-5) | final metric | % of non-private | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name in SETTINGS:
        rs = [r for r in results if r["setting"] == name]
        ref = next((r["value"] for r in rs if r["z"] is None), None)
        for r in rs:
            z = "off" if r["z"] is None else f"{r['z']:g}"
            eps = "–" if r["z"] is None else f"{r['epsilon']:.3g}"
            share = f"{r['value'] / ref:.1%}" if ref else "–"
            lines.append(
                f"| {name} | {z} | {eps} | {r['metric']} {r['value']:.4f} | {share} | "
                f"{r['wall_s']:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(SETTINGS), action="append")
    p.add_argument(
        "--noise", type=float, nargs="+", help="noise multipliers (default: per setting)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/privacy")
    args = p.parse_args(argv)
    out = Path(args.out)
    results = []
    for name in args.only or list(SETTINGS):
        for z in [None, *(args.noise or SETTINGS[name][3])]:
            r = one_run(name, z, args.seed, out)
            print(json.dumps(r), file=sys.stderr, flush=True)
            results.append(r)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

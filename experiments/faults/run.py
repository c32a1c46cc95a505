"""Final metrics under simulated client crashes (issue 15, fault injection).

FedAvg on the shipped Adult data (experiments/quickstart/adult_fedavg.toml) and FedMF on
ML-100K (experiments/fedrec_base/fedmf_ml100k.toml), each at a per-round client crash
probability of 0, 10 and 30 % (``faults.crash``), over several seeds, on the ``local``
runtime. Prints a Markdown table: the final metric (accuracy / NDCG@10) mean ± std over the
seeds, its relative change from the fault-free run of the same seed, the measured share of
sampled clients whose update was lost per round, and the wall time.

    FEDREC_DATA_DIR=../shared/data python experiments/faults/run.py            # both
    python experiments/faults/run.py --only adult --seeds 0 1 2 3 4
    python experiments/faults/run.py -c faults.straggler=0.3 -c faults.deadline=30

Results are cached per run folder under --out (default runs/faults); delete it to rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    "adult": (ROOT / "experiments/quickstart/adult_fedavg.toml", "accuracy", []),
    "fedmf": (ROOT / "experiments/fedrec_base/fedmf_ml100k.toml", "ndcg@10", []),
}


def one_run(name: str, crash: float, seed: int, out: Path, extra: list[str]) -> dict:
    import fedrec

    toml, metric, base = SETTINGS[name]
    tag = "".join(f"-{x.replace('=', '_')}" for x in extra)  # extra overrides: own folders
    run_dir = out / f"{name}-crash{int(round(crash * 100))}-s{seed}{tag}"
    if not (run_dir / "summary.json").exists():
        fedrec.run(
            toml,
            backend="local",
            out=run_dir,
            overrides=[
                *base,
                f"seed={seed}",
                f"faults.crash={crash}",
                "output.plots=false",
                "output.keep-client-state=false",
                *extra,
            ],
            quiet=True,
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines() if x]
    rates = [r["fault_rate"] for r in rows if r["scope"] == "global" and "fault_rate" in r]
    return {
        "setting": name,
        "crash": crash,
        "seed": seed,
        "metric": metric,
        "value": summary["final"]["global"][metric],
        "fault_rate": float(np.mean(rates)) if rates else 0.0,
        "wall_s": summary["wall_s"],
    }


def table(results: list[dict]) -> str:
    lines = [
        "| setting | crash | final metric (mean ± std) | change vs 0 % (mean, worst) | "
        "lost updates / round | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name in SETTINGS:
        rs = [r for r in results if r["setting"] == name]
        if not rs:
            continue
        ref = {r["seed"]: r["value"] for r in rs if r["crash"] == 0.0}
        for crash in sorted({r["crash"] for r in rs}):
            cs = [r for r in rs if r["crash"] == crash]
            vals = np.array([r["value"] for r in cs])
            rel = np.array([r["value"] / ref[r["seed"]] - 1 for r in cs if r["seed"] in ref])
            if not len(rel):
                rel = np.array([float("nan")])
            worst = rel[np.argmax(np.abs(rel))] if np.isfinite(rel).all() else float("nan")
            lines.append(
                f"| {name} ({cs[0]['metric']}) | {crash:.0%} | {vals.mean():.4f} ± "
                f"{vals.std():.4f} | {rel.mean():+.2%}, {worst:+.2%} | "
                f"{np.mean([r['fault_rate'] for r in cs]):.1%} | "
                f"{np.mean([r['wall_s'] for r in cs]):.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(SETTINGS), action="append")
    p.add_argument("--crash", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/faults")
    p.add_argument("-c", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    out = Path(args.out)
    results = []
    for name in args.only or list(SETTINGS):
        for crash in args.crash:
            for seed in args.seeds:
                r = one_run(name, crash, seed, out, args.extra)
                print(json.dumps(r), file=sys.stderr, flush=True)
                results.append(r)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

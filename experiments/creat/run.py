"""Profile pollution on federated sequential recommenders: attacks x defenses x seeds.

Every run is one ``fedrec run`` of ``fedsasrec_ml100k.toml`` (or its GRU4Rec variant) with the
threat model and the defense set by overrides, in a subprocess (two at a time on two cores),
written to ``results/<model>/<attack>-<defense>-s<seed>/`` and skipped when its
``summary.json`` exists. ``pure`` is the no-attack reference with the same malicious clients
dormant (``attack.start-round`` past the last round): the same benign users are evaluated and the
same target item is measured.

    FEDREC_DATA_DIR=../shared/data python experiments/creat/run.py --table attacks
    FEDREC_DATA_DIR=../shared/data python experiments/creat/run.py --table defenses
    python experiments/creat/summarize.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

ATTACKS = {
    "pure": {"attack.kind": "random", "attack.start-round": 10**6},
    "random": {"attack.kind": "random"},
    "popular": {"attack.kind": "popular"},
    "substitution": {"attack.kind": "substitution"},
    "gradient": {"attack.kind": "gradient"},
    "gradient-x10": {"attack.kind": "gradient", "attack.boost": 10.0},
    "creat": {"attack.kind": "creat"},
}
DEFENSES = ("none", "median", "trimmed-mean", "krum", "multikrum", "bulyan", "norm-clip", "anomaly")
MODELS = {
    "sasrec": "fedsasrec_ml100k.toml",
    "gru4rec": "fedgru4rec_ml100k.toml",
    "sasrec-lastfm": "fedsasrec_lastfm.toml",
}


def overrides(model: str, attack: str, defense: str, seed: int, extra: dict) -> dict:
    o = {"seed": seed, **ATTACKS[attack], **extra}
    o["defense.method"] = defense
    o["output.checkpoint"] = True
    return o


def command(model, attack, defense, seed, extra, out: Path) -> list[str]:
    args = [sys.executable, "-m", "fedrec.cli", "run", str(HERE / MODELS[model])]
    args += ["--out", str(out)]
    for k, v in overrides(model, attack, defense, seed, extra).items():
        args += ["-c", f"{k}={v}"]
    return args


def run_one(job) -> tuple[str, float, int]:
    name, args, out = job
    if (out / "summary.json").exists():
        return name, 0.0, 0
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    t0 = time.perf_counter()
    with open(str(out) + ".log", "w") as log:
        rc = subprocess.call(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    return name, time.perf_counter() - t0, rc


def jobs(table: str, models, attacks, seeds, extra):
    if table == "attacks":
        grid = [(m, a, "none") for m in models for a in attacks]
    else:
        grid = [(m, a, d) for m in models for a in attacks for d in DEFENSES if d != "none"]
    for m, a, d in grid:
        for s in seeds:
            out = RESULTS / m / f"{a}-{d}-s{s}"
            yield f"{m}/{a}-{d}-s{s}", command(m, a, d, s, extra, out), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", choices=("attacks", "defenses"), default="attacks")
    ap.add_argument("--models", nargs="+", default=["sasrec", "gru4rec"], choices=list(MODELS))
    ap.add_argument("--attacks", nargs="+", default=None, choices=list(ATTACKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("-c", "--config", action="append", default=[], help="extra key=value")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.config)
    attacks = args.attacks or (
        list(ATTACKS) if args.table == "attacks" else ["pure", "popular", "creat"]
    )
    todo = list(jobs(args.table, args.models, attacks, args.seeds, extra))
    print(f"{len(todo)} runs", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:
        for name, wall, rc in pool.map(run_one, todo):
            status = "ok" if rc == 0 else f"FAILED rc={rc}"
            print(f"{name}: {status} ({wall:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

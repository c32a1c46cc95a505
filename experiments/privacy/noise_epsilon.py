"""ε of the Gaussian-noise baselines of the RAID and LEGO tables (issue 15).

Both baselines release each user's embedding once with isotropic Gaussian noise:

- RAID (experiments/raid/run_raid.py, ``noise-s{sigma}``): ``e_u + sigma N(0, I)``;
- LEGO (experiments/lego/run_lego.py, ``c``): ``e_u + c ||e_u|| / sqrt(d) N(0, I)``.

Neither clips the embeddings, so neither has a data-independent sensitivity and, strictly,
no finite ε. The figure below is the ε the same noise *would* give if every embedding were
clipped to the norm ``C`` named in the table (local DP of one release, replace-one
neighbours: sensitivity ``2C``; :func:`fedrec.privacy.accountant.gaussian_ldp_epsilon`
with noise multiplier ``sigma / C``):

- RAID: ``C`` = the largest norm among the undefended released embeddings (read from
  ``runs/raid/none/embeddings.npz``, i.e. after ``python experiments/raid/run_raid.py``);
  smaller norms would need clipping to that ``C`` first -- a bound that is itself
  data-dependent, so the ε is indicative, not a guarantee.
- LEGO: the noise scales with each user's own norm, ``sigma_u / ||e_u|| = c / sqrt(d)``;
  with ``C = ||e_u||`` per user the noise multiplier is ``c / sqrt(d)`` for everyone (the
  same caveat: the norm itself is private).

    python experiments/privacy/noise_epsilon.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

RAID_SIGMAS = (0.1, 0.2, 0.4, 0.8, 1.6)  # experiments/raid/run_raid.py --sigmas
LEGO_CS = (0.05, 0.1, 0.2, 0.5, 1.0)


def main(argv: list[str] | None = None) -> int:
    from fedrec.privacy.accountant import gaussian_ldp_epsilon

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--raid-run", default="runs/raid/seed1/none")
    p.add_argument("--dim", type=int, default=64, help="LEGO's embedding size d")
    p.add_argument("--delta", type=float, default=1e-5)
    args = p.parse_args(argv)
    lines = [f"| baseline | noise | C | noise multiplier | ε (δ = {args.delta:g}) |"]
    lines.append("|---|---|---|---|---|")
    emb = Path(args.raid_run) / "embeddings.npz"
    if emb.is_file():
        P = np.load(emb)["embeddings"].astype(np.float64)
        C = float(np.linalg.norm(P, axis=1).max())
        for s in RAID_SIGMAS:
            z = s / C
            eps = gaussian_ldp_epsilon(z, 1, args.delta)
            lines.append(f"| RAID noise | sigma {s:g} | {C:.3f} (max norm) | {z:.4f} | {eps:.4g} |")
    else:
        print(f"({emb} not found: run experiments/raid/run_raid.py first)", file=sys.stderr)
    for c in LEGO_CS:
        z = c / math.sqrt(args.dim)
        eps = gaussian_ldp_epsilon(z, 1, args.delta)
        lines.append(f"| LEGO noise | c {c:g} | own norm | {z:.4f} | {eps:.4g} |")
    print("\n".join(lines))
    print(json.dumps({"delta": args.delta, "dim": args.dim}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

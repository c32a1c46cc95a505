"""Pure mathematics of every method (no flwr import, no I/O), batch-first.

Submodules (imported explicitly, nothing is imported here so that importing one
algorithm does not pull in the solvers of another):

- :mod:`fedrec.algorithms.fedfact`: FedFACT (NeurIPS 2025) constraint matrices, the
  calibration matrix ``M(a,k)``, the in-processing cost-sensitive loss and the
  post-processing client / server dual steps (``reference/fedfact.md`` §2-§7).
- :mod:`fedrec.algorithms.lp`: the centralized linear-programming limit of FedFACT's
  problem (1) on a finite sample (cvxpy/CLARABEL and scipy/HiGHS), used as an oracle.
- :mod:`fedrec.algorithms.fair_baselines`: server/client maths of the FairFed and FedFB
  baselines.
- :mod:`fedrec.algorithms.raid`: RAID's optimal-transport pieces (group moments,
  Bures-Wasserstein and free-support barycenters with POT, OT alignment targets, W2
  between groups).
- :mod:`fedrec.algorithms.lego`: LEGO's per-user vCLUB calibration, flexible
  combination and dynamic requests.
- :mod:`fedrec.algorithms.estimators`: the attribute classifier (MLP) that LEGO's
  variational estimators and RAID's adversary share.
- :mod:`fedrec.algorithms.fedmf`: federated MF-BPR (initialisation, the batched local
  step, row-sparse uploads, the sparse server step).
- :mod:`fedrec.algorithms.mgda`: the MGDA min-norm point of several gradients
  (Frank-Wolfe with away steps; cvxpy as the exact oracle).
- :mod:`fedrec.algorithms.bifair`: BiFair's LLM-enhanced MF (projector, group-weighted
  BPR, the one-step-unrolled hypergradient on the item representations, group balancing).
- :mod:`fedrec.algorithms.ufo`: UFO's self-play pieces (geometric mixture, SPIN / DPO
  losses, fair targets, opponent sampling) and the re-weighting / re-ranking baselines.
"""

__all__ = [
    "bifair",
    "estimators",
    "fair_baselines",
    "fedfact",
    "fedmf",
    "lego",
    "lp",
    "mgda",
    "raid",
    "ufo",
]

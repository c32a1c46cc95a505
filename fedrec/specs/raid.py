"""Spec of ``raid``: Params, query actions, config / metric keys, state fields, array layouts.

The server half (:mod:`fedrec.strategies.raid`) broadcasts the barycenter of the current
version with the ``train`` messages as numpy arrays (the ``config-arrays`` record):
Gaussian maps ``A (G, d, d)``, ``b (G, d)`` (:func:`gaussian_broadcast`), free-support
atoms ``X* (s, d)`` (:func:`support_broadcast`) or the adversary's parameters as one flat
float32 vector (:func:`adversary_broadcast`, layout :func:`adversary_layout`:
``[W1 (h, d), b1 (h,), W2 (G, h), b2 (G,)]``). The client half
(:mod:`fedrec.clients.raid`) answers the centroid, adversary and validation queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.algorithms.estimators import classifier_shapes
from fedrec.config import key
from fedrec.messages import FlatLayout
from fedrec.specs import ranking
from fedrec.specs.fedmf import NUM_EXAMPLES, FedMFParams

__all__ = [
    "ADV",
    "ADV_PARAMS",
    "ATOM_CLIENT",
    "ATOM_DISP",
    "A_MAPS",
    "B_MAPS",
    "GAMMA",
    "LOSS_SUM",
    "NUM_EXAMPLES",
    "NUM_GROUPS",
    "RAIDParams",
    "STATS",
    "STATE_TARGETS",
    "STATE_VERSION",
    "STATS_ROUND",
    "SUPPORT",
    "TRANSPORT",
    "VALIDATE",
    "VAL_NDCG",
    "VERSION",
    "adversary_broadcast",
    "adversary_layout",
    "attribute_names",
    "atoms_broadcast",
    "gaussian_broadcast",
    "group_codes",
    "pack_adv_grads",
    "pack_moments",
    "pack_quantized",
    "quantize_seed",
    "support_broadcast",
    "unpack_adv_grads",
    "unpack_adversary",
    "unpack_atom_displacements",
    "unpack_gaussian",
    "unpack_moments",
    "unpack_quantized",
    "unpack_support",
]


@dataclass(frozen=True)
class RAIDParams(FedMFParams):
    mode: str = key(
        "gaussian",
        "gaussian: Bures-Wasserstein barycenter from summed moments "
        "(cross-device); free-support: POT free-support barycenter from per-client "
        "k-means supports (cross-silo); adversarial: gradient-reversal baseline.",
        choices=("gaussian", "free-support", "adversarial"),
    )
    attribute: str = key(
        "gender",
        "The protected user attribute (a key of the dataset's "
        "user profile, e.g. gender, age_bucket, occupation), or several joined by "
        "commas, protected jointly (one group per combination of values).",
    )
    gamma: float = key(
        0.5,
        "Penalty coefficient of ||e_u - t_u||^2 (adversarial: weight of "
        "the reversed classifier gradient).",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    warmup_rounds: int = key(
        10,
        "Rounds of plain FedMF before the defense starts.",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )
    centroid_every: int = key(
        5, "Rounds between centroid updates (F).", check=lambda v: v >= 1, check_doc=">= 1"
    )
    target_moments: str = key(
        "resampled",
        "gaussian: what each group is mapped onto. resampled: the moments of a fresh "
        "n_a-sample of the barycenter, drawn per group (keeps held-out users private); "
        "barycenter: the barycenter itself (equalises the sample moments exactly, which "
        "makes an attacker's held-out predictions anti-informative, i.e. flippable).",
        choices=("resampled", "barycenter"),
    )
    support_targets: str = key(
        "atoms",
        "free-support: how users get their targets. atoms: the server plans every group's "
        "pooled atoms onto the barycenter and each user moves with its own atom's "
        "displacement (keeps its offset from the atom); client-plans: each client plans its "
        "own users onto the whole barycenter and takes the barycentric projection.",
        choices=("atoms", "client-plans"),
    )
    release_transport: bool = key(
        False,
        "After the last round, one more centroid round and every user's embedding is "
        "replaced by its OT target (the released/evaluated embeddings are transported).",
    )
    support_size: int = key(
        100, "free-support: atoms of the barycenter.", check=lambda v: v >= 1, check_doc=">= 1"
    )
    quantize_k: int = key(
        16,
        "free-support: k-means atoms per group and client.",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )
    ndcg_tolerance: float = key(
        0.05,
        "Relative drop of validation NDCG@10 below its warm-up "
        "value that triggers a gamma back-off.",
        check=lambda v: 0 <= v < 1,
        check_doc="in [0, 1)",
    )
    gamma_backoff: float = key(
        0.5,
        "Factor applied to gamma when the tolerance is exceeded.",
        check=lambda v: 0 < v <= 1,
        check_doc="in (0, 1]",
    )
    adv_hidden: int = key(
        16,
        "adversarial: hidden units of the attribute classifier.",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )
    adv_lr: float = key(
        0.01,
        "adversarial: Adam step size of the classifier.",
        check=lambda v: v > 0,
        check_doc="> 0",
    )
    adv_steps: int = key(
        5, "adversarial: classifier updates per round.", check=lambda v: v >= 1, check_doc=">= 1"
    )
    consent_fraction: float = key(
        1.0,
        "adversarial: share of users whose label trains the classifier (seeded).",
        check=lambda v: 0 < v <= 1,
        check_doc="in (0, 1]",
    )


def attribute_names(attribute: str) -> list[str]:
    """The profile keys of ``strategy.params.attribute`` (comma-separated)."""
    return [n.strip() for n in str(attribute).split(",") if n.strip()]


def group_codes(user_attrs: Mapping[str, Any], attribute: str) -> tuple[np.ndarray, int]:
    """Every user's protected group and the number of groups ``G``.

    One attribute: its values (``G = max + 1``). Several, ``"a,b"``: the joint value
    ``code = v_a * K_b + v_b`` (mixed radix over the attributes in the given order,
    ``K = max + 1`` over all users; ``G`` the product), so RAID aligns every
    combination's distribution (empty combinations are skipped by the server).
    """
    names = attribute_names(attribute)
    codes = np.zeros(len(np.asarray(user_attrs[names[0]])), dtype=np.int64)
    total = 1
    for n in names:
        v = np.asarray(user_attrs[n], dtype=np.int64)
        k = int(v.max()) + 1
        codes = codes * k + v
        total *= k
    return codes, total


def quantize_seed(stats_round: int, client: int) -> int:
    """The k-means seed of ``client``'s quantisation in the centroid round ``stats_round``
    (free-support): the upload and the atom targets re-quantise with the same one."""
    return int(stats_round) * 7919 + int(client)


# ------------------------------------------------------------------ query actions
STATS = "raid_stats"  # centroid round: per-group moment sums or k-means atoms
ADV = "raid_adv"  # adversarial: the adversary's CE gradient sums
VALIDATE = "raid_validate"  # validation-split per-user NDCG@10 (the constraint)
TRANSPORT = "raid_transport"  # release-transport: users take their OT targets

# ------------------------------------------------------------------ config keys (server -> client)
GAMMA = "raid-gamma"  # train: penalty coefficient (0 = plain FedMF)
VERSION = "raid-version"  # train: version of the broadcast barycenter
NUM_GROUPS = "num-groups"  # train, stats: G
A_MAPS = "raid-A"  # gaussian: (G, d, d) float64
B_MAPS = "raid-b"  # gaussian: (G, d) float64
SUPPORT = "raid-X"  # free-support: (s, d) float64 atoms
ATOM_CLIENT = "raid-atom-client"  # free-support, atoms: (m,) int64 client of every atom
ATOM_DISP = "raid-atom-disp"  # free-support, atoms: (m, d) float64 atom displacements
STATS_ROUND = "raid-stats-round"  # free-support, atoms: round of the quantisation (its seed)
ADV_PARAMS = "adv-params"  # adversarial: flat float32 adversary (adversary_layout)

# ------------------------------------------------------------------ metric keys (client -> server)
LOSS_SUM = "loss-sum"  # adv: summed CE of the consenting users
VAL_NDCG = ranking.PER_USER + "ndcg@10"  # validate: per-user validation NDCG@10
# NUM_EXAMPLES (fedmf's "num-examples"): users (stats), consenting users (adv)

# ------------------------------------------------------------------ state fields (private)
STATE_TARGETS = "raid-targets"  # (n_users, d) float32 OT targets of the current version
STATE_VERSION = "raid-version"  # 0-d int64: the version the targets belong to


# ------------------------------------------------------------------ broadcasts
def gaussian_broadcast(A: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """The Gaussian maps ``T_a(x) = x @ A[a].T + b[a]`` as config arrays."""
    return {A_MAPS: np.asarray(A, dtype=np.float64), B_MAPS: np.asarray(b, dtype=np.float64)}


def unpack_gaussian(
    config: Mapping[str, Any], num_groups: int, d: int
) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.asarray(config[A_MAPS], dtype=np.float64).reshape(num_groups, d, d),
        np.asarray(config[B_MAPS], dtype=np.float64).reshape(num_groups, d),
    )


def support_broadcast(X: np.ndarray) -> dict[str, np.ndarray]:
    """The free-support barycenter atoms ``X* (s, d)`` as a config array."""
    return {SUPPORT: np.asarray(X, dtype=np.float64)}


def unpack_support(config: Mapping[str, Any], d: int) -> np.ndarray:
    return np.asarray(config[SUPPORT], dtype=np.float64).reshape(-1, d)


def atoms_broadcast(
    X: np.ndarray, atom_client: np.ndarray, atom_disp: np.ndarray, stats_round: int
) -> dict[str, Any]:
    """free-support with ``support-targets = atoms``: the barycenter atoms, every uploaded
    atom's client and displacement (in each client's upload order) and the round whose
    quantisation they belong to."""
    return {
        **support_broadcast(X),
        ATOM_CLIENT: np.asarray(atom_client, dtype=np.int64),
        ATOM_DISP: np.asarray(atom_disp, dtype=np.float64),
        STATS_ROUND: int(stats_round),
    }


def unpack_atom_displacements(config: Mapping[str, Any], client: int, d: int) -> np.ndarray | None:
    """The displacements of ``client``'s atoms (its upload order), or ``None`` for the
    ``client-plans`` broadcast."""
    if ATOM_DISP not in config:
        return None
    owners = np.asarray(config[ATOM_CLIENT], dtype=np.int64)
    return np.asarray(config[ATOM_DISP], dtype=np.float64).reshape(-1, d)[owners == client]


def adversary_layout(d: int, hidden: int, num_groups: int) -> FlatLayout:
    """Flat layout of the adversary ``[W1 (h, d), b1 (h,), W2 (G, h), b2 (G,)]``."""
    return FlatLayout(classifier_shapes(d, num_groups, hidden))


def adversary_broadcast(phi: Sequence[np.ndarray], layout: FlatLayout) -> dict[str, np.ndarray]:
    """The adversary as one flat float32 config array (also the ``raid_adv`` weights)."""
    return {ADV_PARAMS: layout.pack(phi, np.float32)}


def unpack_adversary(flat: np.ndarray, layout: FlatLayout) -> list[np.ndarray]:
    """``[W1, b1, W2, b2]`` float32 from the flat vector."""
    return layout.unpack(np.asarray(flat, dtype=np.float32))


# ------------------------------------------------------------------ uploads
def pack_moments(counts: np.ndarray, sums: np.ndarray, outer: np.ndarray) -> list[np.ndarray]:
    """Gaussian stats upload: ``[counts (G,), sums (G, d), outer (G, d, d)]`` float64."""
    return [
        np.asarray(counts, dtype=np.float64),
        np.asarray(sums, dtype=np.float64),
        np.asarray(outer, dtype=np.float64),
    ]


def unpack_moments(
    arrays: Sequence[np.ndarray], num_groups: int, d: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts, sums, outer = arrays
    return (
        np.asarray(counts).reshape(num_groups),
        np.asarray(sums).reshape(num_groups, d),
        np.asarray(outer).reshape(num_groups, d, d),
    )


def pack_quantized(
    group_ids: np.ndarray, atoms: np.ndarray, masses: np.ndarray
) -> list[np.ndarray]:
    """Free-support stats upload: ``[atom group ids (m,) int64, atoms (m, d), masses (m,)]``."""
    return [
        np.asarray(group_ids, dtype=np.int64),
        np.asarray(atoms, dtype=np.float64),
        np.asarray(masses, dtype=np.float64),
    ]


def unpack_quantized(
    arrays: Sequence[np.ndarray], d: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gid, X, w = arrays
    return np.asarray(gid, dtype=np.int64), np.asarray(X).reshape(-1, d), np.asarray(w)


def pack_adv_grads(grads: Sequence[np.ndarray], layout: FlatLayout) -> list[np.ndarray]:
    """Adversary upload: the CE gradient sums as one flat float64 vector."""
    return [layout.pack(grads, np.float64)]


def unpack_adv_grads(arrays: Sequence[np.ndarray], layout: FlatLayout) -> list[np.ndarray]:
    return layout.unpack(np.asarray(arrays[0]))

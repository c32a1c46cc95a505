"""Deterministic seeds derived from (run seed, round, client, purpose).

Every random draw in fedrec (client sampling, partitioning, local shuffling, model
initialisation) takes its seed from :func:`derive_seed`, never from global state,
so a run's results do not depend on which process, node or actor executes a client
or in which order replies arrive.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _as_int(part: int | str) -> int:
    if isinstance(part, (int, np.integer)):
        if part < 0:
            raise ValueError(f"seed parts must be non-negative, got {part}")
        return int(part)
    digest = hashlib.sha256(str(part).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any sequence of non-negative ints and strings.

    >>> derive_seed(0, "train", 3, 7) == derive_seed(0, "train", 3, 7)
    True
    """
    state = np.random.SeedSequence([_as_int(p) for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def rng(*parts: int | str) -> np.random.Generator:
    """A numpy Generator seeded by :func:`derive_seed` of ``parts``."""
    return np.random.default_rng(derive_seed(*parts))


def sample_clients(
    client_ids: list[int], fraction: float, seed: int, server_round: int, purpose: str = "train"
) -> list[int]:
    """Seeded sample of ``max(1, round(fraction * n))`` client ids, sorted."""
    ids = sorted(client_ids)
    if fraction >= 1.0 or not ids:
        return ids
    k = max(1, int(round(fraction * len(ids))))
    chosen = rng(seed, "sample", purpose, server_round).choice(len(ids), size=k, replace=False)
    return sorted(ids[i] for i in chosen)

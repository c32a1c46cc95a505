"""Evaluation messages shared by the per-user recommenders (full-ranking evaluation).

The server sends :data:`POPULAR` (the ids of the popular items, an int64 array) with the
``evaluate`` message; each client replies, for its users with a test item, per-user
metric values (``pu.<metric>``, one value per user, ``NAN_CODE`` where undefined), the
users' ids and their top-``max(K_LIST)`` item lists.
"""

from __future__ import annotations

import numpy as np

K_LIST = (10, 20)
TOPK_LEN = max(K_LIST)

# handshake metric keys (client -> server)
NUM_USERS = "num-users"
NUM_ITEMS = "num-items"
NUM_TRAIN = "num-train"  # training interactions
NUM_TEST = "num-test"  # users with a test item

# config keys (server -> client)
POPULAR = "popular"
# optional evaluate config: the post-hoc exposure re-ranking baseline (:func:`pack_rerank`)
ITEM_GROUP = "item-group"  # (n_items,) int64 group label of every item
TARGET = "target-shares"  # (G,) the group shares the re-ranked lists move toward
RERANK = "rerank-lambda"  # its strength; absent or 0 = no re-ranking
# optional evaluate config of attack runs: the target items whose exposure is measured
TARGET_ITEMS = "target-items"  # (T,) int64 0-based item ids
TARGET_SEED = "target-seed"  # int: seeds each user's sampled negatives (derive_seed(seed, u))
TARGET_NEGATIVES = 100  # sampled negatives per user (the paper's protocol)
# metric keys (client -> server)
USERS = "users"
TOPK = "topk"
NUM_EXAMPLES = "num-examples"
PER_USER = "pu."  # prefix of per-user metric values
NAN_CODE = -1.0  # an undefined per-user value (e.g. recall of a user without a test item)


def pack_per_user(values: np.ndarray) -> np.ndarray:
    """Per-user metric values as sent (NaN -> :data:`NAN_CODE`, float64)."""
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=NAN_CODE)


def unpack_per_user(values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_per_user` (every valid value is >= 0)."""
    v = np.asarray(values, dtype=np.float64)
    return np.where(v < 0, np.nan, v)


def pack_rerank(item_group: np.ndarray, target: np.ndarray, lam: float) -> dict:
    """Evaluate config of the re-ranking baseline (:func:`fedrec.clients.ranking.rerank`)."""
    return {
        ITEM_GROUP: np.asarray(item_group, dtype=np.int64),
        TARGET: np.asarray(target, dtype=np.float64),
        RERANK: float(lam),
    }

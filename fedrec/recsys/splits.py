"""Train/valid/test splits of implicit-feedback data and uniform negative sampling.

Pure numpy (no torch, no Flower). Every function takes a :class:`~fedrec.data.recsys.RecDataset`
(0-based ``user``/``item`` ids, ``timestamp``) and returns a :class:`UserData`: per user, the
training items (sorted, unique), the training sequence (time order), and the validation and test
items. Per-user lists are stored as :class:`Ragged` arrays (CSR-style ``indptr``/``indices``), so a
whole dataset is four flat int64 arrays and user ``u``'s list is the slice
``indices[indptr[u]:indptr[u + 1]]``. All construction is vectorised (sorts, ``bincount``,
``cumsum``); nothing loops over interactions in Python.

Choices (all deliberate, all tested):

* **Interaction order** (``by="time"``): by ``timestamp``, ties (ML-100K has many identical
  timestamps per user) broken by **item id** ascending. ``by="order"`` uses the row order of the
  dataset instead. ``by="random"`` orders each user's interactions by a seeded random
  permutation (``numpy.random.default_rng(seed)`` over all rows): the usual random
  leave-one-out for data without timestamps, e.g. LastFM, whose row order (sorted by
  artist id) would otherwise make the held-out item the user's highest artist id.
* **Repeated (user, item) pairs** are collapsed to their first occurrence in that order before
  splitting (``dedupe=True``, the default), so a test item is never also a training item, and
  masking training items at evaluation can never hide a test item. ML-100K, LastFM and
  ``synthetic-rec`` have no repeats, so this is a no-op there. ``dedupe=False`` keeps repeats in
  ``train_seq``; ``train`` is always a set (sorted, unique).
* **Leave-one-out** (:func:`leave_one_out`): per user, the last interaction is the test item and the
  second last the validation item; the rest is training data. Users with fewer than 3
  interactions keep **all** of them in training and have empty valid/test lists (so they are
  skipped by ranking metrics, which ignore users without relevant items). Users without any
  interaction have empty lists everywhere.
* **Random ratio split** (:func:`ratio_split`): per user with ``n >= 2`` interactions,
  ``n_test = min(n - 1, max(1, floor(test_fraction * n + 0.5)))`` interactions drawn uniformly at
  random go to test (and likewise ``n_valid`` from the rest when ``valid_fraction > 0``, keeping
  at least one training item; ``n_valid = 0`` when ``valid_fraction == 0``). Users with one
  interaction keep it in training. One ``np.random.default_rng(seed)`` draws one uniform key per
  interaction; an interaction's rank among its user's keys decides its side, so the split is a
  uniformly random subset of the required size per user and reproduces for the same seed.
* **Negatives** (:func:`sample_negatives`): uniform over the items *not* in ``positives``, drawn
  **with replacement** (independent draws, as in BPR and SASRec training), computed exactly
  without rejection: draw ``r`` uniform in ``[0, num_items - |positives|)`` and map it to the
  ``r``-th non-positive item through a ``searchsorted`` on ``positives[k] - k``.
  ``replace=False`` draws distinct negatives. In federated code the caller derives the seed per
  (round, user), e.g. ``derive_seed(run_seed, "neg", round, user)``; the centralised trainers use
  the batched :func:`sample_negatives_rows` with one generator per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.data.recsys import RecDataset
from fedrec.errors import ConfigError

__all__ = [
    "Ragged",
    "UserData",
    "leave_one_out",
    "ratio_split",
    "sample_negatives",
    "sample_negatives_rows",
]

SPLIT_ORDERS = ("time", "order", "random")


@dataclass(frozen=True)
class Ragged:
    """Per-row variable-length int64 lists in CSR layout.

    Row ``u`` is ``indices[indptr[u]:indptr[u+1]]``.
    """

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_rows(cls, rows: np.ndarray, values: np.ndarray, num_rows: int) -> Ragged:
        """Build from ``rows`` (sorted ascending) and the matching ``values``."""
        counts = (
            np.bincount(rows, minlength=num_rows) if rows.size else np.zeros(num_rows, np.int64)
        )
        indptr = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, np.asarray(values, dtype=np.int64))

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]]) -> Ragged:
        arrays = [np.asarray(x, dtype=np.int64).reshape(-1) for x in lists]
        indptr = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([a.size for a in arrays], out=indptr[1:])
        values = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        return cls(indptr, values.astype(np.int64))

    def __len__(self) -> int:
        return int(self.indptr.size - 1)

    def __getitem__(self, u: int | np.integer) -> np.ndarray:
        return self.indices[self.indptr[u] : self.indptr[u + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def rows(self) -> np.ndarray:
        """Row index of every entry of ``indices``."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def to_lists(self) -> list[np.ndarray]:
        return [self[u] for u in range(len(self))]

    def to_csr(self, num_cols: int):
        """A ``scipy.sparse.csr_array`` of ones (duplicates summed)."""
        from scipy import sparse

        data = np.ones(self.indices.size, dtype=np.float64)
        m = sparse.csr_array((data, self.indices, self.indptr), shape=(len(self), num_cols))
        m.sum_duplicates()
        return m

    def last(self, max_len: int | None = None) -> list[np.ndarray]:
        """Each row's last ``max_len`` entries (all when ``None``)."""
        if max_len is None:
            return self.to_lists()
        return [self[u][-max_len:] if max_len > 0 else self[u][:0] for u in range(len(self))]


@dataclass(frozen=True)
class UserData:
    """A split of one dataset, per user (0-based ids; see the module docstring for the rules).

    * ``train``: training items, sorted ascending and unique (the positives for negative sampling
      and the items masked at evaluation);
    * ``train_seq``: training interactions in time order (the input of sequential models);
    * ``valid`` / ``test``: held-out items (one each per user for leave-one-out, in time order).
    """

    num_users: int
    num_items: int
    train: Ragged
    train_seq: Ragged
    valid: Ragged
    test: Ragged

    def item_counts(self) -> np.ndarray:
        """Training interactions per item (the popularity used by item-fairness metrics)."""
        return np.bincount(self.train.indices, minlength=self.num_items).astype(np.int64)

    def history(self, split: str = "test") -> Ragged:
        """Items a user has seen before ``split``.

        ``train`` for valid, ``train`` ∪ ``valid`` for test.
        """
        if split == "valid":
            return self.train
        if split != "test":
            raise ConfigError(f"split must be one of: valid, test (got {split!r})")
        return _union(self.train, self.valid, self.num_items)

    def sequences(self, split: str = "test") -> Ragged:
        """Input sequences for predicting ``split``.

        ``train_seq`` (valid) or ``train_seq`` + ``valid`` (test).
        """
        if split == "valid":
            return self.train_seq
        if split != "test":
            raise ConfigError(f"split must be one of: valid, test (got {split!r})")
        return _concat(self.train_seq, self.valid)

    def targets(self, split: str = "test") -> Ragged:
        if split not in ("valid", "test"):
            raise ConfigError(f"split must be one of: valid, test (got {split!r})")
        return self.valid if split == "valid" else self.test


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """``np.unique`` of int keys by sorting (numpy 2's hash-based ``unique`` is far slower here)."""
    k = np.sort(keys)
    return k[np.concatenate([[True], k[1:] != k[:-1]])] if k.size else k


def _union(a: Ragged, b: Ragged, num_items: int) -> Ragged:
    rows = np.concatenate([a.rows, b.rows])
    keys = _sorted_unique(rows * num_items + np.concatenate([a.indices, b.indices]))
    return Ragged.from_rows(keys // num_items, keys % num_items, len(a))


def _concat(a: Ragged, b: Ragged) -> Ragged:
    rows = np.concatenate([a.rows, b.rows])
    pos = np.concatenate([np.zeros(a.indices.size, np.int64), np.ones(b.indices.size, np.int64)])
    order = np.lexsort((pos, rows))  # stable: a's entries then b's, per row
    return Ragged.from_rows(rows[order], np.concatenate([a.indices, b.indices])[order], len(a))


def _ordered(ds: RecDataset, by: str, dedupe: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) of all interactions sorted by user, then time (ties: item id)."""
    if by not in SPLIT_ORDERS:
        raise ConfigError(f"by must be one of: {', '.join(SPLIT_ORDERS)} (got {by!r})")
    user = np.asarray(ds.user, dtype=np.int64)
    item = np.asarray(ds.item, dtype=np.int64)
    if by == "time":
        order = np.lexsort((item, np.asarray(ds.timestamp), user))
    elif by == "random":
        order = np.lexsort((np.random.default_rng(seed).permutation(user.size), user))
    else:
        order = np.argsort(user, kind="stable")
    user, item = user[order], item[order]
    if dedupe and user.size:
        key = user * ds.num_items + item
        o = np.argsort(key, kind="stable")  # equal keys keep their (time) order
        ko = key[o]
        keep = np.zeros(user.size, dtype=bool)
        keep[o[np.concatenate([[True], ko[1:] != ko[:-1]])]] = True  # first occurrence of each pair
        user, item = user[keep], item[keep]
    return user, item


def _assemble(ds: RecDataset, user: np.ndarray, item: np.ndarray, side: np.ndarray) -> UserData:
    """side: 0 train, 1 valid, 2 test for each (user-sorted, time-ordered) row."""
    n_users, n_items = ds.num_users, ds.num_items
    parts = {}
    for code, name in ((0, "seq"), (1, "valid"), (2, "test")):
        m = side == code
        parts[name] = Ragged.from_rows(user[m], item[m], n_users)
    tr = side == 0
    keys = _sorted_unique(user[tr] * n_items + item[tr])
    train = Ragged.from_rows(keys // n_items, keys % n_items, n_users)
    return UserData(n_users, n_items, train, parts["seq"], parts["valid"], parts["test"])


def leave_one_out(
    ds: RecDataset, by: str = "time", *, dedupe: bool = True, seed: int = 0
) -> UserData:
    """Last interaction -> test, second last -> valid, the rest -> train.

    Users with fewer than 3 interactions: all train. ``seed``: the shuffle of
    ``by="random"``.
    """
    user, item = _ordered(ds, by, dedupe, seed)
    counts = np.bincount(user, minlength=ds.num_users)
    end = np.cumsum(counts)  # one past each user's last row
    side = np.zeros(user.size, dtype=np.int64)
    ok = counts >= 3
    side[end[ok] - 1] = 2
    side[end[ok] - 2] = 1
    return _assemble(ds, user, item, side)


def ratio_split(
    ds: RecDataset,
    test_fraction: float,
    seed: int,
    *,
    valid_fraction: float = 0.0,
    by: str = "time",
    dedupe: bool = True,
) -> UserData:
    """Per user, a uniform random ``test_fraction`` (and ``valid_fraction``) of its interactions."""
    for name, v, lo_ok in (
        ("test_fraction", test_fraction, False),
        ("valid_fraction", valid_fraction, True),
    ):
        if not (isinstance(v, (int, float)) and (0.0 <= v < 1.0 if lo_ok else 0.0 < v < 1.0)):
            rng_txt = "[0, 1)" if lo_ok else "(0, 1)"
            raise ConfigError(f"{name} must be a number in {rng_txt} (got {v!r})")
    if test_fraction + valid_fraction >= 1.0:
        raise ConfigError(
            f"test_fraction + valid_fraction must be < 1 (got {test_fraction + valid_fraction})"
        )
    user, item = _ordered(ds, by, dedupe)
    counts = np.bincount(user, minlength=ds.num_users)
    rng = np.random.default_rng(seed)
    keys = rng.random(user.size)
    # rank of each interaction among its user's random keys (0-based)
    order = np.lexsort((keys, user))
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(user.size, dtype=np.int64)
    rank[order] = np.arange(user.size) - start[user[order]]
    n_test = np.where(
        counts >= 2,
        np.minimum(counts - 1, np.maximum(1, np.floor(test_fraction * counts + 0.5))),
        0,
    )
    n_test = n_test.astype(np.int64)
    n_valid = np.zeros_like(n_test)
    if valid_fraction > 0:
        room = counts - n_test - 1
        n_valid = np.where(
            room >= 1, np.minimum(room, np.maximum(1, np.floor(valid_fraction * counts + 0.5))), 0
        )
        n_valid = n_valid.astype(np.int64)
    side = np.zeros(user.size, dtype=np.int64)
    side[rank < n_test[user]] = 2
    side[(rank >= n_test[user]) & (rank < n_test[user] + n_valid[user])] = 1
    return _assemble(ds, user, item, side)


def _check_positives(num_items: int, positives: np.ndarray) -> np.ndarray:
    pos = np.asarray(positives, dtype=np.int64).reshape(-1)
    if pos.size and (pos[0] < 0 or pos[-1] >= num_items or np.any(np.diff(pos) <= 0)):
        raise ConfigError(
            f"positives must be sorted unique item ids in [0, {num_items}) (got {pos[:10]}...)"
        )
    return pos


def sample_negatives(
    num_items: int,
    positives: np.ndarray,
    n: int,
    seed: int | np.random.Generator,
    *,
    replace: bool = True,
) -> np.ndarray:
    """``n`` items drawn uniformly from ``[0, num_items)`` minus ``positives`` (sorted, unique)."""
    if int(num_items) < 1:
        raise ConfigError(f"num_items must be >= 1 (got {num_items})")
    if int(n) < 0:
        raise ConfigError(f"n must be >= 0 (got {n})")
    pos = _check_positives(num_items, positives)
    m = num_items - pos.size
    if n > 0 and (m == 0 or (not replace and n > m)):
        raise ConfigError(
            f"n={n} negatives requested but only {m} non-positive items exist (replace={replace})"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    r = rng.integers(0, m, size=n) if replace else rng.choice(m, size=n, replace=False)
    # the r-th non-positive item is r + #{k : positives[k] - k <= r}
    return (r + np.searchsorted(pos - np.arange(pos.size), r, side="right")).astype(np.int64)


def sample_negatives_rows(
    num_items: int, positives: Ragged, users: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One uniform negative per entry of ``users``, excluding that user's ``positives`` row.

    Vectorised form of :func:`sample_negatives` over many (user, draw) rows with one generator:
    same exact mapping, with the per-user ``positives[k] - k`` lists laid out as one sorted key
    array.
    """
    users = np.asarray(users, dtype=np.int64)
    lengths = positives.lengths
    m = num_items - lengths[users]
    if np.any(m <= 0):
        bad = int(users[np.argmax(m <= 0)])
        raise ConfigError(f"user {bad} has every item as a positive; no negative can be sampled")
    r = rng.integers(0, m).astype(np.int64) if users.size else np.zeros(0, np.int64)
    rows = positives.rows
    within = np.arange(positives.indices.size) - positives.indptr[rows]
    adj = rows * num_items + (
        positives.indices - within
    )  # sorted: rows ascend, p_k - k non-decreasing
    cnt = np.searchsorted(adj, users * num_items + r, side="right") - positives.indptr[users]
    return (r + cnt).astype(np.int64)

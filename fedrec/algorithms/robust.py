r"""Byzantine-robust aggregation of row-sparse client updates (pure numpy; no flwr import).

**Setting.** In a federated recommender client ``c`` uploads the ids of the item-embedding
rows it touched, those rows' update vectors :math:`u_{c,r} \in \mathbb{R}^d` (its other
rows have an exactly zero update), a dense update :math:`v_c \in \mathbb{R}^p` of every
other parameter (``p`` may be 0) and its example count :math:`n_c`
(:class:`RowUpdates`). FedAvg forms, with :math:`N = \sum_c n_c`,

.. math::
    \Delta_r = \frac{1}{N} \sum_{c \ni r} n_c u_{c,r}, \qquad
    \Delta_{\mathrm{dense}} = \frac{1}{N} \sum_c n_c v_c .

**Row-wise semantics.** A dense robust rule applied to the zero-filled updates would let
the clients that did *not* touch a row vote "zero" on it: with 5 % row coverage every
row's median is 0 and every row is frozen. Here only the ``V_r`` clients that touched row
``r`` (its *voters*) vote on it; the dense part is one more "row" on which every client
votes. With ``beta`` the assumed malicious fraction in ``[0, 0.5)``, a row with ``V``
voters assumes ``f = int(beta * V)`` malicious voters (the float product truncated, as
Flower's ``_trim_mean`` does). The rules (Flower 1.42's ``flwr.server.strategy.aggregate``
applied row by row):

- :func:`rowwise_mean` -- the example-weighted mean of the voters; with
  :func:`fedavg_scale` it *is* FedAvg.
- :func:`rowwise_median` -- the coordinate-wise median of the voters, unweighted like
  ``aggregate_median`` (Yin et al. 2018).
- :func:`rowwise_trimmed_mean` -- per coordinate, drop the ``int(beta * V)`` smallest and
  largest values and average the rest, unweighted (``aggregate_trimmed_avg`` /
  ``_trim_mean``; Yin et al. 2018).
- :func:`rowwise_krum` -- Krum (Blanchard et al. 2017): the voter whose summed squared
  distance to its ``max(1, V - f - 2)`` nearest co-voters is smallest; with
  ``keep_frac > 0`` MultiKrum: the example-weighted mean of the ``ceil(keep_frac * V)``
  (clamped to ``[1, V]``) best-scored voters (``aggregate_krum``).
- :func:`rowwise_bulyan` -- Bulyan (El Mhamdi et al. 2018) with Krum: ``theta = V - 2f``
  voters selected one by one by Krum on the shrinking set (``f`` fixed), then per
  coordinate the mean of the ``theta - 2f`` selected values closest to their
  coordinate-wise median (``aggregate_bulyan`` + ``_aggregate_n_closest_weights``).

**Distances.** Krum and Bulyan need client-to-client squared distances. They are computed
once, over the coordinates *both* clients uploaded (the rows they share, plus the dense
part): with ``U`` the zero-filled row updates, ``M`` the ``(n, R)`` touch mask and ``S`` the
per-row squared norms :math:`S_{c,r} = \|u_{c,r}\|^2`,

.. math::
    D = S M^\top + M S^\top - 2\, U U^\top + D_{\mathrm{dense}},

(:func:`pairwise_sq_distances`; ``U U^T`` is accumulated row by row over the voters only,
so the cost is :math:`\sum_r V_r^2 d`, not :math:`n^2 R d`). Every row then runs Krum on
its voters' sub-matrix ``D[voters][:, voters]``; rows with the same voter set share one
selection. Krum is computed exactly as Flower does (per voter, the sorted distances
without the first, i.e. itself, summed over ``num_closest``; ``argmin``); score ties go to
the lowest client index (Flower's ``argmin`` / a stable sort for MultiKrum).

**Dense equivalence.** When every client touches every row, every row (and the dense part)
has the same voters, ``S M^T + M S^T - 2 U U^T`` is the full squared distance, and each
row-wise rule returns exactly Flower's dense rule on the zero-filled concatenated updates
``[rows_c (R, d), dense_c (p,)]`` (tested to ``1e-10``: Krum / MultiKrum with
``num_malicious = int(beta * n)``, ``to_keep = 0`` / ``ceil(keep_frac * n)``, Bulyan with
Krum, median, trimmed mean with ``proportiontocut = beta``).

**FedAvg scale.** A rule returns, per row, a robust estimate of the *voters'* update
(:class:`RobustResult`). FedAvg's row delta is diluted by the clients that did not touch
the row (they count in ``N`` with a zero update): :math:`\Delta_r = s_r \cdot
\bar u_r` with :math:`\bar u_r` the voters' weighted mean and :math:`s_r = \sum_{c \ni r}
n_c / N` their example share. :func:`fedavg_scale` multiplies by ``s_r`` so that a robust
rule is a drop-in replacement for FedAvg's step size (``fedavg_scale(rowwise_mean(u))`` is
FedAvg to rounding).

**Fallbacks and edge cases.**

- A row without voters stays exactly zero (``touched`` is False, ``voter_share`` 0).
- Bulyan needs ``V >= 4 f + 3``; a row (or the dense part) that violates it falls back to
  the coordinate-wise median of its voters, counted in ``info["fallback_rows"]`` /
  ``info["fallback_dense"]``. With ``f = 0`` Bulyan selects every voter and averages
  all of them (unweighted); ``V = 1, 2`` with ``f = 0`` fall back (the median of one or
  two values is their mean, the same number).
- Krum with ``V <= 2`` cannot tell voters apart (equal scores): the lowest client index
  wins.
- ``p == 0``: the dense part is empty and not aggregated.

**Clipping** (:func:`clip_updates`): each client's whole update (rows and dense) is scaled
by :math:`\min(1, C / \|u_c\|)`; :func:`adaptive_clip_norm` picks ``C`` as a quantile of
this round's norms.

**Anomaly scores** (:func:`anomaly_components`, :func:`anomaly_scores`): three robust
z-scores (median / MAD, see :func:`anomaly_components`) -- of the total update norm, of
each row-update norm among that row's voters (max over the client's rows), and of the
cosine distance of the dense update to the coordinate-wise median dense update -- combined
as their maximum (and at least 0): a client is as anomalous as its most anomalous part.

References
----------
.. [1] Blanchard, P., El Mhamdi, E. M., Guerraoui, R. and Stainer, J. "Machine Learning
    with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017 (Krum, MultiKrum).
.. [2] El Mhamdi, E. M., Guerraoui, R. and Rouault, S. "The Hidden Vulnerability of
    Distributed Learning in Byzantium", ICML 2018 (Bulyan).
.. [3] Yin, D., Chen, Y., Ramchandran, K. and Bartlett, P. "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML 2018 (coordinate-wise median and
    trimmed mean).
.. [4] Iglewicz, B. and Hoaglin, D. C. "How to Detect and Handle Outliers", ASQC 1993
    (the MAD-based modified z-score and its 3.5 threshold).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from fedrec.errors import ConfigError

__all__ = [
    "AnomalyComponents",
    "RobustResult",
    "RowUpdates",
    "adaptive_clip_norm",
    "anomaly_components",
    "anomaly_scores",
    "clip_updates",
    "fedavg_scale",
    "flag_anomalies",
    "pairwise_sq_distances",
    "rowwise_bulyan",
    "rowwise_krum",
    "rowwise_mean",
    "rowwise_median",
    "rowwise_trimmed_mean",
    "update_norms",
]

MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^{-1}(3/4): MAD -> std for a normal sample
MEANAD_TO_SIGMA = 1.2533141373155003  # sqrt(pi / 2): mean absolute deviation -> std
NORM_SCALE_FLOOR = 1e-6  # norm z-scores: scale >= 1e-6 * |median norm|
COSINE_SCALE_FLOOR = 1e-3  # cosine-distance z-scores: scale >= 1e-3 (a bounded quantity)
_CHUNK = 1 << 22  # at most this many float64 per gathered (rows, voters, d) block


# ------------------------------------------------------------------ validation helpers
def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_beta(beta: Any) -> float:
    return _check_number("beta (the assumed malicious fraction)", beta, 0.0, 0.5, hi_open=True)


def _check_number(name: str, value: Any, lo: float, hi: float, hi_open: bool = False) -> float:
    """A real number in ``[lo, hi]`` (``[lo, hi)`` if ``hi_open``), as a float."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        x = float(value)
        ok = lo <= x < hi if hi_open else lo <= x <= hi
    if not ok:
        interval = f"[{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def _float_array(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a numeric array, got {type(value).__name__}") from exc
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must be finite (no NaN or inf)")
    return arr


# ------------------------------------------------------------------ the uploads
@dataclass(frozen=True)
class _Layout:
    """Every (client, row) upload as one entry, sorted by (row, client)."""

    client: np.ndarray  # (K,) int64
    row: np.ndarray  # (K,) int64
    values: np.ndarray  # (K, d) float64
    start: np.ndarray  # (R + 1,) int64: row r's entries are start[r]:start[r + 1]
    count: np.ndarray  # (R,) int64: V_r, the number of voters of row r


@dataclass(frozen=True, eq=False)
class RowUpdates:
    """One round's row-sparse client updates (validated and normalised on construction).

    Attributes
    ----------
    ids : list of ndarray (k_c,), int64
        Per client, the 0-based ids of the rows it touched, sorted and unique (unsorted ids
        are sorted on construction, their rows permuted alongside).
    rows : list of ndarray (k_c, d), float64
        The matching row updates.
    dense : ndarray (n, p), float64
        Every client's update of the other parameters (``p`` may be 0).
    weights : ndarray (n,), float64
        Example counts ``n_c > 0``.
    num_rows : int
        ``R``, the number of rows of the embedding table.
    d : int
        The row width.
    """

    ids: list[np.ndarray]
    rows: list[np.ndarray]
    dense: np.ndarray
    weights: np.ndarray
    num_rows: int
    d: int

    def __post_init__(self) -> None:
        if not _is_int(self.num_rows) or self.num_rows < 0:
            raise ConfigError(f"num_rows must be an integer >= 0, got {self.num_rows!r}")
        if not _is_int(self.d) or self.d < 1:
            raise ConfigError(f"d must be an integer >= 1, got {self.d!r}")
        R, d = int(self.num_rows), int(self.d)
        ids_in, rows_in = list(self.ids), list(self.rows)
        n = len(ids_in)
        if n < 1:
            raise ConfigError("RowUpdates needs at least one client")
        if len(rows_in) != n:
            raise ConfigError(f"ids has {n} clients but rows has {len(rows_in)}")
        w = _float_array("weights", self.weights)
        if w.shape != (n,):
            raise ConfigError(f"weights must have shape ({n},) (one per client), got {w.shape}")
        bad = np.flatnonzero(w <= 0)
        if bad.size:
            raise ConfigError(f"weights must be > 0; client {int(bad[0])} has {w[bad[0]]!r}")
        dense = _float_array("dense", self.dense)
        if dense.ndim != 2 or dense.shape[0] != n:
            raise ConfigError(f"dense must have shape ({n}, p), got {dense.shape}")
        ids_out: list[np.ndarray] = []
        rows_out: list[np.ndarray] = []
        for c, (i_c, r_c) in enumerate(zip(ids_in, rows_in)):
            i_arr = np.asarray(i_c)
            if i_arr.ndim != 1:
                raise ConfigError(f"client {c}: ids must be 1-D, got shape {i_arr.shape}")
            if i_arr.size and not np.issubdtype(i_arr.dtype, np.integer):
                raise ConfigError(f"client {c}: ids must be integers, got dtype {i_arr.dtype}")
            i_arr = i_arr.astype(np.int64)
            try:
                r_arr = np.asarray(r_c, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"client {c}: rows must be a numeric array") from exc
            if r_arr.size == 0:
                r_arr = r_arr.reshape(0, d)
            if r_arr.ndim != 2 or r_arr.shape[1] != d:
                raise ConfigError(f"client {c}: rows must have shape (k, {d}), got {r_arr.shape}")
            if r_arr.shape[0] != i_arr.shape[0]:
                raise ConfigError(
                    f"client {c}: {i_arr.shape[0]} ids but {r_arr.shape[0]} row updates"
                )
            if not np.all(np.isfinite(r_arr)):
                raise ConfigError(f"client {c}: rows must be finite (no NaN or inf)")
            out = i_arr[(i_arr < 0) | (i_arr >= R)]
            if out.size:
                raise ConfigError(f"client {c}: row id {int(out[0])} out of range [0, {R})")
            order = np.argsort(i_arr, kind="stable")
            i_arr, r_arr = i_arr[order], r_arr[order]
            dup = np.flatnonzero(np.diff(i_arr) == 0)
            if dup.size:
                raise ConfigError(f"client {c}: duplicate row id {int(i_arr[dup[0]])}")
            ids_out.append(i_arr)
            rows_out.append(np.ascontiguousarray(r_arr))
        object.__setattr__(self, "ids", ids_out)
        object.__setattr__(self, "rows", rows_out)
        object.__setattr__(self, "dense", dense)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "num_rows", R)
        object.__setattr__(self, "d", d)

    @classmethod
    def from_lists(
        cls,
        ids: Sequence[Any],
        rows: Sequence[Any],
        num_rows: int,
        *,
        dense: Any = None,
        weights: Any = None,
        d: int | None = None,
    ) -> RowUpdates:
        """Build (and validate) from per-client lists.

        Parameters
        ----------
        ids, rows : sequences of length n
            Per client, the touched row ids ``(k_c,)`` and their updates ``(k_c, d)``.
        num_rows : int
            ``R``.
        dense : array-like (n, p) or sequence of (p,), optional
            The dense updates; ``None`` means ``p = 0``.
        weights : array-like (n,), optional
            Example counts (default: all 1).
        d : int, optional
            The row width; inferred from the first non-empty ``rows`` if omitted.

        Raises
        ------
        ConfigError (a ValueError)
            Naming the culprit: mismatched lengths, ids out of ``[0, R)``, duplicate ids,
            non-finite values, non-positive weights.
        """
        n = len(ids)
        if d is None:
            for c, r_c in enumerate(rows):
                shape = np.shape(r_c)
                if len(shape) == 2 and shape[0] > 0:
                    d = int(shape[1])
                    break
                if len(shape) != 2 and np.size(r_c):
                    raise ConfigError(f"client {c}: rows must be 2-D (k, d), got shape {shape}")
            if d is None:
                raise ConfigError("every client's rows are empty: pass d explicitly")
        if dense is None:
            dense_arr = np.zeros((n, 0))
        elif isinstance(dense, np.ndarray):
            dense_arr = dense
        else:
            dense_list = list(dense)
            if len(dense_list) != n:
                raise ConfigError(f"ids has {n} clients but dense has {len(dense_list)}")
            shapes = {np.shape(v) for v in dense_list}
            if len(shapes) > 1:
                raise ConfigError(f"dense updates of different shapes: {sorted(shapes)}")
            dense_arr = np.asarray(dense_list, dtype=np.float64).reshape(n, -1)
        w = np.ones(n) if weights is None else weights
        return cls(list(ids), list(rows), dense_arr, w, num_rows, d)

    @property
    def n(self) -> int:
        """The number of clients."""
        return len(self.ids)

    @property
    def p(self) -> int:
        """The size of the dense part."""
        return int(self.dense.shape[1])

    @cached_property
    def _layout(self) -> _Layout:
        n, R, d = self.n, self.num_rows, self.d
        sizes = np.array([len(i) for i in self.ids], dtype=np.int64)
        client = np.repeat(np.arange(n, dtype=np.int64), sizes)
        row = np.concatenate([*self.ids, np.zeros(0, np.int64)])
        values = np.concatenate([*self.rows, np.zeros((0, d))], axis=0)
        order = np.argsort(row, kind="stable")  # clients stay ascending within a row
        count = np.bincount(row, minlength=R).astype(np.int64)
        start = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
        return _Layout(client[order], row[order], values[order], start, count)

    def touch_mask(self) -> np.ndarray:
        """The ``(n, R)`` bool touch mask ``M``."""
        mask = np.zeros((self.n, self.num_rows), dtype=bool)
        lay = self._layout
        mask[lay.client, lay.row] = True
        return mask

    def to_dense(self) -> tuple[np.ndarray, np.ndarray]:
        """The zero-filled updates and the touch mask.

        Returns
        -------
        updates : ndarray (n, R * d + p), float64
            Client ``c``'s row ``r`` at ``[r * d:(r + 1) * d]`` (zeros if untouched), then
            its dense update: the flattening of Flower's ``[rows (R, d), dense (p,)]``.
        mask : ndarray (n, R), bool
        """
        n, R, d = self.n, self.num_rows, self.d
        table = np.zeros((n, R, d))
        lay = self._layout
        table[lay.client, lay.row] = lay.values
        return np.concatenate([table.reshape(n, R * d), self.dense], axis=1), self.touch_mask()


# ------------------------------------------------------------------ results
@dataclass(frozen=True, eq=False)
class RobustResult:
    """A row-wise rule's output.

    Attributes
    ----------
    rows : ndarray (R, d)
        Per row, the robust estimate of its voters' update (zero for rows without voters).
    touched : ndarray (R,), bool
        Whether the row had at least one voter.
    dense : ndarray (p,)
        The robust estimate of the dense update (every client votes).
    voter_share : ndarray (R,)
        ``sum of the voters' n_c / N`` (0 for untouched rows).
    info : dict
        Rule-specific diagnostics; always ``"rule"`` and ``"num_voters"`` ``(R,)``.
    """

    rows: np.ndarray
    touched: np.ndarray
    dense: np.ndarray
    voter_share: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def dense_only(cls, dense: np.ndarray, n: int) -> RobustResult:
        """The result of a rule on full-model updates (no item rows): only ``dense``."""
        return cls(
            rows=np.zeros((0, 0)),
            touched=np.zeros(0, dtype=bool),
            dense=np.asarray(dense, dtype=np.float64),
            voter_share=np.zeros(0),
            info={"rule": "dense", "num_voters": np.zeros(0, dtype=np.int64), "n": int(n)},
        )


def fedavg_scale(result: RobustResult) -> tuple[np.ndarray, np.ndarray]:
    r"""Put a row-wise estimate on FedAvg's scale.

    FedAvg's row delta :math:`\frac{1}{N}\sum_{c \ni r} n_c u_{c,r}` is the voters' weighted
    mean diluted by the clients that did not touch the row (they count in ``N`` with a zero
    update): it equals ``voter_share[r] * mean_r``. Multiplying the robust estimate of the
    voters' update by ``voter_share`` keeps the per-row step size FedAvg would have taken;
    the dense part is voted on by every client (share 1) and is returned as is.

    Returns
    -------
    row_delta : ndarray (R, d)
        ``result.rows * result.voter_share[:, None]``.
    dense : ndarray (p,)
    """
    return result.rows * result.voter_share[:, None], result.dense.copy()


# ------------------------------------------------------------------ shared machinery
def _chunks(rows: np.ndarray, per_row: int) -> Iterator[np.ndarray]:
    step = max(1, _CHUNK // max(1, per_row))
    for a in range(0, len(rows), step):
        yield rows[a : a + step]


def _groups(
    lay: _Layout, per_row: Callable[[int], int]
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Rows with the same voter count ``V``: ``(V, rows (m,), entry index (m, V))``, in
    chunks of at most ``_CHUNK / per_row(V)`` rows (``per_row``: floats needed per row)."""
    for V in np.unique(lay.count[lay.count > 0]).tolist():
        rows_v = np.flatnonzero(lay.count == V)
        for rows in _chunks(rows_v, per_row(V)):
            yield V, rows, lay.start[rows][:, None] + np.arange(V)


def _voter_sets(lay: _Layout) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows with the same voter set: ``(voters (V,), rows (m,), entry index (m, V))``."""
    for V in np.unique(lay.count[lay.count > 0]).tolist():
        rows_v = np.flatnonzero(lay.count == V)
        idx = lay.start[rows_v][:, None] + np.arange(V)
        uniq, inv = np.unique(lay.client[idx], axis=0, return_inverse=True)
        inv = np.asarray(inv).ravel()
        order = np.argsort(inv, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=len(uniq)))])
        for j in range(len(uniq)):
            members = order[bounds[j] : bounds[j + 1]]
            yield uniq[j], rows_v[members], idx[members]


def _base(updates: RowUpdates) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(zero rows (R, d), touched (R,), voter_share (R,))."""
    lay = updates._layout
    total = float(updates.weights.sum())
    share = np.bincount(lay.row, weights=updates.weights[lay.client], minlength=updates.num_rows)
    return np.zeros((updates.num_rows, updates.d)), lay.count > 0, share / total


def _weighted_row_mean(lay: _Layout, entry_w: np.ndarray, out: np.ndarray) -> None:
    """``out[r] = sum_e w_e x_e / sum_e w_e`` over row r's entries with ``w_e > 0``."""
    rows = np.flatnonzero(np.bincount(lay.row, weights=entry_w, minlength=len(lay.count)) > 0)
    if not rows.size:
        return
    nz = np.flatnonzero(lay.count > 0)
    num = np.add.reduceat(entry_w[:, None] * lay.values, lay.start[nz], axis=0)
    den = np.add.reduceat(entry_w, lay.start[nz])
    pos = np.searchsorted(nz, rows)
    out[rows] = num[pos] / den[pos][:, None]


def _trim_mean(x: np.ndarray, cut: int, axis: int) -> np.ndarray:
    """Flower's ``_trim_mean`` along ``axis`` with ``lowercut = cut``."""
    n = x.shape[axis]
    lo, hi = cut, n - cut
    part = np.partition(x, (lo, hi - 1), axis=axis)
    return np.take(part, np.arange(lo, hi), axis=axis).mean(axis=axis)


def _n_closest_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Flower's ``_aggregate_n_closest_weights`` along axis 1 of ``x`` (m, theta, d): per
    coordinate, the mean of the ``k`` values closest to the coordinate-wise median."""
    med = np.median(x, axis=1)
    diff = np.abs(med[:, None, :] - x)
    idx = np.argpartition(diff, kth=k - 1, axis=1)
    return np.take_along_axis(x, idx, axis=1)[:, :k].mean(axis=1)


def _krum_scores(dist: np.ndarray, f: int) -> np.ndarray:
    """Flower's Krum scores: per voter, its ``max(1, V - f - 2)`` smallest distances after
    the first (itself) summed."""
    k = max(1, dist.shape[0] - f - 2)
    return np.sort(dist, axis=1)[:, 1 : k + 1].sum(axis=1)


def _krum_select(dist: np.ndarray, f: int, to_keep: int) -> np.ndarray:
    """Local indices of Krum (``to_keep == 0``: one) or MultiKrum's ``to_keep`` best."""
    scores = _krum_scores(dist, f)
    if to_keep == 0:
        return np.array([int(np.argmin(scores))])
    return np.argsort(scores, kind="stable")[:to_keep]


def _bulyan_select(dist: np.ndarray, f: int) -> np.ndarray:
    """Bulyan's ``theta = V - 2f`` selections by Krum on the shrinking set (in order)."""
    V = dist.shape[0]
    if f == 0:
        return np.arange(V)  # every voter is selected, whatever the order
    remaining = list(range(V))
    selected: list[int] = []
    for _ in range(V - 2 * f):
        sub = dist[np.ix_(remaining, remaining)]
        selected.append(remaining.pop(int(np.argmin(_krum_scores(sub, f)))))
    return np.asarray(selected)


def _to_keep(keep_frac: float, V: int) -> int:
    """MultiKrum's ``ceil(keep_frac * V)`` clamped to ``[1, V]`` (0 = Krum)."""
    if keep_frac == 0.0:
        return 0
    return min(V, max(1, math.ceil(keep_frac * V - 1e-9)))  # 0.3 * 10 -> 3, not 4


def pairwise_sq_distances(updates: RowUpdates) -> np.ndarray:
    r"""Squared distances between clients over the coordinates both uploaded.

    :math:`D_{ij} = \sum_{r \in T_i \cap T_j} \|u_{i,r} - u_{j,r}\|^2 + \|v_i - v_j\|^2`,
    computed as ``S M^T + M S^T - 2 U U^T`` plus the dense part (module docstring), clipped
    at 0, with an exactly zero diagonal. When every client touches every row this is the
    squared distance of the zero-filled concatenated updates (Flower's
    ``_compute_distances``).

    Returns
    -------
    D : ndarray (n, n), float64
    """
    n, R, d = updates.n, updates.num_rows, updates.d
    lay = updates._layout
    sq = np.einsum("kd,kd->k", lay.values, lay.values)
    S = np.zeros((n, R))
    S[lay.client, lay.row] = sq
    M = np.zeros((n, R))
    M[lay.client, lay.row] = 1.0
    SM = S @ M.T
    gram = np.zeros(n * n)
    for _, _, idx in _groups(lay, lambda V: V * max(V, d)):
        x = lay.values[idx]  # (m, V, d)
        prod = x @ x.transpose(0, 2, 1)  # (m, V, V): U_r U_r^T over the voters
        c = lay.client[idx]
        flat = (c[:, :, None] * n + c[:, None, :]).ravel()
        gram += np.bincount(flat, weights=prod.ravel(), minlength=n * n)
    D = SM + SM.T - 2.0 * gram.reshape(n, n)
    if updates.p:
        v = updates.dense
        s = np.einsum("np,np->n", v, v)
        D += s[:, None] + s[None, :] - 2.0 * (v @ v.T)
    D = np.maximum(D, 0.0)
    np.fill_diagonal(D, 0.0)
    return D


def _result(
    updates: RowUpdates, rule: str, rows: np.ndarray, dense: np.ndarray, **info: Any
) -> RobustResult:
    _, touched, share = _base(updates)
    info = {"rule": rule, "num_voters": updates._layout.count.copy(), **info}
    return RobustResult(rows, touched, dense, share, info)


# ------------------------------------------------------------------ the rules
def rowwise_mean(updates: RowUpdates) -> RobustResult:
    """Per row, the example-weighted mean of its voters; every client for the dense part.

    ``fedavg_scale(rowwise_mean(u))`` is FedAvg: ``(sum_{c touched r} n_c u_{c,r} / N,
    sum_c n_c v_c / N)``.
    """
    lay = updates._layout
    rows, _, _ = _base(updates)
    _weighted_row_mean(lay, updates.weights[lay.client], rows)
    dense = updates.weights @ updates.dense / float(updates.weights.sum())
    return _result(updates, "mean", rows, dense)


def rowwise_median(updates: RowUpdates) -> RobustResult:
    """Per row, the coordinate-wise median of its voters (unweighted, like Flower's
    ``aggregate_median``); every client votes on the dense part."""
    lay = updates._layout
    rows, _, _ = _base(updates)
    for _, rs, idx in _groups(lay, lambda V: V * updates.d):
        rows[rs] = np.median(lay.values[idx], axis=1)
    dense = np.median(updates.dense, axis=0) if updates.p else np.zeros(0)
    return _result(updates, "median", rows, dense)


def rowwise_trimmed_mean(updates: RowUpdates, beta: float) -> RobustResult:
    """Per row and coordinate, the mean of the voters' values after cutting the
    ``int(beta * V)`` smallest and largest (Flower's ``_trim_mean``, unweighted).

    ``info["cut"]`` ``(R,)``: the number cut from each end per row (``info["cut_dense"]``
    for the dense part).
    """
    beta = _check_beta(beta)
    lay = updates._layout
    rows, _, _ = _base(updates)
    for V, rs, idx in _groups(lay, lambda V: V * updates.d):
        rows[rs] = _trim_mean(lay.values[idx], int(beta * V), axis=1)
    n = updates.n
    dense = _trim_mean(updates.dense, int(beta * n), axis=0) if updates.p else np.zeros(0)
    cut = (beta * lay.count).astype(np.int64)
    return _result(updates, "trimmed_mean", rows, dense, cut=cut, cut_dense=int(beta * n))


def _selection_info(
    updates: RowUpdates, selected_rows: np.ndarray, dense_selected: np.ndarray
) -> dict[str, Any]:
    touched_rows = np.array([len(i) for i in updates.ids], dtype=np.int64)
    share = np.divide(selected_rows, touched_rows, out=np.zeros(updates.n), where=touched_rows > 0)
    return {
        "selected_rows": selected_rows,
        "selected_share": share,
        "dense_selected": dense_selected,
    }


def rowwise_krum(updates: RowUpdates, beta: float, keep_frac: float = 0.0) -> RobustResult:
    """Row-wise Krum (``keep_frac == 0``) or MultiKrum (Blanchard et al. 2017).

    Per row with ``V`` voters and ``f = int(beta * V)``: Flower's Krum on the voters'
    shared-coordinate distances (:func:`pairwise_sq_distances`) with ``num_closest =
    max(1, V - f - 2)``. Krum returns the selected voter's row update; MultiKrum the
    example-weighted mean of the ``ceil(keep_frac * V)`` (clamped to ``[1, V]``) voters with
    the smallest scores. Rows with the same voter set share one selection.

    Parameters
    ----------
    updates : RowUpdates
    beta : float
        Assumed malicious fraction, in ``[0, 0.5)``.
    keep_frac : float
        In ``[0, 1]``; 0 is Krum.

    Returns
    -------
    RobustResult
        ``info``: ``selected_rows`` (n,) on how many rows each client was selected,
        ``selected_share`` (n,) that count over the rows it touched, ``dense_selected``
        (n,) bool, ``num_voter_sets`` (distinct voter sets among the rows).
    """
    beta = _check_beta(beta)
    keep_frac = _check_number("keep_frac", keep_frac, 0.0, 1.0)
    n, w = updates.n, updates.weights
    lay = updates._layout
    D = pairwise_sq_distances(updates)
    rows, _, _ = _base(updates)
    entry_w = np.zeros(len(lay.client))
    selected_rows = np.zeros(n, dtype=np.int64)
    cache: dict[bytes, np.ndarray] = {}
    num_sets = 0

    def select(voters: np.ndarray) -> np.ndarray:
        key = voters.tobytes()
        if key not in cache:
            V = len(voters)
            cache[key] = _krum_select(
                D[np.ix_(voters, voters)], int(beta * V), _to_keep(keep_frac, V)
            )
        return cache[key]

    for voters, rs, idx in _voter_sets(lay):
        num_sets += 1
        sel = select(voters)
        entry_w[idx[:, sel].ravel()] = np.tile(w[voters[sel]] if keep_frac else 1.0, len(rs))
        selected_rows += np.bincount(voters[sel], minlength=n) * len(rs)
    _weighted_row_mean(lay, entry_w, rows)
    dense_selected = np.zeros(n, dtype=bool)
    dense = np.zeros(0)
    if updates.p:
        sel = select(np.arange(n, dtype=np.int64))
        dense_selected[sel] = True
        dw = w[sel] if keep_frac else np.ones(len(sel))
        dense = dw @ updates.dense[sel] / dw.sum()
    info = _selection_info(updates, selected_rows, dense_selected)
    return _result(
        updates, "multikrum" if keep_frac else "krum", rows, dense, num_voter_sets=num_sets, **info
    )


def rowwise_bulyan(updates: RowUpdates, beta: float) -> RobustResult:
    """Row-wise Bulyan with Krum (El Mhamdi et al. 2018), Flower's ``aggregate_bulyan``.

    Per row with ``V`` voters and ``f = int(beta * V)``: ``theta = V - 2f`` voters selected
    one at a time by Krum (``num_malicious = f`` fixed, on the shrinking set, the
    shared-coordinate distances of :func:`pairwise_sq_distances`), then per coordinate the
    mean of the ``theta - 2f`` selected values closest to the selected values' median.
    Unweighted.

    **Fallback**: a row with ``V < 4 f + 3`` (Bulyan's precondition; Flower raises) takes the
    coordinate-wise median of all its voters instead. With ``f = 0`` every voter is
    selected and all are averaged.

    Returns
    -------
    RobustResult
        ``info``: ``fallback_rows`` (int) and ``fallback_dense`` (bool), ``selected_rows``,
        ``selected_share``, ``dense_selected`` (as :func:`rowwise_krum`, for the ``theta``
        selections; a fallback row selects nobody), ``num_voter_sets``.
    """
    beta = _check_beta(beta)
    n = updates.n
    lay = updates._layout
    D = pairwise_sq_distances(updates)
    rows, _, _ = _base(updates)
    selected_rows = np.zeros(n, dtype=np.int64)
    fallback_rows = 0
    num_sets = 0
    cache: dict[bytes, np.ndarray] = {}

    def select(voters: np.ndarray, f: int) -> np.ndarray:
        key = voters.tobytes()
        if key not in cache:
            cache[key] = _bulyan_select(D[np.ix_(voters, voters)], f)
        return cache[key]

    for voters, rs, idx in _voter_sets(lay):
        num_sets += 1
        V = len(voters)
        f = int(beta * V)
        if V < 4 * f + 3:
            fallback_rows += len(rs)
            for sub in _chunks(np.arange(len(rs)), V * updates.d):
                rows[rs[sub]] = np.median(lay.values[idx[sub]], axis=1)
            continue
        sel = select(voters, f)
        selected_rows += np.bincount(voters[sel], minlength=n) * len(rs)
        for sub in _chunks(np.arange(len(rs)), V * updates.d):
            rows[rs[sub]] = _n_closest_mean(lay.values[idx[sub][:, sel]], len(sel) - 2 * f)
    dense_selected = np.zeros(n, dtype=bool)
    dense = np.zeros(0)
    fallback_dense = False
    if updates.p:
        f = int(beta * n)
        if n < 4 * f + 3:
            fallback_dense = True
            dense = np.median(updates.dense, axis=0)
        else:
            sel = select(np.arange(n, dtype=np.int64), f)
            dense_selected[sel] = True
            dense = _n_closest_mean(updates.dense[sel][None], len(sel) - 2 * f)[0]
    info = _selection_info(updates, selected_rows, dense_selected)
    return _result(
        updates,
        "bulyan",
        rows,
        dense,
        fallback_rows=fallback_rows,
        fallback_dense=fallback_dense,
        num_voter_sets=num_sets,
        **info,
    )


# ------------------------------------------------------------------ clipping
def update_norms(updates: RowUpdates) -> np.ndarray:
    """Per client, the L2 norm of its whole update (touched rows and dense part), ``(n,)``."""
    lay = updates._layout
    sq = np.bincount(
        lay.client, weights=np.einsum("kd,kd->k", lay.values, lay.values), minlength=updates.n
    )
    return np.sqrt(sq + np.einsum("np,np->n", updates.dense, updates.dense))


def clip_updates(updates: RowUpdates, max_norm: float) -> tuple[RowUpdates, np.ndarray]:
    """Scale each client's whole update by ``min(1, max_norm / ||u_c||)`` (1 for a zero
    update).

    Parameters
    ----------
    updates : RowUpdates
    max_norm : float
        The clipping norm ``C >= 0`` (0 zeroes every non-zero update).

    Returns
    -------
    clipped : RowUpdates
        Same ids and weights, scaled rows and dense updates.
    factors : ndarray (n,)
        The scale applied to each client, in ``[0, 1]``.
    """
    max_norm = _check_number("max_norm", max_norm, 0.0, np.inf, hi_open=True)
    norms = update_norms(updates)
    factors = np.ones(updates.n)
    big = norms > float(max_norm)
    factors[big] = float(max_norm) / norms[big]
    clipped = RowUpdates(
        [i.copy() for i in updates.ids],
        [r * s for r, s in zip(updates.rows, factors)],
        updates.dense * factors[:, None],
        updates.weights.copy(),
        updates.num_rows,
        updates.d,
    )
    return clipped, factors


def adaptive_clip_norm(norms: Any, quantile: float) -> float:
    """The ``quantile`` of this round's update norms (numpy's linear interpolation), a
    clipping norm that adapts to the round: with ``quantile = 0.5`` at most half of the
    clients are clipped."""
    quantile = _check_number("quantile", quantile, 0.0, 1.0)
    x = _float_array("norms", norms)
    if x.ndim != 1 or x.size == 0:
        raise ConfigError(f"norms must be a non-empty 1-D array, got shape {x.shape}")
    if np.any(x < 0):
        raise ConfigError("norms must be >= 0")
    return float(np.quantile(x, float(quantile)))


# ------------------------------------------------------------------ anomaly detection
def _robust_z(x: np.ndarray, axis: int, floor: np.ndarray | float) -> np.ndarray:
    """``(x - median) / scale`` along ``axis`` with ``scale = 1.4826 MAD``; if the MAD is 0,
    ``1.2533 * mean |x - median|``; then ``max(scale, floor)``; ``z = 0`` where scale is 0."""
    med = np.median(x, axis=axis, keepdims=True)
    dev = np.abs(x - med)
    scale = MAD_TO_SIGMA * np.median(dev, axis=axis, keepdims=True)
    scale = np.where(scale > 0, scale, MEANAD_TO_SIGMA * dev.mean(axis=axis, keepdims=True))
    scale = np.maximum(scale, floor)
    return np.divide(x - med, scale, out=np.zeros_like(x), where=scale > 0)


@dataclass(frozen=True, eq=False)
class AnomalyComponents:
    """The parts of the anomaly score, each ``(n,)``.

    Attributes
    ----------
    norm_z : robust z-score of the client's total update norm among all clients.
    row_z : max over the client's rows with >= 3 voters of the robust z-score of its
        row-update norm among that row's voters (0 if it has no such row).
    cosine_distance : ``1 - cos(v_c, median_c v_c)`` of the dense update (0 if ``p == 0``
        or the median dense update is zero; 1 if the client's dense update is zero).
    cosine_z : robust z-score of ``cosine_distance`` among all clients.
    """

    norm_z: np.ndarray
    row_z: np.ndarray
    cosine_distance: np.ndarray
    cosine_z: np.ndarray

    @property
    def score(self) -> np.ndarray:
        """``max(0, norm_z, row_z, cosine_z)`` per client."""
        return np.maximum.reduce(
            [np.zeros_like(self.norm_z), self.norm_z, self.row_z, self.cosine_z]
        )


def anomaly_components(updates: RowUpdates) -> AnomalyComponents:
    r"""The three standardised parts of the update-anomaly score.

    Every part is a robust z-score :math:`z = (x - \mathrm{med}) / s`,
    :math:`s = 1.4826\,\mathrm{MAD}` (the normal-consistent MAD; Iglewicz & Hoaglin's
    modified z-score), falling back to :math:`1.2533 \cdot` the mean absolute deviation
    when the MAD is 0 (more than half the values equal), and floored (``1e-6 * |median|``
    for norms, ``1e-3`` for cosine distances) so that rounding noise among identical
    clients is not standardised into large scores.

    (a) ``norm_z``: the total update norm (:func:`update_norms`) among all clients.
    (b) ``row_z``: per row with at least 3 voters, the z-score of each voter's row-update
        norm among the row's voters; per client the max over its rows (0 if none).
    (c) ``cosine_z``: the cosine distance of the client's dense update to the
        coordinate-wise median dense update, among all clients.

    The score (:attr:`AnomalyComponents.score`) is ``max(0, a, b, c)``: one-sided, since a
    large norm or an unusual direction is what makes an update harmful (an unusually small
    update has little influence), and a maximum, so that one anomalous part suffices.
    Deterministic and equivariant under a permutation of the clients.
    """
    n = updates.n
    lay = updates._layout
    norms = update_norms(updates)
    norm_z = _robust_z(norms, 0, NORM_SCALE_FLOOR * float(np.median(norms)))
    row_z = np.zeros(n)
    for V, _, idx in _groups(lay, lambda V: V * updates.d):
        if V < 3:
            continue
        x = lay.values[idx]  # (m, V, d)
        rn = np.sqrt(np.einsum("mvd,mvd->mv", x, x))
        floor = NORM_SCALE_FLOOR * np.median(rn, axis=1, keepdims=True)
        z = _robust_z(rn, 1, floor)
        np.maximum.at(row_z, lay.client[idx].ravel(), z.ravel())
    cos_dist = np.zeros(n)
    if updates.p:
        v = updates.dense
        med = np.median(v, axis=0)
        med_norm = float(np.linalg.norm(med))
        if med_norm > 0:
            vn = np.linalg.norm(v, axis=1)
            cos = np.divide(v @ med, vn * med_norm, out=np.zeros(n), where=vn > 0)
            cos_dist = 1.0 - np.clip(cos, -1.0, 1.0)
    cosine_z = _robust_z(cos_dist, 0, COSINE_SCALE_FLOOR)
    return AnomalyComponents(norm_z, row_z, cos_dist, cosine_z)


def anomaly_scores(updates: RowUpdates) -> np.ndarray:
    """Per-client anomaly score ``max(0, norm_z, row_z, cosine_z)``, ``(n,)``
    (:func:`anomaly_components`)."""
    return anomaly_components(updates).score


def flag_anomalies(scores: Any, threshold: float = 3.5) -> np.ndarray:
    """``scores > threshold`` as a bool ``(n,)`` array (3.5: Iglewicz & Hoaglin's cut-off
    for the modified z-score)."""
    threshold = _check_number("threshold", threshold, 0.0, np.inf, hi_open=True)
    s = _float_array("scores", scores)
    if s.ndim != 1:
        raise ConfigError(f"scores must be 1-D, got shape {s.shape}")
    return s > float(threshold)

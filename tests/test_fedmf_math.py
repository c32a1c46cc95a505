"""fedrec.algorithms.fedmf: the batched cohort uploads equal per-client sums."""

import numpy as np

from fedrec.algorithms import fedmf as algo
from fedrec.messages import RowSparse


def _result(rng, users=7, d=3, items=12):
    ids, lengths = [], []
    for _ in range(users):
        k = int(rng.integers(0, 5))
        ids.append(np.sort(rng.choice(items, size=k, replace=False)))
        lengths.append(k)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    item_ids = np.concatenate(ids).astype(np.int64)
    deltas = rng.normal(size=(len(item_ids), d)).astype(np.float32)
    return algo.LocalResult(
        np.zeros((users, d), np.float32),
        item_ids,
        deltas,
        indptr,
        np.array(lengths),
        np.zeros((users, 1)),
    )


def test_client_uploads_equal_per_client_reference():
    rng = np.random.default_rng(0)
    res = _result(rng)
    for bounds in ([0, 3, 4, 7], [0, 1, 2, 3, 4, 5, 6, 7], [0, 7], [2, 4, 6]):
        ups = algo.client_uploads(res, np.array(bounds))
        assert len(ups) == len(bounds) - 1
        for i, u in enumerate(ups):
            rows = slice(res.indptr[bounds[i]], res.indptr[bounds[i + 1]])
            ref = RowSparse.from_contributions(res.item_ids[rows], res.item_deltas[rows])
            np.testing.assert_array_equal(u.ids, ref.ids)
            np.testing.assert_array_equal(u.rows, ref.rows)
            np.testing.assert_array_equal(u.counts, ref.counts)
            assert u.rows.dtype == np.float32 and u.counts.dtype == np.int64


def test_sparse_server_step_means_touched_rows_only():
    Q = np.arange(8, dtype=np.float32).reshape(4, 2)
    ups = [
        RowSparse(np.array([1, 3]), np.array([[2.0, 2.0], [1.0, 0.0]]), np.array([1, 1])),
        RowSparse(np.array([1]), np.array([[4.0, 0.0]]), np.array([2])),
    ]
    newQ, touched = algo.sparse_server_step(Q, ups, server_lr=0.5)
    assert touched == 2
    np.testing.assert_array_equal(newQ[[0, 2]], Q[[0, 2]])
    np.testing.assert_allclose(newQ[1], Q[1] + 0.5 * np.array([6.0, 2.0]) / 3)
    np.testing.assert_allclose(newQ[3], Q[3] + 0.5 * np.array([1.0, 0.0]))

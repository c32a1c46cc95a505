"""Synthetic binary federations with a known Bayes score, shared by the FedFACT tests."""

import numpy as np


def label_counts(y, a, A, m):
    """(A, m) label x group counts of one client's rows."""
    return np.stack([np.bincount(y[a == g], minlength=m) for g in range(A)])


def synthetic_scores(rng, sizes, p_a, base, sep=1.0):
    """Binary scores with a known Bayes score eta (class-conditional Gaussians): one
    ``(eta, a, y)`` per client, group 1 with probability ``p_a[k]``, base rates ``base[k][a]``."""
    data = []
    for k, n in enumerate(sizes):
        a = (rng.random(n) < p_a[k]).astype(int)
        pi = np.asarray(base[k])[a]
        y = (rng.random(n) < pi).astype(int)
        x = rng.normal(sep * (2 * y - 1), 1.0)
        eta1 = 1 / (1 + np.exp(-(np.log(pi / (1 - pi)) + 2 * sep * x)))
        data.append((np.column_stack([1 - eta1, eta1]), a, y))
    return data

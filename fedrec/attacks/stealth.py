"""Stealth metrics of profile pollution: how distinguishable polluted sequences are from clean
ones (pure torch / numpy / scikit-learn / POT; no flwr).

* :func:`sequence_embeddings`: the surrogate's sequence representation ``phi(s)`` (the last
  position's hidden state of the last ``max_len`` items), in batches, without gradients.
* :func:`window_embeddings`: ``phi`` of the k-gram windows of a set of sequences (the pattern
  level of the co-OT distance), optionally a seeded subsample.
* :func:`detector_auc`: a detector that operationalises the paper's t-SNE plot (reference
  ``unlearning_attack.md`` §2.9): a standardised logistic regression separating clean from
  polluted embeddings, scored by stratified k-fold cross-validation. ``auc`` is the ROC AUC of
  the pooled out-of-fold decision scores (polluted = positive class); ``auc_sym =
  max(auc, 1 - auc)``, since a detector that ranks the classes the wrong way round is still a
  detector. ~0.5 means stealthy; 1 means perfectly separable.
* :func:`coot_distance`: the dual-level unbalanced co-optimal-transport distance of CREAT, the
  one implementation in :func:`fedrec.attacks.creat.dlot_distance` (see that module's docstring
  for how it is assembled from POT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedrec.attacks.creat import dlot_distance, encode, segment_tokens
from fedrec.errors import ConfigError
from fedrec.models.recsys import to_tokens

__all__ = [
    "DetectorResult",
    "coot_distance",
    "detector_auc",
    "sequence_embeddings",
    "window_embeddings",
]


def _arrays(sequences: Sequence) -> list[np.ndarray]:
    seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
    for i, s in enumerate(seqs):
        if s.size == 0:
            raise ConfigError(f"sequence {i} is empty: its embedding is undefined")
    return seqs


def sequence_embeddings(model: Any, sequences: Sequence, *, batch_size: int = 512) -> np.ndarray:
    """``phi(s) = model(to_tokens([s], max_len))[:, -1]`` for every sequence, ``(n, d)``
    float32 (no gradient; ``model`` is put in eval mode and its mode restored)."""
    seqs = _arrays(sequences)
    d = int(model.item_emb.weight.shape[1])
    if not seqs:
        return np.zeros((0, d), dtype=np.float32)
    tokens = to_tokens(seqs, int(model.max_len))
    return encode(model, tokens, chunk=int(batch_size)).numpy().astype(np.float32)


def window_embeddings(
    model: Any,
    sequences: Sequence,
    k: int = 2,
    *,
    max_windows: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """``phi`` of every k-gram window ``s[t:t+k]`` of the last ``max_len`` items of each
    sequence, ``(n_windows, d)`` float32; with ``max_windows`` a uniform seeded subsample of at
    most that many windows (in their original order)."""
    if int(k) != k or k < 1:
        raise ConfigError(f"k must be an integer >= 1 (got {k})")
    seqs = _arrays(sequences)
    d = int(model.item_emb.weight.shape[1])
    L = int(model.max_len)
    if not seqs or k > L:
        return np.zeros((0, d), dtype=np.float32)
    tokens = to_tokens(seqs, L)
    nw = L - int(k) + 1
    rows, t = (tokens[:, :nw] != 0).nonzero(as_tuple=True)
    if max_windows is not None and rows.numel() > int(max_windows):
        keep = np.sort(np.random.default_rng(seed).choice(rows.numel(), int(max_windows), False))
        rows, t = rows[torch.from_numpy(keep)], t[torch.from_numpy(keep)]
    if rows.numel() == 0:
        return np.zeros((0, d), dtype=np.float32)
    return encode(model, segment_tokens(tokens, rows, t, t + int(k))).numpy().astype(np.float32)


@dataclass(frozen=True)
class DetectorResult:
    """:func:`detector_auc`: pooled out-of-fold ``auc`` (polluted = positive), ``auc_sym =
    max(auc, 1 - auc)``, the per-fold AUCs, the class sizes and the number of folds."""

    auc: float
    auc_sym: float
    fold_aucs: tuple[float, ...]
    n_clean: int
    n_polluted: int
    folds: int

    def to_dict(self) -> dict:
        return {
            "auc": self.auc,
            "auc_sym": self.auc_sym,
            "fold_aucs": list(self.fold_aucs),
            "n_clean": self.n_clean,
            "n_polluted": self.n_polluted,
            "folds": self.folds,
        }


def _matrix(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ConfigError(f"{name} must be a 2-D array (n, d), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"{name} holds non-finite values")
    return a


def detector_auc(
    clean_emb: np.ndarray | torch.Tensor,
    polluted_emb: np.ndarray | torch.Tensor,
    seed: int = 0,
    folds: int = 5,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
) -> DetectorResult:
    """Cross-validated AUC of a standardised logistic regression (``C``) separating clean from
    polluted embeddings (module docstring). ``StratifiedKFold(folds, shuffle=True,
    random_state=seed)``; needs at least ``folds`` rows per class and ``folds >= 2``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X0, X1 = _matrix(clean_emb, "clean_emb"), _matrix(polluted_emb, "polluted_emb")
    if X0.shape[1] != X1.shape[1]:
        raise ConfigError(
            f"clean_emb and polluted_emb must have the same width (got {X0.shape[1]} and "
            f"{X1.shape[1]})"
        )
    if int(folds) != folds or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2 (got {folds})")
    folds = int(folds)
    n0, n1 = X0.shape[0], X1.shape[0]
    if min(n0, n1) < folds:
        raise ConfigError(
            f"detector_auc needs at least folds={folds} embeddings per class "
            f"(got {n0} clean, {n1} polluted)"
        )
    X = np.vstack([X0, X1])
    y = np.r_[np.zeros(n0, dtype=int), np.ones(n1, dtype=int)]
    scores = np.zeros(X.shape[0])
    fold_aucs = []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=int(seed)).split(X, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
        clf.fit(X[tr], y[tr])
        scores[te] = clf.decision_function(X[te])
        fold_aucs.append(float(roc_auc_score(y[te], scores[te])))
    auc = float(roc_auc_score(y, scores))
    return DetectorResult(auc, max(auc, 1.0 - auc), tuple(fold_aucs), n0, n1, folds)


def coot_distance(
    X_clean: np.ndarray | torch.Tensor,
    X_polluted: np.ndarray | torch.Tensor,
    patterns_clean: np.ndarray | torch.Tensor | None = None,
    patterns_polluted: np.ndarray | torch.Tensor | None = None,
    *,
    pattern_weight: float = 1.0,
    reg_marginals: float = 10.0,
    epsilon: float = 0.0,
    max_iter: int = 10,
    max_iter_ot: int = 30,
) -> float:
    """Dual-level unbalanced co-OT distance between clean and polluted sequence embeddings
    (``(n, d)``, ``(m, d)``) and, optionally, their k-gram window embeddings
    (:func:`window_embeddings`): ``UCOOT(X_clean, X_polluted) + pattern_weight *
    UCOOT(patterns_clean, patterns_polluted)``, :func:`fedrec.attacks.creat.dlot_distance` with
    ``pattern_scale = 1``. ~0 for identical sets; it grows as the sets move apart."""
    Xc, Xp = _matrix(X_clean, "X_clean"), _matrix(X_polluted, "X_polluted")
    Wc = None if patterns_clean is None else _matrix(patterns_clean, "patterns_clean")
    Wp = None if patterns_polluted is None else _matrix(patterns_polluted, "patterns_polluted")
    res = dlot_distance(
        Xc,
        Xp,
        Wc,
        Wp,
        pattern_weight=pattern_weight,
        pattern_scale=1.0,
        reg_marginals=reg_marginals,
        epsilon=epsilon,
        max_iter=max_iter,
        max_iter_ot=max_iter_ot,
    )
    return res.value

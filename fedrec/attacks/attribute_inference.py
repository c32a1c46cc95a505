"""Attribute-inference attacks: the yardstick for attribute-privacy defences.

An attribute-inference attack (AIA) trains a classifier to predict a private user
attribute (gender, age band, occupation, ...) from what the adversary observes about
each user. A defence (RAID, LEGO attribute unlearning, DP noise, ...) succeeds when
the attacker is at chance: ROC AUC 0.5, balanced accuracy ``1/K`` for ``K`` classes,
TPR at 1% FPR 0.01. Pure numpy / scikit-learn; no Flower import.

Threat models
-------------
The suite serves two adversaries. Both are *passive* (they follow the protocol and
never send crafted models), know the true attribute of some users (users with public
profiles, a leaked or bought subset, or, in a simulation audit, everybody), and use a
fixed classifier family with fixed hyperparameters (no tuning on the victims).

(a) **Honest-but-curious server in federated recommendation.** Each client keeps its
    user embedding on the device and uploads updates for rows of the shared item
    table (its interacted items, plus any sampled negatives). The server sees every
    individual upload linked to the client that sent it; the attack assumes *no*
    secure aggregation, no shuffling/anonymisation and no DP noise on the uploads
    (each of those is a defence the suite can measure). :func:`upload_features` turns
    the uploads into one feature vector per user:

    * ``kind="touched"``: the multi-hot vector of the item rows the user uploaded.
      This leaks the interaction set itself unless the protocol pads uploads with
      fake items;
    * ``kind="delta-mean"`` / ``"delta-sum"``: the mean / sum of the uploaded row
      deltas. For matrix factorisation the delta of item ``i`` is a scalar multiple
      of the user embedding (``-lr * (r_ui - p_ui) * e_u``), so the aggregate
      reveals ``e_u`` up to sign and scale.

    Pass the uploads of one round, or concatenate several rounds per user.

(b) **Adversary holding released user embeddings.** The final user embeddings are
    published (for retrieval or model sharing), leaked, or reconstructed via (a);
    the features are the embeddings themselves. This is the gray-box attacker of
    the RAID and LEGO / Attribute-wise-Unlearning papers: no training data, no
    gradients, only the embeddings plus some labelled users.

Protocol (:func:`attack`)
-------------------------
It follows the attacker protocol of the RAID / LEGO lineage
(``oktton/Attribute-wise-Unlearning``, ``attack.py``): an MLP (or a logistic
regression as a cheap lower bound) is trained on class-balanced samples, with
5-fold cross-validation repeated 3 times, and mean ± std is reported.

* **Splits.** ``known_fraction == 1`` (the simulation audit, every label known):
  ``StratifiedKFold(folds, shuffle=True)`` with a fresh seed per repeat, giving
  ``folds × repeats`` train/test pairs. ``known_fraction < 1`` (an adversary that
  knows only some labels): per repeat, one stratified seeded draw of that share of
  the users as "known"; the attacker trains on all known users and is scored on
  all the others. ``folds`` is then unused (the hyperparameters are fixed, so no
  model selection is done on the known users), and there are ``repeats``
  evaluations.
* **Class balance.** ``balance=True`` undersamples every class in the *training*
  part to the size of its smallest class (seeded, without replacement). The test
  part keeps every user and is scored with prevalence-free metrics (AUC, balanced
  accuracy, macro averages). This is one difference from the lineage code, which
  downsamples the whole data set before cross-validation: the expected AUC and
  balanced accuracy are the same, ours use every user for evaluation, and macro-F1
  can differ slightly because it depends on the class mix of the test set.
* **Attackers.** ``"mlp"``: ``StandardScaler`` followed by
  ``MLPClassifier(hidden_layer_sizes=mlp_hidden, alpha=mlp_alpha,
  learning_rate_init=0.01, max_iter=max_iter)``. The lineage uses
  ``hidden=(100,), alpha=1, lr=0.01, max_iter=500``; our defaults are
  ``(64,)`` and ``300`` to be cheaper on CPU; pass ``mlp_hidden=(100,),
  max_iter=500`` for the lineage setting. ``"logreg"``: ``StandardScaler`` then
  L2 ``LogisticRegression(C=1, max_iter=max_iter)`` (multinomial for ``K > 2``).
  ``"flip-aware"``: a protocol over those two models that may reverse its scores;
  see "Symmetric AUC and the flip-aware attacker" below.
  The scaler is fitted on the training part only (it sits inside the pipeline).
  Convergence warnings are silenced; ``per_fold[i]["converged"]`` records them.
  Fitting runs with single-threaded BLAS (``threadpoolctl``): the matrices are small,
  and multi-threaded BLAS on them was ~7x slower on a shared 2-core machine.
* **Metrics per test part.** ``roc_auc_score`` (binary: the score of the larger
  class code; multi-class: macro one-vs-rest), ``balanced_accuracy_score``,
  ``f1_score(average="macro")`` of the arg-max prediction, and TPR at 1% FPR
  (:func:`tpr_at_fpr`; macro over one-vs-rest for ``K > 2``). Also the plain
  ``accuracy`` of the arg-max prediction and the ``majority_rate`` of the test part
  (the share of its most frequent class: the accuracy of always guessing that
  class). A class-balanced attacker predicts the classes in roughly equal shares, so
  on an imbalanced test part its accuracy can sit *below* the majority rate even
  when it has signal (a 90/10 attribute: 0.9 for "always the majority", while an
  attacker with balanced accuracy 0.7 has accuracy about 0.7). Accuracy against
  the majority rate is reported because readers expect it; the prevalence-free
  comparison is balanced accuracy against ``1/K``. The reported std is the
  population std (``ddof=0``) over the ``folds × repeats`` (or ``repeats``)
  evaluations; ``majority_rate`` is the mean over the evaluations.
* **Seeds.** Everything derives from ``seed`` via :func:`fedrec.seeding.derive_seed`:
  the split of repeat ``r`` from ``(seed, "aia-split", r)`` (the same for every
  attacker, so all three attackers see the same folds), the balancing draw and the
  model initialisation from ``(seed, ..., r, fold)``; the flip-aware attacker's
  inner split from ``(seed, "aia-inner", r, fold)`` and the models of inner fold
  ``i`` from ``(seed, "aia-inner-model", r, fold, i)``. No global RNG.

Symmetric AUC and the flip-aware attacker
-----------------------------------------
Defences that equalise group statistics *in sample* (RAID's and LEGO's
constraints match the attribute groups' embedding distributions over the very
users being audited) leave an artefact that makes a plain attacker look better
than chance in the wrong direction. Suppose the group means are matched exactly
over all ``n`` users: for every class ``k``, the sum of ``x_u - m`` over its users is
zero (``m`` the common mean). Split the users into a training and a test part
(stratified, so class ``k`` has ``n_k * n_train / n`` users in the training part and
``n_k * n_test / n`` in the test part, up to rounding). The training part's sum for
class ``k`` is minus the test part's, so its class mean deviates from ``m`` by exactly
``-(n_test / n_train)`` times the test part's deviation, and the training part's
group-mean difference is ``-(n_test / n_train)`` times the test part's. (Rounding of
the class counts and class balancing of the training part perturb this slightly.)
The test part's group means differ by sampling noise, and the training part carries
the same difference, reversed: a fitted attacker points the wrong way and is
*anti-informative* on held-out users. With 5 folds a plain attacker on such
embeddings can score AUC well below 0.5 (about 0.34 for logistic regression on a
synthetic 943 × 64 set with a planted, then exactly equalised, binary attribute;
lower has been seen), which is not privacy: an attacker who flips its decisions
scores one minus that.

This leakage is real for an adversary who knows the defence (or simply notices the
inversion on the users whose attribute it knows), so the suite reports two
honest figures:

* ``auc_sym`` (symmetric AUC) ``= max(auc, 1 - auc)`` of the *mean* AUC over the
  evaluations: the AUC of an attacker that knows which way to read the scores.
  It is computed from the mean, not averaged per fold: ``max(a, 1 - a)`` is at
  least 0.5 on every fold, so under no signal the per-fold values average to
  ``0.5 + E|a - 0.5|`` (fold-to-fold noise alone, ~0.8 fold std), whereas the
  symmetric value of the mean is biased only by the much smaller noise of the
  mean. It still never goes below 0.5 and is read against a chance level
  slightly above 0.5; it is an optimistic bound (the orientation is picked after
  seeing the test scores), which is why tables print it next to the signed AUC.
* ``attacker="flip-aware"``: an attacker that learns the orientation from its own
  training users. Per outer evaluation (the same outer splits and class balancing
  as ``"mlp"`` and ``"logreg"``) it runs ``StratifiedKFold(inner_folds,
  shuffle=True)`` on the (balanced) training part only; for each candidate model
  (``"mlp"``, ``"logreg"``, built exactly as above) it collects the out-of-fold
  probabilities over the inner folds and computes one inner AUC from them (the
  same AUC definition as the outer metrics). It chooses the candidate with the
  largest ``|inner AUC - 0.5|`` (ties: ``"mlp"``) and the sign ``s = +1`` if that
  inner AUC is ``>= 0.5``, else ``-1``; refits the chosen model on the whole
  training part (with the seed the plain attacker of that name uses, so with
  ``s = +1`` its outer scores are exactly those of the plain attacker) and scores
  the test part with ``s * proba``: with ``s = -1`` the binary AUC becomes exactly
  ``1 - AUC``, the macro one-vs-rest AUC (a mean of per-class binary AUCs) too, and
  the predicted class is the arg-min of the probabilities. Both signs come from
  the same inner fits, so the cost is ``2 * inner_folds + 1`` fits per evaluation
  (7 with the default ``inner_folds=3``, against 1 for a plain attacker).
  ``per_fold`` records ``chosen``, ``sign`` and ``inner_auc`` (per candidate).
  The reported AUC is a held-out figure: it exceeds 0.5 only when the inversion
  is systematic, i.e. predictable from the training users alone. This is the
  yardstick to report for in-sample-equalising defences.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ..data.recsys import AGE_BUCKETS, age_bucket
from ..errors import ConfigError
from ..seeding import derive_seed

__all__ = [
    "ATTACKERS",
    "UPLOAD_FEATURE_KINDS",
    "AttackResult",
    "age_buckets",
    "attack",
    "attack_many",
    "make_attacker",
    "results_table",
    "tpr_at_fpr",
    "upload_features",
]

#: Attacker names accepted by :func:`attack` (``"flip-aware"`` is a protocol over the
#: other two, see the module doc; :func:`make_attacker` builds only the models).
ATTACKERS = ("mlp", "logreg", "flip-aware")
#: Feature kinds accepted by :func:`upload_features`.
UPLOAD_FEATURE_KINDS = ("touched", "delta-mean", "delta-sum")

_MLP_LEARNING_RATE = 0.01  # lineage value (Attribute-wise-Unlearning attack.py)
_METRICS = ("auc", "balanced_accuracy", "accuracy", "macro_f1", "tpr_at_1pct_fpr")
#: The models the flip-aware attacker chooses between, in tie-breaking order.
_FLIP_CANDIDATES = ("mlp", "logreg")


def _sk_seed(*parts: int | str) -> int:
    """A seed in sklearn's accepted range [0, 2**32)."""
    return derive_seed(*parts) % (2**32)


# ----------------------------------------------------------------------------- result


@dataclass
class AttackResult:
    """Scores of one attacker on one attribute: mean and std over the evaluations.

    ``per_fold`` holds one dict per evaluation with ``repeat``, ``fold`` (``0`` when
    ``known_fraction < 1``), ``n_train``, ``n_test``, the metrics (``auc``,
    ``balanced_accuracy``, ``accuracy``, ``majority_rate``, ``macro_f1``,
    ``tpr_at_1pct_fpr``), ``converged``, ``model_seed`` and the row indices
    ``train_index`` (after class balancing, i.e. the rows the model was fitted on)
    and ``test_index``, so any evaluation can be recomputed with
    :func:`make_attacker`. The flip-aware attacker adds ``chosen`` (the model name),
    ``sign`` (``+1`` or ``-1``) and ``inner_auc`` (``{model name: inner AUC}``); its
    ``model_seed`` is that of the refit chosen model and ``converged`` covers the
    inner fits too. ``classes`` are the original label values; code ``k`` of the
    attacker is ``classes[k]`` (for binary attributes the AUC scores ``classes[1]``
    as the positive class). ``settings`` records the protocol arguments.

    ``auc_sym`` is ``max(auc, 1 - auc)`` of the mean AUC (not a mean of per-fold
    symmetric values, which is biased upward under no signal; see the module doc).
    ``accuracy`` is the plain accuracy of the arg-max prediction, to be read against
    ``majority_rate``, the mean share of the most frequent class in the test parts;
    a class-balanced attacker can sit below it even with signal, so balanced
    accuracy against ``1 / num_classes`` is the prevalence-free comparison.
    """

    attribute: str
    attacker: str
    num_classes: int
    n: int
    auc: float
    auc_std: float
    auc_sym: float
    balanced_accuracy: float
    balanced_accuracy_std: float
    accuracy: float
    accuracy_std: float
    majority_rate: float
    macro_f1: float
    macro_f1_std: float
    tpr_at_1pct_fpr: float
    tpr_at_1pct_fpr_std: float
    chance_auc: float = 0.5
    per_fold: list[dict] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def chance_balanced_accuracy(self) -> float:
        """Balanced accuracy of a blind attacker: ``1 / num_classes``."""
        return 1.0 / self.num_classes

    @property
    def chance_tpr_at_1pct_fpr(self) -> float:
        """TPR at 1% FPR of a blind attacker (random scores): 0.01."""
        return 0.01

    def to_dict(self, *, include_folds: bool = False) -> dict:
        """A JSON-ready dict; per-fold rows (without the index arrays) on request."""
        out = asdict(self)
        out.pop("per_fold")
        if include_folds:
            out["per_fold"] = [
                {k: v for k, v in row.items() if k not in ("train_index", "test_index")}
                for row in self.per_fold
            ]
        return out


# ----------------------------------------------------------------------------- metrics


def tpr_at_fpr(y_true, scores, max_fpr: float = 0.01, *, interpolate: bool = True) -> float:
    """True-positive rate of a score at false-positive rate ``max_fpr``.

    The ROC curve is ``sklearn.metrics.roc_curve(y_true, scores,
    drop_intermediate=False)``, read as a piecewise-linear curve (the usual ROC
    convention: a segment between two adjacent points is reachable by randomising
    between their thresholds). With ``interpolate=True`` the value is that curve at
    ``FPR = max_fpr``; with ``interpolate=False`` it is the step value
    ``max{TPR : FPR <= max_fpr}`` (Privacy Meter's ``compute_attack_results``
    convention, with ``<=`` instead of ``<``).

    For scores without ties the curve is a staircase and both values are equal;
    they differ only across tied positive/negative scores (diagonal segments).
    With fewer than ``1/max_fpr`` negatives (100 for 1%), ``max_fpr`` lies below the
    first non-zero FPR step and the value is the TPR at FPR 0 (the share of
    positives scored above every negative): noisy on small test sets.
    """
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ConfigError(
            f"y_true and scores must be 1-D of the same length, got shapes {y.shape} and {s.shape}"
        )
    if not 0.0 <= float(max_fpr) <= 1.0:
        raise ConfigError(f"max_fpr must be in [0, 1], got {max_fpr!r}")
    if np.unique(y).size != 2:
        raise ConfigError(f"y_true must hold exactly 2 classes, got {np.unique(y).size}")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    # fpr and tpr are non-decreasing; i is the last point with FPR <= max_fpr, which
    # carries the largest TPR at that FPR.
    i = int(np.searchsorted(fpr, max_fpr, side="right")) - 1
    if not interpolate or i == fpr.size - 1 or fpr[i] == max_fpr:
        return float(tpr[i])
    j = i + 1
    return float(tpr[i] + (tpr[j] - tpr[i]) * (max_fpr - fpr[i]) / (fpr[j] - fpr[i]))


def _auc(y: np.ndarray, proba: np.ndarray, num_classes: int) -> float:
    """ROC AUC of class probabilities: binary = score of class 1, else macro one-vs-rest."""
    if num_classes == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    labels = np.arange(num_classes)
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=labels))


def _fold_metrics(
    y_test: np.ndarray, proba: np.ndarray, num_classes: int, sign: int = 1
) -> dict[str, float]:
    """Metrics of the scores ``sign * proba`` (``sign=-1``: the flip-aware reversal)."""
    scores = proba if sign > 0 else -proba
    pred = np.argmax(scores, axis=1)  # sign -1: the arg-min of proba
    labels = np.arange(num_classes)
    if num_classes == 2:
        auc = roc_auc_score(y_test, scores[:, 1])
        tpr = tpr_at_fpr(y_test, scores[:, 1], 0.01)
    else:
        if sign > 0:
            auc = _auc(y_test, proba, num_classes)
        else:  # sklearn's multi-class AUC wants probabilities; macro OvR = mean of binary AUCs
            auc = np.mean([roc_auc_score(y_test == k, scores[:, k]) for k in labels])
        tpr = float(np.mean([tpr_at_fpr(y_test == k, scores[:, k], 0.01) for k in labels]))
    return {
        "auc": float(auc),
        "balanced_accuracy": float(balanced_accuracy_score(y_test, pred)),
        "accuracy": float(accuracy_score(y_test, pred)),
        "majority_rate": float(np.bincount(y_test, minlength=num_classes).max() / y_test.size),
        "macro_f1": float(f1_score(y_test, pred, labels=labels, average="macro", zero_division=0)),
        "tpr_at_1pct_fpr": tpr,
    }


# ----------------------------------------------------------------------------- validation


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_attacker(attacker) -> str:
    if attacker not in ATTACKERS:
        raise ConfigError(f"attacker must be one of {', '.join(ATTACKERS)}; got {attacker!r}")
    return attacker


def _check_hidden(mlp_hidden) -> tuple[int, ...]:
    try:
        hidden = tuple(mlp_hidden)
    except TypeError:
        hidden = None
    if not hidden or any(
        isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1 for h in hidden
    ):
        raise ConfigError(
            f"mlp_hidden must be a non-empty tuple of integers >= 1, got {mlp_hidden!r}"
        )
    return tuple(int(h) for h in hidden)


def _check_embeddings(embeddings, name: str = "embeddings") -> np.ndarray:
    try:
        X = np.asarray(embeddings, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a numeric (n, d) array") from None
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise ConfigError(
            f"{name} must be a 2-D (n, d) array with n >= 2 and d >= 1, got shape {X.shape}"
        )
    if not np.all(np.isfinite(X)):
        raise ConfigError(f"{name} must be finite (no NaN or inf)")
    return X


def _encode_labels(labels, n: int, name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ConfigError(f"{name} must be a 1-D array of integer class codes, got shape {y.shape}")
    if y.shape[0] != n:
        raise ConfigError(
            f"embeddings and {name} must have the same number of rows, got {n} and {y.shape[0]}"
        )
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ConfigError(f"{name} must hold integer class codes, got dtype {y.dtype}")
    classes, codes = np.unique(y.astype(np.int64), return_inverse=True)
    if classes.size < 2:
        raise ConfigError(f"{name} must hold at least 2 classes, got only class {classes.tolist()}")
    return classes, codes.astype(np.int64)


# ----------------------------------------------------------------------------- attack


def make_attacker(
    attacker: str = "mlp",
    *,
    seed: int = 0,
    mlp_hidden: Sequence[int] = (64,),
    mlp_alpha: float = 1.0,
    max_iter: int = 300,
) -> Pipeline:
    """The unfitted attacker pipeline: ``StandardScaler`` then the classifier.

    ``attacker`` is ``"mlp"`` or ``"logreg"``; ``"flip-aware"`` is a protocol over
    those two (run it with :func:`attack`), not one model, and raises ConfigError.
    ``seed`` is the classifier's ``random_state`` (an int in ``[0, 2**32)``).
    """
    _check_attacker(attacker)
    if attacker not in _FLIP_CANDIDATES:
        raise ConfigError(
            f"make_attacker: attacker={attacker!r} is a protocol (nested cross-validated choice "
            f"of {' or '.join(_FLIP_CANDIDATES)} and a sign), not one model; run it with "
            f"attack(), or build one of {', '.join(_FLIP_CANDIDATES)}"
        )
    if attacker == "mlp":
        clf = MLPClassifier(
            hidden_layer_sizes=_check_hidden(mlp_hidden),
            alpha=float(mlp_alpha),
            learning_rate_init=_MLP_LEARNING_RATE,
            max_iter=max_iter,
            random_state=seed,
        )
    else:
        clf = LogisticRegression(C=1.0, max_iter=max_iter, random_state=seed)
    return Pipeline([("scale", StandardScaler()), ("clf", clf)])


def _balanced(
    idx: np.ndarray, y: np.ndarray, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Undersample every class among ``idx`` to the smallest class's count."""
    members = [idx[y[idx] == k] for k in range(num_classes)]
    m = min(len(g) for g in members)
    return np.sort(np.concatenate([rng.choice(g, size=m, replace=False) for g in members]))


def _splits(y: np.ndarray, folds: int, repeats: int, seed: int, known_fraction: float):
    """Yield ``(repeat, fold, train_idx, test_idx)``."""
    dummy = np.zeros((y.shape[0], 1))
    for r in range(repeats):
        split_seed = _sk_seed(seed, "aia-split", r)
        if known_fraction < 1.0:
            sss = StratifiedShuffleSplit(
                n_splits=1, train_size=known_fraction, random_state=split_seed
            )
            train, test = next(sss.split(dummy, y))
            yield r, 0, train, test
        else:
            skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=split_seed)
            for f, (train, test) in enumerate(skf.split(dummy, y)):
                yield r, f, train, test


def _fit_predict(
    model: Pipeline, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray
) -> tuple[np.ndarray, bool]:
    """Fit with single-threaded BLAS and predict probabilities; also whether it converged."""
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X_train, y_train)
        proba = model.predict_proba(X_test)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    for w in caught:  # re-emit anything that is not a convergence warning
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return proba, converged


def _flip_aware_choice(
    X: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    num_classes: int,
    *,
    inner_folds: int,
    split_seed: int,
    model_seeds: Sequence[int],
    model_kw: dict[str, Any],
) -> tuple[str, int, dict[str, float], bool]:
    """Nested CV on the training rows: the chosen model, its sign, inner AUCs, converged."""
    skf = StratifiedKFold(n_splits=inner_folds, shuffle=True, random_state=split_seed)
    oof = {c: np.zeros((train.size, num_classes)) for c in _FLIP_CANDIDATES}
    converged = True
    for i, (inner_train, inner_test) in enumerate(skf.split(np.zeros((train.size, 1)), y[train])):
        fit_rows, score_rows = train[inner_train], train[inner_test]
        for c in _FLIP_CANDIDATES:
            model = make_attacker(c, seed=model_seeds[i], **model_kw)
            oof[c][inner_test], ok = _fit_predict(model, X[fit_rows], y[fit_rows], X[score_rows])
            converged = converged and ok
    inner_auc = {c: _auc(y[train], oof[c], num_classes) for c in _FLIP_CANDIDATES}
    chosen = max(_FLIP_CANDIDATES, key=lambda c: abs(inner_auc[c] - 0.5))  # ties: first
    return chosen, (1 if inner_auc[chosen] >= 0.5 else -1), inner_auc, converged


def attack(
    embeddings,
    labels,
    *,
    attacker: str = "mlp",
    folds: int = 5,
    repeats: int = 3,
    balance: bool = True,
    seed: int = 0,
    known_fraction: float = 1.0,
    mlp_hidden: Sequence[int] = (64,),
    max_iter: int = 300,
    mlp_alpha: float = 1.0,
    attribute: str = "attribute",
    inner_folds: int = 3,
) -> AttackResult:
    """Attribute-inference attack of one attacker on one attribute (see the module doc).

    ``embeddings`` is the ``(n, d)`` feature matrix (released user embeddings, or
    :func:`upload_features`), ``labels`` the ``(n,)`` integer attribute codes (any
    integers; they are re-coded ``0..K-1`` in sorted order). Drop users with an
    unknown attribute before calling. ``inner_folds`` is the number of inner folds of
    the flip-aware attacker (unused by the others); every class needs at least that
    many users in every (balanced) training part. Returns an :class:`AttackResult`.
    """
    _check_attacker(attacker)
    folds = _check_int("folds", folds, 2)
    inner_folds = _check_int("inner_folds", inner_folds, 2)
    repeats = _check_int("repeats", repeats, 1)
    seed = _check_int("seed", seed, 0)
    max_iter = _check_int("max_iter", max_iter, 1)
    hidden = _check_hidden(mlp_hidden)
    if not isinstance(balance, (bool, np.bool_)):
        raise ConfigError(f"balance must be true or false, got {balance!r}")
    if (
        isinstance(known_fraction, bool)
        or not isinstance(known_fraction, (int, float, np.floating, np.integer))
        or not 0.0 < float(known_fraction) <= 1.0
    ):
        raise ConfigError(f"known_fraction must be a number in (0, 1], got {known_fraction!r}")
    known_fraction = float(known_fraction)
    if (
        isinstance(mlp_alpha, bool)
        or not isinstance(mlp_alpha, (int, float, np.floating, np.integer))
        or not float(mlp_alpha) >= 0.0
    ):
        raise ConfigError(f"mlp_alpha must be a number >= 0, got {mlp_alpha!r}")
    X = _check_embeddings(embeddings)
    classes, y = _encode_labels(labels, X.shape[0])
    K = int(classes.size)
    counts = np.bincount(y, minlength=K)
    smallest = int(np.argmin(counts))
    if known_fraction == 1.0 and counts[smallest] < folds:
        raise ConfigError(
            f"folds={folds} needs at least {folds} users in every class; "
            f"class {classes[smallest]} has {counts[smallest]} (lower folds or drop that class)"
        )
    if known_fraction < 1.0:
        n_known = int(np.floor(known_fraction * X.shape[0]))
        if counts[smallest] < 2 or n_known < K or X.shape[0] - n_known < K:
            raise ConfigError(
                f"known_fraction={known_fraction} leaves no known or no unknown user in some class "
                f"(n={X.shape[0]}, smallest class {classes[smallest]} has {counts[smallest]}); "
                "use a value in (0, 1] that keeps every class on both sides"
            )

    splits = list(_splits(y, folds, repeats, seed, known_fraction))
    for _, _, train, test in splits:
        if known_fraction < 1.0 and (np.unique(y[train]).size < K or np.unique(y[test]).size < K):
            raise ConfigError(
                f"known_fraction={known_fraction} leaves some class without known or "
                "unknown users; use a value in (0, 1] that keeps every class on both sides"
            )
    if attacker == "flip-aware":
        # Balancing keeps the smallest class whole, so this is the balanced part's count.
        fewest = min(int(np.bincount(y[train], minlength=K).min()) for _, _, train, _ in splits)
        if fewest < inner_folds:
            raise ConfigError(
                f"inner_folds={inner_folds} needs at least {inner_folds} users of every class "
                f"in every training part, but one has only {fewest}; lower inner_folds, "
                "raise folds or known_fraction, or drop that class"
            )

    model_kw: dict[str, Any] = {"mlp_hidden": hidden, "mlp_alpha": mlp_alpha, "max_iter": max_iter}
    rows = []
    for r, f, train, test in splits:
        if balance:
            train = _balanced(
                train, y, K, np.random.default_rng(derive_seed(seed, "aia-balance", r, f))
            )
        model_seed = _sk_seed(seed, "aia-model", r, f)
        extra: dict = {}
        sign = 1
        if attacker == "flip-aware":
            chosen, sign, inner_auc, inner_converged = _flip_aware_choice(
                X,
                y,
                train,
                K,
                inner_folds=inner_folds,
                split_seed=_sk_seed(seed, "aia-inner", r, f),
                model_seeds=[
                    _sk_seed(seed, "aia-inner-model", r, f, i) for i in range(inner_folds)
                ],
                model_kw=model_kw,
            )
            model = make_attacker(chosen, seed=model_seed, **model_kw)
            extra = {"chosen": chosen, "sign": sign, "inner_auc": inner_auc}
        else:
            inner_converged = True
            model = make_attacker(attacker, seed=model_seed, **model_kw)
        proba, converged = _fit_predict(model, X[train], y[train], X[test])
        row = {"repeat": r, "fold": f, "n_train": int(train.size), "n_test": int(test.size)}
        row.update(_fold_metrics(y[test], proba, K, sign))
        row.update(extra)
        row.update(
            {
                "converged": converged and inner_converged,
                "model_seed": model_seed,
                "train_index": train,
                "test_index": test,
            }
        )
        rows.append(row)

    summary = {}
    for m in _METRICS:
        vals = np.array([row[m] for row in rows])
        summary[m] = float(vals.mean())
        summary[m + "_std"] = float(vals.std())
    summary["auc_sym"] = max(summary["auc"], 1.0 - summary["auc"])
    summary["majority_rate"] = float(np.mean([row["majority_rate"] for row in rows]))
    return AttackResult(
        attribute=str(attribute),
        attacker=attacker,
        num_classes=K,
        n=int(X.shape[0]),
        **summary,
        chance_auc=0.5,
        per_fold=rows,
        classes=classes.tolist(),
        settings={
            "folds": folds,
            "repeats": repeats,
            "balance": bool(balance),
            "seed": seed,
            "known_fraction": known_fraction,
            "mlp_hidden": list(hidden),
            "mlp_alpha": float(mlp_alpha),
            "max_iter": max_iter,
            "inner_folds": inner_folds,
        },
    )


def attack_many(
    embeddings, attributes: Mapping[str, np.ndarray], attackers: Sequence[str] = ATTACKERS, **kw
) -> list[AttackResult]:
    """:func:`attack` for every attribute × attacker (attribute-major order).

    ``attributes`` maps a name to its ``(n,)`` label array; ``kw`` goes to
    :func:`attack` (same ``seed`` → the same folds for every attacker on an attribute).
    ``attackers`` is any subset of :data:`ATTACKERS`, by default all three. Cost per
    evaluation: one fit each for ``"mlp"`` and ``"logreg"``, ``2 * inner_folds + 1``
    for ``"flip-aware"`` (``inner_folds + 1`` MLP fits among them), so the default
    costs about ``inner_folds + 2`` times ``("mlp",)`` alone (5x with
    ``inner_folds=3``; MLP fits dominate). Pass ``attackers=("mlp", "logreg")`` for
    the cheaper plain pair.
    """
    if not isinstance(attributes, Mapping) or not attributes:
        raise ConfigError("attributes must be a non-empty dict {name: labels}")
    if isinstance(attackers, str):
        attackers = (attackers,)
    attackers = tuple(attackers)
    if not attackers:
        raise ConfigError(f"attackers must name at least one of {', '.join(ATTACKERS)}")
    for a in attackers:
        _check_attacker(a)
    if "attribute" in kw or "attacker" in kw:
        raise ConfigError(
            "attack_many: pass attribute names as the keys of attributes and "
            "attackers as attackers=, not attribute=/attacker="
        )
    X = _check_embeddings(embeddings)
    return [
        attack(X, labels, attacker=a, attribute=str(name), **kw)
        for name, labels in attributes.items()
        for a in attackers
    ]


def results_table(results: Sequence[AttackResult], *, digits: int = 3) -> str:
    """Markdown table of mean ± std per attribute and attacker.

    Columns: attribute | attacker | K | n | AUC | sym. AUC | bal. acc | accuracy
    (majority) | macro-F1 | TPR@1%FPR. "sym. AUC" is :attr:`AttackResult.auc_sym`
    (no std: it is a function of the mean); the accuracy cell is ``mean ± std
    (majority rate)``, e.g. ``0.612 ± 0.030 (0.710)``. Chance is AUC 0.5, balanced
    accuracy 1/K, TPR@1%FPR 0.01; accuracy is read against the majority rate.
    """

    def cell(mean: float, std: float) -> str:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    lines = [
        "| attribute | attacker | K | n | AUC | sym. AUC | bal. acc | accuracy (majority) "
        "| macro-F1 | TPR@1%FPR |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        lines.append(
            f"| {res.attribute} | {res.attacker} | {res.num_classes} | {res.n} | "
            f"{cell(res.auc, res.auc_std)} | {res.auc_sym:.{digits}f} | "
            f"{cell(res.balanced_accuracy, res.balanced_accuracy_std)} | "
            f"{cell(res.accuracy, res.accuracy_std)} ({res.majority_rate:.{digits}f}) | "
            f"{cell(res.macro_f1, res.macro_f1_std)} | "
            f"{cell(res.tpr_at_1pct_fpr, res.tpr_at_1pct_fpr_std)} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- features


def age_buckets(ages) -> tuple[np.ndarray, list[str]]:
    """MovieLens-1M age bands: codes 0..6 and their names.

    The names are ``<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+``. This reuses
    :func:`fedrec.data.recsys.age_bucket`; ML-1M's own age codes (1, 18, 25, 35, 45,
    50, 56) map onto the same bands.
    """
    a = np.asarray(ages)
    if a.ndim != 1 or not (
        np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    ):
        raise ConfigError(
            f"ages must be a 1-D numeric array, got shape {a.shape} and dtype {a.dtype}"
        )
    if not np.all(np.isfinite(a)) or (a.size and a.min() < 0):
        raise ConfigError("ages must be finite and non-negative")
    return age_bucket(a), list(AGE_BUCKETS)


def upload_features(
    item_ids_per_user: Sequence,
    deltas_per_user: Sequence | None,
    num_items: int,
    kind: str = "touched",
) -> np.ndarray:
    """Per-user attack features from federated item-table uploads (threat model (a)).

    ``item_ids_per_user[u]`` lists the item rows client ``u`` uploaded (concatenate
    rounds for a multi-round view); ``deltas_per_user[u]`` is the matching
    ``(len(item_ids_per_user[u]), d)`` array of row updates (unused, may be ``None``,
    for ``kind="touched"``).

    * ``"touched"`` → ``(n, num_items)`` float multi-hot: 1 where the user uploaded
      that row at least once;
    * ``"delta-mean"`` → ``(n, d)`` mean of the user's uploaded rows (zeros for a user
      with no upload);
    * ``"delta-sum"`` → ``(n, d)`` their sum.
    """
    if kind not in UPLOAD_FEATURE_KINDS:
        raise ConfigError(f"kind must be one of {', '.join(UPLOAD_FEATURE_KINDS)}; got {kind!r}")
    num_items = _check_int("num_items", num_items, 1)
    n = len(item_ids_per_user)
    ids = []
    for u, raw in enumerate(item_ids_per_user):
        a = np.asarray(raw)
        if a.size == 0:
            a = a.reshape(0).astype(np.int64)
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ConfigError(f"item_ids_per_user[{u}] must be a 1-D array of integer item ids")
        if a.size and (a.min() < 0 or a.max() >= num_items):
            raise ConfigError(f"item_ids_per_user[{u}] has ids outside [0, num_items={num_items})")
        ids.append(a.astype(np.int64))
    if kind == "touched":
        out = np.zeros((n, num_items), dtype=np.float64)
        for u, a in enumerate(ids):
            out[u, a] = 1.0
        return out

    if deltas_per_user is None or len(deltas_per_user) != n:
        got = "None" if deltas_per_user is None else str(len(deltas_per_user))
        raise ConfigError(
            f"deltas_per_user must have one entry per user for kind={kind!r} "
            f"(expected {n}, got {got})"
        )
    deltas, dim = [], None
    for u, raw in enumerate(deltas_per_user):
        try:
            D = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"deltas_per_user[{u}] must be a numeric (k, d) array") from None
        if D.ndim != 2 or D.shape[0] != ids[u].size:
            raise ConfigError(
                f"deltas_per_user[{u}] must have shape ({ids[u].size}, d) to match "
                f"item_ids_per_user[{u}], got {D.shape}"
            )
        if dim is None:
            dim = D.shape[1]
        elif D.shape[1] != dim:
            raise ConfigError(
                f"deltas_per_user[{u}] has width {D.shape[1]}, expected d={dim} as for user 0"
            )
        if not np.all(np.isfinite(D)):
            raise ConfigError(f"deltas_per_user[{u}] must be finite")
        deltas.append(D)
    if dim is None or dim < 1:
        raise ConfigError(
            "deltas_per_user must give the update width d >= 1 (pass (0, d) arrays "
            "for users without uploads)"
        )
    out = np.zeros((n, dim), dtype=np.float64)
    for u, D in enumerate(deltas):
        if D.shape[0]:
            out[u] = D.mean(axis=0) if kind == "delta-mean" else D.sum(axis=0)
    return out

"""Unlearning evaluation API: a registry of pure metric functions (numpy / scikit-learn).

Every metric is a pure function of model outputs (scores, weights, top-K lists, per-user
values) that returns a float, registered with three tags
(``reference/unlearning_attack.md`` §5.4 and §6.2):

- ``axis``: ``completeness`` (is the forgotten data's influence gone), ``utility`` (is the
  model still good on what was kept), ``efficiency``, ``fairness``, ``robustness``;
- ``target``: what was forgotten: ``interaction``, ``user``, ``client``, ``item``,
  ``attribute``, ``sample``, ``concept`` (``any`` where the metric does not depend on it);
- ``ideal``: how to read it: ``match-retrain`` (the retrained model's value is the goal,
  report the distance to it), ``chance`` (0.5 for an AUC), ``low`` or ``high``.

:func:`compare` puts the Original, Retrain and unlearned models' values side by side with
the distance to Retrain, the reporting convention of both surveys.

Definitions (choices where the sources leave them open):

- ``mia_auc``: loss-based membership inference, the AUC of the model's scores for the
  forgotten pairs (label 1) against never-seen pairs (label 0); scikit-learn's
  ``roc_auc_score`` (ties count one half). Scores are "higher = more member-like" (an
  interaction score, or a negative loss). 0.5 = the model cannot tell them apart.
- ``mia_tpr_at_fpr``: the highest true-positive rate among the ROC points (scikit-learn's
  ``roc_curve``, all thresholds) whose false-positive rate is at most ``fpr`` (default
  1 %): the attack's power at a low false-alarm rate (Carlini et al., "Membership
  inference attacks from first principles"), without interpolating between thresholds.
- ``privacy_leakage``: MUSE's ``(AUC_unlearned - AUC_retrain) / AUC_retrain`` (ideal 0).
- ``parameter_distance``: Euclidean distance between two models' flattened parameters,
  divided by the norm of the second (the reference) one; 0 = identical.
- ``score_distance``: mean absolute difference of two score arrays on the same pairs.
- ``topk_overlap``: mean over users of ``|TopK_a(u) ∩ TopK_b(u)| / K`` (padding ``-1``
  entries are not items).
- ``metric_gap``: ``|m_method - m_retrain|`` for any utility metric on a split.
- ``active_inactive_gap``: CURE4Rec's fairness view: the mean per-user utility of the
  active users (the top ``share`` by interaction count, default 5 %, ties broken by lower
  user id) minus that of the others (signed).
- ``speedup``: ``seconds_retrain / seconds_method``.
- ``recommender_mia_auc``: the recommender membership-inference attack of Zhang et al.
  (CCS'21). A user's feature is the centroid of the item vectors of its recommended list
  minus the centroid of its interacted items (:func:`mia_user_features`); an attack
  classifier (scikit-learn ``MLPClassifier``, one hidden layer of 32, seeded) is trained
  on a *shadow* model's users with known membership and scored on the target model's
  users; the value is the attack's AUC on the target users (members: the forgotten
  users, non-members: never-seen users). Item vectors are the attacker's choice (the
  paper factorizes the public interaction matrix); the caller passes them.

Pure: no flwr import. New metrics register with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.errors import ConfigError

__all__ = [
    "AXES",
    "IDEALS",
    "TARGETS",
    "MetricSpec",
    "active_inactive_gap",
    "mia_user_features",
    "recommender_mia_auc",
    "compare",
    "get_metric",
    "list_metrics",
    "metric_gap",
    "mia_auc",
    "mia_tpr_at_fpr",
    "parameter_distance",
    "privacy_leakage",
    "register",
    "score_distance",
    "speedup",
    "topk_overlap",
    "utility_ratio",
    "relearn_recovery",
    "min_k_score",
    "zlib_ratio_score",
    "truth_ratio",
    "forget_quality",
]

AXES: tuple[str, ...] = ("completeness", "utility", "efficiency", "fairness", "robustness")
TARGETS: tuple[str, ...] = (
    "interaction",
    "user",
    "client",
    "item",
    "attribute",
    "sample",
    "concept",
    "any",
)
IDEALS: tuple[str, ...] = ("match-retrain", "chance", "low", "high")


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: the function and its tags."""

    name: str
    fn: Callable[..., float]
    axis: str
    targets: tuple[str, ...]
    ideal: str
    doc: str


_REGISTRY: dict[str, MetricSpec] = {}


def _choice(kind: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ConfigError(f"{kind} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def register(
    name: str, *, axis: str, targets: Sequence[str] = ("any",), ideal: str
) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Decorator: register ``fn`` as metric ``name`` with its tags (one clear error for a
    duplicate name or an unknown tag)."""
    _choice("axis", axis, AXES)
    _choice("ideal", ideal, IDEALS)
    for t in targets:
        _choice("target", t, TARGETS)

    def deco(fn: Callable[..., float]) -> Callable[..., float]:
        if name in _REGISTRY:
            raise ConfigError(f"unlearning metric {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = MetricSpec(name, fn, axis, tuple(targets), ideal, doc)
        return fn

    return deco


def get_metric(name: str) -> MetricSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown unlearning metric {name!r}; registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_metrics(axis: str | None = None, target: str | None = None) -> list[MetricSpec]:
    """Registered metrics, filtered by axis and/or target (``any``-tagged ones always match
    a target), sorted by name."""
    if axis is not None:
        _choice("axis", axis, AXES)
    if target is not None:
        _choice("target", target, TARGETS)
    return [
        s
        for _, s in sorted(_REGISTRY.items())
        if (axis is None or s.axis == axis)
        and (target is None or target in s.targets or "any" in s.targets)
    ]


def _scores(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ConfigError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must hold finite numbers")
    return arr


def _mia_inputs(forget: Any, unseen: Any) -> tuple[np.ndarray, np.ndarray]:
    f, u = _scores("forget scores", forget), _scores("never-seen scores", unseen)
    return np.concatenate([np.ones(f.size), np.zeros(u.size)]), np.concatenate([f, u])


# ------------------------------------------------------------------ completeness
@register(
    "mia_auc",
    axis="completeness",
    targets=("interaction", "user", "client", "sample"),
    ideal="match-retrain",
)
def mia_auc(forget_scores: Any, unseen_scores: Any) -> float:
    """Loss-based MIA: AUC of forgotten (member) vs never-seen scores; 0.5 = indistinguishable."""
    from sklearn.metrics import roc_auc_score

    y, s = _mia_inputs(forget_scores, unseen_scores)
    return float(roc_auc_score(y, s))


@register(
    "mia_tpr_at_fpr",
    axis="completeness",
    targets=("interaction", "user", "client", "sample"),
    ideal="match-retrain",
)
def mia_tpr_at_fpr(forget_scores: Any, unseen_scores: Any, fpr: float = 0.01) -> float:
    """MIA true-positive rate at a false-positive rate of at most ``fpr``."""
    from sklearn.metrics import roc_curve

    if not 0.0 <= float(fpr) <= 1.0:
        raise ConfigError(f"fpr must be in [0, 1], got {fpr!r}")
    y, s = _mia_inputs(forget_scores, unseen_scores)
    f, t, _ = roc_curve(y, s, drop_intermediate=False)
    return float(t[f <= float(fpr) + 1e-12].max())


@register("privacy_leakage", axis="completeness", targets=("any",), ideal="low")
def privacy_leakage(auc_unlearned: float, auc_retrain: float) -> float:
    """MUSE PrivLeak: (AUC_unlearned - AUC_retrain) / AUC_retrain; 0 = as private as retrain."""
    if not auc_retrain > 0:
        raise ConfigError(f"auc_retrain must be > 0, got {auc_retrain!r}")
    return (float(auc_unlearned) - float(auc_retrain)) / float(auc_retrain)


def _flat(name: str, weights: Any) -> np.ndarray:
    if isinstance(weights, np.ndarray):
        return weights.astype(np.float64).ravel()
    parts = [np.asarray(w, dtype=np.float64).ravel() for w in weights]
    if not parts:
        raise ConfigError(f"{name} has no parameters")
    return np.concatenate(parts)


@register("parameter_distance", axis="completeness", targets=("any",), ideal="low")
def parameter_distance(weights: Any, reference: Any) -> float:
    """||w - w_ref|| / ||w_ref|| over the flattened parameters (0 = the reference model)."""
    a, b = _flat("weights", weights), _flat("reference", reference)
    if a.shape != b.shape:
        raise ConfigError(f"the models differ in size: {a.size} vs {b.size} parameters")
    nb = float(np.linalg.norm(b))
    if nb == 0:
        raise ConfigError("the reference model's parameters are all zero")
    return float(np.linalg.norm(a - b)) / nb


@register("score_distance", axis="completeness", targets=("any",), ideal="low")
def score_distance(scores: Any, reference_scores: Any) -> float:
    """Mean absolute difference of two models' scores on the same pairs."""
    a, b = _scores("scores", scores), _scores("reference scores", reference_scores)
    if a.shape != b.shape:
        raise ConfigError(f"score arrays differ in size: {a.size} vs {b.size}")
    return float(np.abs(a - b).mean())


@register("topk_overlap", axis="completeness", targets=("user", "client", "item"), ideal="high")
def topk_overlap(topk: Any, reference_topk: Any) -> float:
    """Mean over users of |TopK(u) ∩ TopK_ref(u)| / K (K = list width; -1 is padding)."""
    a = np.asarray(topk, dtype=np.int64)
    b = np.asarray(reference_topk, dtype=np.int64)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0 or a.shape[1] == 0:
        raise ConfigError(
            f"topk lists must be equal, non-empty (n_users, K) arrays; got {a.shape}, {b.shape}"
        )
    K = a.shape[1]
    total = 0
    for ra, rb in zip(a, b):
        total += len(set(ra[ra >= 0].tolist()) & set(rb[rb >= 0].tolist()))
    return total / (a.shape[0] * K)


@register("metric_gap", axis="completeness", targets=("any",), ideal="low")
def metric_gap(value: float, retrain_value: float) -> float:
    """|m_method - m_retrain| for a utility metric on the forget or the retain split."""
    return abs(float(value) - float(retrain_value))


def mia_user_features(item_vectors: Any, recommended: Any, interacted: Any) -> np.ndarray:
    """CCS'21 attack features ``(n_users, d)``: centroid of the recommended items' vectors
    minus the centroid of the interacted items' vectors (``-1`` pads recommended lists)."""
    V = np.asarray(item_vectors, dtype=np.float64)
    R = np.asarray(recommended, dtype=np.int64)
    if V.ndim != 2 or R.ndim != 2:
        raise ConfigError(
            f"item_vectors must be (n_items, d) and recommended (n_users, K); got {V.shape}, "
            f"{R.shape}"
        )
    if len(interacted) != R.shape[0]:
        raise ConfigError(f"interacted has {len(interacted)} users, recommended has {R.shape[0]}")
    out = np.zeros((R.shape[0], V.shape[1]))
    for u in range(R.shape[0]):
        rec = R[u][R[u] >= 0]
        hist = np.asarray(interacted[u], dtype=np.int64)
        if rec.size == 0 or hist.size == 0:
            raise ConfigError(f"user {u} needs a non-empty recommended list and history")
        if max(rec.max(), hist.max()) >= V.shape[0] or min(rec.min(), hist.min()) < 0:
            raise ConfigError(f"user {u} refers to an item outside 0..{V.shape[0] - 1}")
        out[u] = V[rec].mean(axis=0) - V[hist].mean(axis=0)
    return out


@register(
    "recommender_mia_auc",
    axis="completeness",
    targets=("user", "client"),
    ideal="match-retrain",
)
def recommender_mia_auc(
    shadow_features: Any,
    shadow_members: Any,
    target_features: Any,
    target_members: Any,
    seed: int = 0,
) -> float:
    """CCS'21 recommender MIA: shadow-trained attack, AUC on the target model's users."""
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    Xs = np.asarray(shadow_features, dtype=np.float64)
    ys = np.asarray(shadow_members).astype(int).ravel()
    Xt = np.asarray(target_features, dtype=np.float64)
    yt = np.asarray(target_members).astype(int).ravel()
    for name, X, y in (("shadow", Xs, ys), ("target", Xt, yt)):
        if X.ndim != 2 or X.shape[0] != y.size:
            raise ConfigError(f"{name} features must be (n_users, d) with one label per user")
        if set(np.unique(y)) != {0, 1}:
            raise ConfigError(f"{name} users need both members (1) and non-members (0)")
    if Xs.shape[1] != Xt.shape[1]:
        raise ConfigError("shadow and target features must have the same dimension")
    scaler = StandardScaler().fit(Xs)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=1000, random_state=int(seed))
    clf.fit(scaler.transform(Xs), ys)
    return float(roc_auc_score(yt, clf.predict_proba(scaler.transform(Xt))[:, 1]))


# ------------------------------------------------------------------ fairness
@register("active_inactive_gap", axis="fairness", targets=("any",), ideal="low")
def active_inactive_gap(per_user: Any, interactions: Any, share: float = 0.05) -> float:
    """CURE4Rec: mean utility of the most active users (top share) minus the others'."""
    v = np.asarray(per_user, dtype=np.float64).ravel()
    n = np.asarray(interactions, dtype=np.float64).ravel()
    if v.shape != n.shape or v.size < 2:
        raise ConfigError(
            "per_user and interactions must be equal-length arrays of at least 2 users; "
            f"got {v.size} and {n.size}"
        )
    if not 0.0 < float(share) < 1.0:
        raise ConfigError(f"share must be in (0, 1), got {share!r}")
    n_active = min(v.size - 1, max(1, int(np.floor(share * v.size + 0.5))))
    order = np.lexsort((np.arange(v.size), -n))  # count descending, lower id first
    active = np.zeros(v.size, dtype=bool)
    active[order[:n_active]] = True
    a, rest = v[active], v[~active]
    a, rest = a[~np.isnan(a)], rest[~np.isnan(rest)]
    if a.size == 0 or rest.size == 0:
        raise ConfigError("both the active and the inactive group need a defined utility")
    return float(a.mean() - rest.mean())


# ------------------------------------------------------------------ utility and robustness
@register("utility_ratio", axis="utility", targets=("any",), ideal="high")
def utility_ratio(value: float, reference_value: float) -> float:
    """A utility metric (NDCG@10 on retained users, accuracy) as a share of a reference's
    (the retrained or the unsharded model): 1 = as useful."""
    if not float(reference_value) > 0:
        raise ConfigError(f"reference_value must be > 0, got {reference_value!r}")
    return float(value) / float(reference_value)


@register(
    "relearn_recovery",
    axis="robustness",
    targets=("user", "client", "interaction", "sample"),
    ideal="match-retrain",
)
def relearn_recovery(completeness_relearned: float, completeness_unlearned: float) -> float:
    """How far a completeness metric (an MIA AUC) moves after n relearning rounds on part of
    the forget set: relearned minus unlearned. A model that truly forgot moves like the
    retrained one; hidden traces make it move further."""
    return float(completeness_relearned) - float(completeness_unlearned)


# ------------------------------------------------------------------ language models
# Per-sequence membership scores (higher = more likely a training member), fed to mia_auc;
# TOFU's truth ratio and forget quality (Maini et al. 2024).
@register("min_k_score", axis="completeness", targets=("sample",), ideal="match-retrain")
def min_k_score(token_logprobs: Any, k: float = 0.2) -> float:
    """Min-K% prob (Shi et al. 2024): the mean of the lowest ``k`` share of a sequence's
    token log-probabilities (at least one token)."""
    lp = np.sort(_scores("token_logprobs", token_logprobs))
    if not 0.0 < float(k) <= 1.0:
        raise ConfigError(f"k must be in (0, 1], got {k!r}")
    n = max(1, int(np.ceil(float(k) * lp.size)))
    return float(lp[:n].mean())


@register("zlib_ratio_score", axis="completeness", targets=("sample",), ideal="match-retrain")
def zlib_ratio_score(sum_logprob: float, text: str) -> float:
    """zlib-ratio MIA score (Carlini et al. 2021): the sequence log-likelihood divided by
    the zlib-compressed length of its text in bytes (memorised text is likely yet not
    merely repetitive)."""
    import zlib

    n = len(zlib.compress(str(text).encode("utf-8")))
    return float(sum_logprob) / n


@register("truth_ratio", axis="completeness", targets=("sample", "concept"), ideal="match-retrain")
def truth_ratio(paraphrased_logprob: float, perturbed_logprobs: Any) -> float:
    """TOFU's truth ratio from length-normalised log-probabilities (mean log-probability per
    token): ``mean_j exp(lp_perturbed_j) / exp(lp_paraphrased)``. Near 1: the model no longer
    prefers the true answer over wrong ones."""
    pert = _scores("perturbed_logprobs", perturbed_logprobs)
    return float(np.mean(np.exp(pert - float(paraphrased_logprob))))


@register("forget_quality", axis="completeness", targets=("sample", "concept"), ideal="high")
def forget_quality(truth_ratios: Any, retain_model_truth_ratios: Any) -> float:
    """TOFU's forget quality: the two-sample Kolmogorov-Smirnov p-value between the
    unlearned model's and the retain-only model's truth ratios on the forget set (high =
    indistinguishable from never having trained on it)."""
    from scipy.stats import ks_2samp

    a = _scores("truth_ratios", truth_ratios)
    b = _scores("retain_model_truth_ratios", retain_model_truth_ratios)
    return float(ks_2samp(a, b).pvalue)


# ------------------------------------------------------------------ efficiency
@register("speedup", axis="efficiency", targets=("any",), ideal="high")
def speedup(seconds_method: float, seconds_retrain: float) -> float:
    """seconds_retrain / seconds_method (> 1: faster than retraining)."""
    if not float(seconds_method) > 0:
        raise ConfigError(f"seconds_method must be > 0, got {seconds_method!r}")
    return float(seconds_retrain) / float(seconds_method)


# ------------------------------------------------------------------ reports
def compare(name: str, original: float, retrain: float, method: float) -> dict[str, float | str]:
    """One report row: Original, Retrain and the method side by side, with the method's
    distance to Retrain (the reporting convention for every completeness metric)."""
    spec = get_metric(name)
    return {
        "metric": spec.name,
        "axis": spec.axis,
        "ideal": spec.ideal,
        "original": float(original),
        "retrain": float(retrain),
        "method": float(method),
        "distance_to_retrain": abs(float(method) - float(retrain)),
    }

"""Accuracy and group-fairness metrics computed from confusion counts (numpy only)."""

from fedrec.metrics.fairness import (
    GAP_KEYS,
    FederatedMetrics,
    confusion_counts,
    federated_metrics,
    group_metrics,
    metrics_from_counts,
)

__all__ = [
    "GAP_KEYS",
    "FederatedMetrics",
    "confusion_counts",
    "federated_metrics",
    "group_metrics",
    "metrics_from_counts",
]

#: Metric names reported per round (global, per client, per group) and what they mean.
METRICS = {
    "accuracy": "share of correct test predictions (from summed confusion counts)",
    "dp_gap": (
        "demographic parity, max over classes and group pairs of |P(Yhat=y|A=a)-P(Yhat=y|A=b)|"
    ),
    "dp_subgroup_max": "max over groups and classes of |P(Yhat=y|A=a)-P(Yhat=y)|",
    "eop_gap": "equal opportunity, max TPR gap between groups (class 1 if binary)",
    "eo_gap": "equalized odds, max of TPR and FPR gaps between groups",
    "*_local_max / *_local_mean": "worst / mean client value of a gap (D_local = max)",
    "accuracy_local_min": "lowest client accuracy",
}
__all__.append("METRICS")

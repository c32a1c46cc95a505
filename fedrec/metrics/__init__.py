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

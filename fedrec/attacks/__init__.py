"""Privacy attacks used to evaluate defences (pure numpy / scikit-learn, no Flower).

:mod:`.attribute_inference` is the attribute-inference suite (MLP and logistic-regression
attackers on user embeddings or on per-user upload features), following the RAID / LEGO
attacker protocol, plus a flip-aware attacker and the symmetric AUC for defences whose
in-sample equalisation inverts the attribute on held-out users. See its module docstring
for the threat models and the protocol.
"""

from __future__ import annotations

from .attribute_inference import (
    ATTACKERS,
    UPLOAD_FEATURE_KINDS,
    AttackResult,
    age_buckets,
    attack,
    attack_many,
    make_attacker,
    results_table,
    tpr_at_fpr,
    upload_features,
)

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

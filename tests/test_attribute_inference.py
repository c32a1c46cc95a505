"""Attribute-inference suite: planted signal, sklearn agreement, determinism, errors.

Small synthetic data and small MLPs so the whole file runs in a few seconds.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score, roc_curve
from threadpoolctl import threadpool_limits

from fedrec.attacks import (
    ATTACKERS,
    AttackResult,
    age_buckets,
    attack,
    attack_many,
    make_attacker,
    results_table,
    tpr_at_fpr,
    upload_features,
)
from fedrec.data.recsys import AGE_BUCKETS, age_bucket, synthetic_recommendation
from fedrec.errors import ConfigError

FAST = dict(folds=3, repeats=1, mlp_hidden=(8,), max_iter=100)


def planted(n: int, d: int, s: float, probs, seed: int = 0):
    """Gaussian noise plus ``s`` times a per-class unit direction (class 0 gets none)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(probs), size=n, p=probs)
    directions = np.linalg.qr(rng.normal(size=(d, d)))[0][: len(probs)]  # orthonormal rows
    directions[0] = 0.0
    return rng.normal(size=(n, d)) + s * directions[y], y


# ----------------------------------------------------------------------------- planted signal


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_planted_binary_signal_is_found_and_noise_is_chance(attacker):
    X, y = planted(300, 8, 3.0, [0.5, 0.5], seed=1)
    strong = attack(X, y, attacker=attacker, **FAST)
    assert strong.auc > 0.9 and strong.balanced_accuracy > 0.8
    assert strong.num_classes == 2 and strong.n == 300 and len(strong.per_fold) == 3

    X0, y0 = planted(300, 8, 0.0, [0.5, 0.5], seed=2)
    null = attack(X0, y0, attacker=attacker, **FAST)
    assert abs(null.auc - 0.5) < 0.08
    assert abs(null.balanced_accuracy - null.chance_balanced_accuracy) < 0.08
    assert null.chance_auc == 0.5 and null.tpr_at_1pct_fpr < 0.1


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_planted_four_class_signal_macro_auc(attacker):
    X, y = planted(400, 8, 3.0, [0.25] * 4, seed=3)
    strong = attack(X, y, attacker=attacker, **FAST)
    assert strong.num_classes == 4 and strong.auc > 0.9

    X0, y0 = planted(400, 8, 0.0, [0.25] * 4, seed=4)
    null = attack(X0, y0, attacker=attacker, **FAST)
    assert abs(null.auc - 0.5) < 0.08
    assert abs(null.balanced_accuracy - 0.25) < 0.08


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_imbalanced_90_10_is_scored_against_balanced_chance(attacker):
    X, y = planted(400, 8, 0.0, [0.9, 0.1], seed=5)
    res = attack(X, y, attacker=attacker, **FAST)
    assert abs(res.balanced_accuracy - 0.5) < 0.08  # plain accuracy of "always 0" would be 0.9
    assert abs(res.auc - 0.5) < 0.08
    for row in res.per_fold:  # training part undersampled to the minority class
        counts = np.bincount(y[row["train_index"]], minlength=2)
        assert (
            counts[0]
            == counts[1]
            == np.bincount(y[np.setdiff1d(np.arange(400), row["test_index"])]).min()
        )
        assert row["n_test"] == row["test_index"].size
    unbalanced = attack(X, y, attacker=attacker, balance=False, **FAST)
    assert unbalanced.per_fold[0]["n_train"] > res.per_fold[0]["n_train"]
    assert unbalanced.balanced_accuracy < 0.6


# ----------------------------------------------------------------------------- sklearn agreement


@pytest.mark.parametrize("attacker,num_classes", [("logreg", 2), ("mlp", 3)])
def test_fold_metrics_match_sklearn_on_the_recorded_split(attacker, num_classes):
    X, y = planted(240, 6, 1.0, [1 / num_classes] * num_classes, seed=6)
    res = attack(X, y, attacker=attacker, **FAST)
    row = res.per_fold[1]
    model = make_attacker(
        attacker, seed=row["model_seed"], mlp_hidden=FAST["mlp_hidden"], max_iter=FAST["max_iter"]
    )
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X[row["train_index"]], y[row["train_index"]])
    yt = y[row["test_index"]]
    proba = model.predict_proba(X[row["test_index"]])
    pred = model.predict(X[row["test_index"]])
    if num_classes == 2:
        auc = roc_auc_score(yt, proba[:, 1])
        fpr, tpr, _ = roc_curve(yt, proba[:, 1])
        tpr1 = tpr[np.where(fpr <= 0.01)[0][-1]]  # untied scores: step value == interpolated
    else:
        auc = roc_auc_score(yt, proba, multi_class="ovr", average="macro")
        tpr1 = np.mean([tpr_at_fpr(yt == k, proba[:, k]) for k in range(num_classes)])
    assert row["auc"] == pytest.approx(auc, abs=1e-12)
    assert row["tpr_at_1pct_fpr"] == pytest.approx(tpr1, abs=1e-12)
    assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yt, pred), abs=1e-12)
    assert row["macro_f1"] == pytest.approx(f1_score(yt, pred, average="macro"), abs=1e-12)
    for m in ("auc", "balanced_accuracy", "macro_f1", "tpr_at_1pct_fpr"):
        vals = [r[m] for r in res.per_fold]
        assert getattr(res, m) == pytest.approx(np.mean(vals), abs=1e-12)
        assert getattr(res, m + "_std") == pytest.approx(np.std(vals), abs=1e-12)


def test_folds_partition_users_and_are_stratified():
    X, y = planted(150, 4, 1.0, [0.7, 0.3], seed=7)
    res = attack(X, y, attacker="logreg", folds=5, repeats=2)
    assert len(res.per_fold) == 10
    for r in range(2):
        tests = [row["test_index"] for row in res.per_fold if row["repeat"] == r]
        assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(150))
        for t in tests:
            assert abs(np.mean(y[t]) - np.mean(y)) < 0.05
    for row in res.per_fold:
        assert np.intersect1d(row["train_index"], row["test_index"]).size == 0


def test_tpr_at_fpr_on_hand_made_roc():
    # Staircase (no ties): ROC points (0,0) (0,.25) (.25,.25) (.25,.5) (.5,.5) (.5,.75) (.5,1) ...
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.3, 0.2, 0.7, 0.4, 0.1, 0.05]
    assert tpr_at_fpr(y, s, 0.01) == 0.25
    assert tpr_at_fpr(y, s, 0.25) == 0.5
    assert tpr_at_fpr(y, s, 0.3) == 0.5
    assert tpr_at_fpr(y, s, 0.5) == 1.0
    assert tpr_at_fpr(y, s, 0.0) == 0.25
    # A tie between a positive and a negative: diagonal segment (0, .5) -> (.5, 1).
    y2, s2 = [1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]
    assert tpr_at_fpr(y2, s2, 0.1) == pytest.approx(0.6)
    assert tpr_at_fpr(y2, s2, 0.1, interpolate=False) == 0.5
    assert tpr_at_fpr(y2, s2, 1.0) == 1.0
    # Perfect and inverted scores.
    assert tpr_at_fpr([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert tpr_at_fpr([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    # Continuous scores with many negatives: Privacy Meter's step value.
    rng = np.random.default_rng(0)
    yy = rng.integers(0, 2, 3000)
    ss = rng.normal(size=3000) + yy
    fpr, tpr, _ = roc_curve(yy, ss)
    assert tpr_at_fpr(yy, ss) == pytest.approx(tpr[np.where(fpr <= 0.01)[0][-1]], abs=1e-12)
    with pytest.raises(ConfigError, match="2 classes"):
        tpr_at_fpr([1, 1], [0.1, 0.2])


# ----------------------------------------------------------------------------- determinism


def _fingerprint(res: AttackResult):
    return [
        (
            row["repeat"],
            row["fold"],
            row["auc"],
            row["macro_f1"],
            row["model_seed"],
            tuple(row["train_index"]),
            tuple(row["test_index"]),
        )
        for row in res.per_fold
    ]


def test_same_seed_is_identical_and_other_seed_changes_folds():
    X, y = planted(120, 6, 1.0, [0.5, 0.5], seed=8)
    kw = dict(FAST, folds=2)
    a = attack(X, y, attacker="mlp", seed=3, **kw)
    b = attack(X, y, attacker="mlp", seed=3, **kw)
    assert _fingerprint(a) == _fingerprint(b) and a.to_dict() == b.to_dict()
    c = attack(X, y, attacker="logreg", seed=4, folds=2, repeats=2)
    d = attack(X, y, attacker="logreg", seed=3, folds=2, repeats=2)
    assert not np.array_equal(c.per_fold[0]["test_index"], d.per_fold[0]["test_index"])
    # repeats use different folds; attackers share the folds of a seed
    assert not np.array_equal(d.per_fold[0]["test_index"], d.per_fold[2]["test_index"])
    assert np.array_equal(a.per_fold[0]["test_index"], d.per_fold[0]["test_index"])


def test_known_fraction_trains_on_known_users_and_scores_the_rest():
    X, y = planted(300, 8, 3.0, [0.7, 0.3], seed=9)
    res = attack(X, y, attacker="logreg", known_fraction=0.3, repeats=3, seed=1)
    assert len(res.per_fold) == 3 and res.auc > 0.9
    for row in res.per_fold:
        assert row["n_test"] == 300 - 90
        assert np.intersect1d(row["train_index"], row["test_index"]).size == 0
        known = np.setdiff1d(np.arange(300), row["test_index"])
        counts = np.bincount(y[row["train_index"]], minlength=2)
        assert counts[0] == counts[1] == np.bincount(y[known]).min()
    assert not np.array_equal(res.per_fold[0]["test_index"], res.per_fold[1]["test_index"])
    assert res.settings["known_fraction"] == 0.3


# ----------------------------------------------------------------------------- many / table


def test_attack_many_and_results_table():
    X, g = planted(120, 6, 2.0, [0.5, 0.5], seed=10)
    ages = np.random.default_rng(0).choice([15, 20, 30, 40], size=120)
    codes, names = age_buckets(ages)
    results = attack_many(
        X, {"gender": g, "age": codes}, attackers=("logreg", "mlp"), **dict(FAST, max_iter=30)
    )
    assert [(r.attribute, r.attacker) for r in results] == [
        ("gender", "logreg"),
        ("gender", "mlp"),
        ("age", "logreg"),
        ("age", "mlp"),
    ]
    assert results[2].num_classes == 4 and results[2].classes == [0, 1, 2, 3]
    table = results_table(results)
    lines = table.splitlines()
    assert len(lines) == 6 and lines[0].startswith("| attribute | attacker |")
    assert "TPR@1%FPR" in lines[0] and lines[2].startswith("| gender | logreg | 2 | 120 | ")
    assert lines[2].count("±") == 4
    assert "per_fold" not in results[0].to_dict()
    assert "train_index" not in results[0].to_dict(include_folds=True)["per_fold"][0]


def test_age_buckets_reuse_the_dataset_bands():
    ages = np.array([1, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 80])
    codes, names = age_buckets(ages)
    assert codes.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert names == AGE_BUCKETS == ["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
    assert np.array_equal(codes, age_bucket(ages))


# ----------------------------------------------------------------------------- upload features


def test_upload_features_on_a_tiny_example():
    ids = [np.array([0, 2, 2]), np.array([4]), np.array([], dtype=int)]
    deltas = [
        np.array([[1.0, 0.0], [0.0, 2.0], [2.0, 4.0]]),
        np.array([[-1.0, 1.0]]),
        np.zeros((0, 2)),
    ]
    touched = upload_features(ids, None, 5, kind="touched")
    assert touched.shape == (3, 5)
    assert touched.tolist() == [[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]
    mean = upload_features(ids, deltas, 5, kind="delta-mean")
    assert mean.shape == (3, 2) and mean.tolist() == [[1.0, 2.0], [-1.0, 1.0], [0.0, 0.0]]
    total = upload_features(ids, deltas, 5, kind="delta-sum")
    assert total.tolist() == [[3.0, 6.0], [-1.0, 1.0], [0.0, 0.0]]
    with pytest.raises(ConfigError, match="kind must be one of touched, delta-mean, delta-sum"):
        upload_features(ids, deltas, 5, kind="delta")
    with pytest.raises(ConfigError, match=r"outside \[0, num_items=4\)"):
        upload_features(ids, deltas, 4)
    with pytest.raises(ConfigError, match="deltas_per_user"):
        upload_features(ids, None, 5, kind="delta-mean")
    with pytest.raises(ConfigError, match=r"deltas_per_user\[1\] must have shape \(1, d\)"):
        upload_features(ids, [deltas[0], np.zeros((2, 2)), deltas[2]], 5, kind="delta-mean")


def test_server_sees_touched_items_and_infers_the_planted_attribute():
    ds = synthetic_recommendation(
        num_users=240, num_items=120, dim=8, interactions_per_user=15, attr_strength=3.0, seed=0
    )
    ids = [ds.item[ds.user == u] for u in range(ds.num_users)]
    X = upload_features(ids, None, ds.num_items, kind="touched")
    res = attack(X, ds.user_attrs["gender"], attacker="logreg", folds=3, repeats=1)
    assert res.auc > 0.75


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(attacker="svm"), "attacker must be one of mlp, logreg; got 'svm'"),
        (dict(labels=np.zeros(60, dtype=int)), "at least 2 classes"),
        (dict(labels=np.arange(59) % 2), "same number of rows, got 60 and 59"),
        (dict(labels=(np.arange(60) % 2).astype(float)), "integer class codes"),
        (
            dict(labels=np.r_[np.zeros(57, int), np.ones(3, int)]),
            "folds=5 needs at least 5 users in every class",
        ),
        (dict(folds=1), "folds must be an integer >= 2"),
        (dict(repeats=0), "repeats must be an integer >= 1"),
        (dict(seed=-1), "seed must be an integer >= 0"),
        (dict(known_fraction=0.0), r"known_fraction must be a number in \(0, 1\]"),
        (dict(known_fraction=1.5), r"known_fraction must be a number in \(0, 1\]"),
        (dict(known_fraction=0.01), "known_fraction=0.01 leaves no known"),
        (dict(mlp_hidden=()), "mlp_hidden must be a non-empty tuple"),
        (dict(max_iter=0), "max_iter must be an integer >= 1"),
        (dict(embeddings=np.full((60, 3), np.nan)), "embeddings must be finite"),
        (dict(embeddings=np.zeros(60)), r"embeddings must be a 2-D \(n, d\) array"),
    ],
)
def test_bad_inputs_raise_one_line_config_errors(kwargs, match):
    args = dict(embeddings=np.random.default_rng(0).normal(size=(60, 3)), labels=np.arange(60) % 2)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match) as info:
        attack(args.pop("embeddings"), args.pop("labels"), **args)
    assert "\n" not in str(info.value)


def test_attack_many_rejects_bad_arguments():
    X = np.zeros((10, 2))
    with pytest.raises(ConfigError, match="attributes must be a non-empty dict"):
        attack_many(X, {})
    with pytest.raises(ConfigError, match="attacker must be one of"):
        attack_many(X, {"g": np.arange(10) % 2}, attackers=("mlp", "xgb"))


def test_attacks_package_imports_no_flwr_and_only_pure_fedrec_modules():
    # Static (a subprocess import costs seconds): fedrec.data, .errors and .seeding are
    # themselves checked by test_layering's flwr-free list.
    import fedrec.attacks as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            else:
                continue
            for name in names:
                assert not name.split(".")[0] == "flwr", (path.name, name)
                # pure fedrec layers only (test_layering checks that they stay flwr-free)
                assert not name.startswith(
                    (
                        "fedrec.strategies",
                        "fedrec.clients",
                        "fedrec.flower",
                        "fedrec.runtime",
                        "..strategies",
                        "..clients",
                        "..flower",
                        "..runtime",
                    )
                ), (path.name, name)

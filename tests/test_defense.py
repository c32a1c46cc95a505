"""Defenses wrapped around a strategy's aggregation, and the server's reply checks."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.config import validate
from fedrec.protocol import ClientReply
from fedrec.strategies.defense import Defense
from fedrec.strategies.fedsasrec import FedSASRec

BASE = {
    "strategy.name": "fedsasrec",
    "strategy.params.server-optimizer": "sgd",
    "strategy.params.server-lr": 1.0,
}


def _strategy(**flat):
    s = FedSASRec(validate({**BASE, **flat}))
    s.current_weights = [np.zeros((7, 2), np.float32), np.zeros(3, np.float32)]
    s._adam = None
    return s


def _reply(c, ids, rows, dense, n):
    rows = np.asarray(rows, np.float32).reshape(len(ids), 2)
    return ClientReply(
        c,
        1,
        {"num-examples": n, "train-loss": 0.1 * c},
        [np.asarray(ids, np.int64), rows * n, np.asarray(dense, np.float32) * n],
    )


def _replies():
    return [
        _reply(0, [0, 2], [[1, 1], [2, 2]], [1, 0, 0], 2),
        _reply(1, [2], [[2.5, 2]], [1.2, 0, 0], 1),
        _reply(2, [2, 3], [[1.5, 2], [9, 9]], [0.8, 0, 0], 3),
        _reply(3, [2, 5], [[50, -50], [1, 1]], [30, 0, 0], 1),  # the outlier
    ]


def test_the_mean_through_the_defense_path_is_the_strategy_aggregate():
    s = _strategy(**{"defense.method": "norm-clip", "defense.clip-norm": 1e9})
    W = s.current_weights
    plain, m0 = s.aggregate(1, _replies())
    wrapped, m1 = s.defense.aggregate(s, 1, _replies(), W)
    for a, b in zip(plain, wrapped):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert m1["num-clients"] == 4 and abs(m1["train-loss"] - m0["train-loss"]) < 1e-9


def test_rowwise_median_rejects_the_outlier_only_on_its_rows():
    s = _strategy(**{"defense.method": "median"})
    W = s.current_weights
    new, _ = s.defense.aggregate(s, 1, _replies(), W)
    N = 7  # examples of all clients
    # item 2: voters 0, 1, 2, 3 -> coordinate medians (2.25, 2), scaled by their share 7 / 7
    np.testing.assert_allclose(new[0][3], [2.25, 2.0], rtol=1e-6)
    # item 0: one voter (client 0, n = 2): its update, scaled by its share 2 / 7
    np.testing.assert_allclose(new[0][1], np.array([1.0, 1.0]) * 2 / N, rtol=1e-6)
    np.testing.assert_allclose(new[1], [1.1, 0, 0], rtol=1e-6)  # dense: median of 4
    assert s.defense.records[-1]["method"] == "median"


def test_anomaly_defense_drops_the_flagged_client():
    s = _strategy(**{"defense.method": "anomaly", "defense.threshold": 3.5})
    W = s.current_weights
    new, m = s.defense.aggregate(s, 1, _replies(), W)
    rec = s.defense.records[-1]
    assert rec["flagged"] == [3] and m["defense-flagged"] == 1
    kept, _ = s.aggregate(1, _replies()[:3])
    for a, b in zip(new, kept):
        np.testing.assert_allclose(a, b)


@pytest.mark.parametrize("method", ["krum", "multikrum", "bulyan", "trimmed-mean"])
def test_every_rule_runs_and_keeps_the_outlier_out_of_the_dense_part(method):
    s = _strategy(**{"defense.method": method, "defense.beta": 0.25})
    reps = _replies() + [_reply(4, [2], [[2, 2]], [1.1, 0, 0], 1)] * 1
    reps += [
        _reply(5 + i, [2], [[2, 2.1]], [1.0 + 0.01 * i, 0, 0], 1) for i in range(6)
    ]  # enough voters for Bulyan's n >= 4 f + 3
    new, _ = s.defense.aggregate(s, 1, reps, s.current_weights)
    assert np.all(np.isfinite(new[0])) and abs(float(new[1][0])) < 2.0


def test_defense_on_full_model_uploads_uses_flowers_rules():
    from flwr.server.strategy import aggregate as fl

    from fedrec.strategies.fedavg import FedAvg

    cfg = validate({"strategy.name": "fedavg", "defense.method": "krum", "defense.beta": 0.2})
    s = FedAvg(cfg)
    W = [np.zeros((2, 2)), np.zeros(2)]
    rng = np.random.default_rng(0)
    reps = [
        ClientReply(c, 1, {"num-examples": 5}, [rng.normal(size=(2, 2)), rng.normal(size=2)])
        for c in range(6)
    ]
    new, _ = s.defense.aggregate(s, 1, reps, W)
    want = fl.aggregate_krum([(r.arrays(), 5) for r in reps], 1, 0)
    for a, b in zip(new, want):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_reply_checks_name_the_problem():
    s = _strategy()
    W = s.current_weights
    good = _replies()[0]
    assert s.check_reply(good, W) is None
    bad = {
        "NaN": [good.weights[0], good.weights[1] * np.nan, good.weights[2]],
        "outside": [np.array([0, 6]), good.weights[1], good.weights[2]],
        "sorted and unique": [np.array([2, 0]), good.weights[1], good.weights[2]],
        "item rows of shape": [good.weights[0], good.weights[1][:1], good.weights[2]],
        "dense part": [good.weights[0], good.weights[1], np.zeros(4, np.float32)],
        "expected 3": good.weights[:2],
        "not a number": [good.weights[0], good.weights[1].astype(object), good.weights[2]],
    }
    for why, arrays in bad.items():
        r = ClientReply(9, 1, dict(good.metrics), arrays)
        assert why in (s.check_reply(r, W) or ""), why
    r = ClientReply(9, 1, {"num-examples": -3}, good.weights)
    assert "non-negative integer" in s.check_reply(r, W)
    kept, rejected = s.screen_replies(1, [good, ClientReply(9, 1, {"num-examples": 1.5}, [])], W)
    assert kept == [good] and "client 9" in rejected[0]


def test_defense_config_errors_name_the_key():
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match="defense.method"):
        validate({"defense.method": "geomed"})
    with pytest.raises(ConfigError, match="defense.beta"):
        validate({"defense.beta": 0.5})
    assert Defense is not None

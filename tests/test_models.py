"""Tests for fedrec.models and fedrec.training (pure torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.errors import ConfigError
from fedrec.models import MODELS, build_model, get_weights, list_models, set_weights
from fedrec.training import TrainResult, predict_proba, train_classifier


def _equal(w1, w2):
    return len(w1) == len(w2) and all(np.array_equal(a, b) for a, b in zip(w1, w2))


# ------------------------------------------------------------------------------- models


def test_registry():
    assert [m.name for m in list_models()] == ["logreg", "mlp"]
    assert set(MODELS["mlp"].params) == {"hidden", "layers", "dropout"}
    assert MODELS["mlp"].params["hidden"][:2] == (int, 64)


@pytest.mark.parametrize(
    ("name", "params", "n_weights"),
    [("logreg", {}, 2), ("mlp", {}, 4), ("mlp", {"hidden": 8, "layers": 3, "dropout": 0.1}, 8)],
)
def test_shapes(name, params, n_weights):
    model = build_model(name, 5, 3, seed=0, **params)
    out = model(torch.zeros(7, 5))
    assert out.shape == (7, 3) and out.dtype == torch.float32
    w = get_weights(model)
    assert len(w) == n_weights and all(a.dtype == np.float32 for a in w)
    if name == "logreg":
        assert isinstance(model, torch.nn.Linear) and w[0].shape == (3, 5) and w[1].shape == (3,)


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_deterministic_init_and_global_rng_untouched(name):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = get_weights(build_model(name, 4, 2, seed=1))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # global state must not matter
    b = get_weights(build_model(name, 4, 2, seed=1))
    c = get_weights(build_model(name, 4, 2, seed=2))
    assert _equal(a, b)
    assert not _equal(a, c)


def test_get_set_round_trip():
    src = build_model("mlp", 4, 3, seed=1, hidden=6)
    dst = build_model("mlp", 4, 3, seed=2, hidden=6)
    w = get_weights(src)
    set_weights(dst, w)
    assert _equal(get_weights(dst), w)
    x = torch.randn(5, 4)
    assert torch.equal(src(x), dst(x))
    w[0][...] = 0.0  # get_weights returns copies
    assert not np.array_equal(get_weights(src)[0], w[0])
    set_weights(dst, [a.astype(np.float64) for a in get_weights(src)])  # dtype is converted
    assert _equal(get_weights(dst), get_weights(src))


def test_set_weights_errors():
    model = build_model("mlp", 4, 3, seed=0, hidden=6)
    w = get_weights(model)
    bad = list(w)
    bad[2] = np.zeros((3, 7), np.float32)
    with pytest.raises(ValueError, match=r"'2\.weight'|2.weight"):
        set_weights(model, bad)
    assert _equal(get_weights(model), w)  # unchanged on error
    with pytest.raises(ValueError, match="expected 4"):
        set_weights(model, w[:3])


@pytest.mark.parametrize(
    ("name", "params", "culprit"),
    [
        ("resnet", {}, "resnet.*logreg, mlp"),
        ("logreg", {"hidden": 3}, "hidden.*logreg"),
        ("mlp", {"width": 3}, "width.*dropout, hidden, layers"),
        ("mlp", {"hidden": "8"}, "hidden"),
        ("mlp", {"hidden": 0}, "hidden"),
        ("mlp", {"layers": 0}, "layers"),
        ("mlp", {"dropout": 1.0}, "dropout"),
    ],
)
def test_build_errors(name, params, culprit):
    with pytest.raises(ConfigError, match=culprit):
        build_model(name, 4, 2, seed=0, **params)


def test_build_dimension_errors():
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("logreg", 4, 1, seed=0)
    with pytest.raises(ConfigError, match="in_dim"):
        build_model("logreg", 0, 2, seed=0)


# ----------------------------------------------------------------------------- training


def _separable(n=200, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ np.arange(1, d + 1) > 0).astype(np.int64)
    return X, y


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_deterministic(optimizer):
    X, y = _separable()
    runs = []
    for _ in range(2):
        model = build_model("mlp", 4, 2, seed=3, hidden=16, dropout=0.2)
        res = train_classifier(
            model,
            X,
            y,
            epochs=3,
            batch_size=32,
            lr=0.05,
            seed=5,
            optimizer=optimizer,
            weight_decay=1e-3,
            proximal_mu=0.1,
        )
        runs.append((get_weights(model), res))
    assert _equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert runs[0][1].num_examples == 200 and runs[0][1].steps == 3 * 7
    model = build_model("mlp", 4, 2, seed=3, hidden=16, dropout=0.2)
    train_classifier(model, X, y, epochs=3, batch_size=32, lr=0.05, seed=6, optimizer=optimizer)
    assert not _equal(runs[0][0], get_weights(model))  # seed matters


def test_training_restores_threads_rng_and_mode():
    X, y = _separable(n=50)
    model = build_model("mlp", 4, 2, seed=0, dropout=0.5)
    model.eval()
    threads = torch.get_num_threads()
    torch.manual_seed(42)
    state = torch.get_rng_state()
    train_classifier(model, X, y, epochs=1, batch_size=16, lr=0.1, seed=0)
    predict_proba(model, X)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), state)
    assert not model.training


def test_training_reduces_loss_on_separable_data():
    X, y = _separable()
    model = build_model("logreg", 4, 2, seed=0)
    before = train_classifier(model, X, y, epochs=0, batch_size=64, lr=0.5, seed=0)
    assert before.steps == 0
    res = train_classifier(model, X, y, epochs=30, batch_size=16, lr=0.5, seed=0)
    assert isinstance(res, TrainResult)
    assert res.loss < 0.5 * before.loss
    proba = predict_proba(model, X)
    assert (proba.argmax(1) == y).mean() >= 0.97


def test_logreg_close_to_sklearn():
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(
        n_samples=2000,
        n_features=8,
        n_informative=5,
        n_redundant=1,
        class_sep=0.8,
        flip_y=0.05,
        random_state=0,
    )
    X = (X - X.mean(0)) / X.std(0)
    Xtr, ytr, Xte, yte = X[:500], y[:500], X[500:], y[500:]
    ref = LogisticRegression(max_iter=1000).fit(Xtr, ytr).score(Xte, yte)
    model = build_model("logreg", 8, 2, seed=0)
    train_classifier(model, Xtr, ytr, epochs=100, batch_size=100, lr=0.05, seed=0, optimizer="adam")
    acc = (predict_proba(model, Xte).argmax(1) == yte).mean()
    assert abs(acc - ref) <= 0.02, (acc, ref)


def test_sample_weight_and_proximal_term():
    X, y = _separable(n=64)
    init = build_model("logreg", 4, 2, seed=0)
    w0 = get_weights(init)
    # all-zero sample weights: no gradient, plain SGD leaves the weights unchanged
    model = build_model("logreg", 4, 2, seed=0)
    train_classifier(
        model, X, y, epochs=2, batch_size=16, lr=0.5, seed=0, sample_weight=np.zeros(64)
    )
    assert _equal(get_weights(model), w0)
    # unit weights match the unweighted objective
    m1, m2 = build_model("logreg", 4, 2, seed=0), build_model("logreg", 4, 2, seed=0)
    train_classifier(m1, X, y, epochs=2, batch_size=16, lr=0.5, seed=0)
    train_classifier(m2, X, y, epochs=2, batch_size=16, lr=0.5, seed=0, sample_weight=np.ones(64))
    for a, b in zip(get_weights(m1), get_weights(m2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # a strong proximal term keeps the weights closer to the anchor
    def dist(mu, anchor):
        m = build_model("logreg", 4, 2, seed=0)
        train_classifier(
            m, X, y, epochs=5, batch_size=16, lr=0.1, seed=0, proximal_mu=mu, global_weights=anchor
        )
        return sum(float(((a - b) ** 2).sum()) for a, b in zip(get_weights(m), w0))

    assert dist(5.0, w0) < 0.5 * dist(0.0, None)
    assert dist(5.0, None) == dist(5.0, w0)  # default anchor = weights at the start of the call
    with pytest.raises(ValueError, match="weight"):
        train_classifier(
            build_model("logreg", 4, 2, seed=0),
            X,
            y,
            epochs=1,
            batch_size=16,
            lr=0.1,
            seed=0,
            proximal_mu=1.0,
            global_weights=[np.zeros((2, 5), np.float32), w0[1]],
        )


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"optimizer": "rmsprop"}, "rmsprop.*sgd, adam"),
        ({"lr": 0.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": -1}, "epochs"),
        ({"sample_weight": np.ones(3)}, "sample_weight"),
    ],
)
def test_training_config_errors(kwargs, culprit):
    X, y = _separable(n=20)
    args = dict(epochs=1, batch_size=8, lr=0.1, seed=0) | kwargs
    with pytest.raises(ConfigError, match=culprit):
        train_classifier(build_model("logreg", 4, 2, seed=0), X, y, **args)


def test_label_out_of_range():
    X, y = _separable(n=20)
    with pytest.raises(ConfigError, match="label 2"):
        train_classifier(
            build_model("logreg", 4, 2, seed=0), X, y + 1, epochs=1, batch_size=8, lr=0.1, seed=0
        )


def test_predict_proba():
    X, _ = _separable(n=30)
    model = build_model("mlp", 4, 3, seed=0, dropout=0.5)
    p = predict_proba(model, X, batch_size=7)
    assert p.shape == (30, 3) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(p, predict_proba(model, X, batch_size=7))  # eval mode: no dropout
    np.testing.assert_allclose(
        p, predict_proba(model, X), atol=1e-6
    )  # batching only changes rounding
    assert model.training  # mode restored
    assert predict_proba(model, X[:0]).shape == (0, 3)
    empty = train_classifier(model, X[:0], np.zeros(0, int), epochs=1, batch_size=4, lr=0.1, seed=0)
    assert empty.num_examples == 0 and empty.steps == 0


def test_one_hot_soft_targets_equal_cross_entropy():
    from fedrec.models import build_model, get_weights
    from fedrec.training import train_classifier

    X = np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    m1, m2 = build_model("logreg", 4, 2, seed=0), build_model("logreg", 4, 2, seed=0)
    r1 = train_classifier(m1, X, y, epochs=2, batch_size=32, lr=0.1, seed=1)
    r2 = train_classifier(
        m2, X, y, epochs=2, batch_size=32, lr=0.1, seed=1, soft_targets=np.eye(2)[y]
    )
    assert abs(r1.loss - r2.loss) < 1e-6
    for a, b in zip(get_weights(m1), get_weights(m2)):
        np.testing.assert_allclose(a, b, atol=1e-6)

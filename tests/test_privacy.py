"""fedrec.privacy: the accountant against dp-accounting / Opacus / Flower, the row-wise
mechanisms against Flower's DP code, and DP-SGD through Opacus."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from fedrec.algorithms.robust import RowUpdates
from fedrec.errors import ConfigError
from fedrec.privacy import (
    Accountant,
    AdaptiveClip,
    adaptive_noise_params,
    central_gaussian,
    classic_gaussian_stdv,
    epsilon,
    epsilon_curve,
    gaussian_ldp_epsilon,
    local_gaussian,
    noise_for_epsilon,
)

dpa = pytest.importorskip("dp_accounting")
from dp_accounting.pld import PLDAccountant  # noqa: E402
from dp_accounting.rdp import RdpAccountant  # noqa: E402

DELTA = 1e-5


def _library_epsilon(z: float, q: float, steps: int, delta: float, kind: str) -> float:
    """dp-accounting called directly, as its documentation shows."""
    event = dpa.GaussianDpEvent(z)
    if q < 1:
        event = dpa.PoissonSampledDpEvent(q, event)
    acc = RdpAccountant() if kind == "rdp" else PLDAccountant()
    acc.compose(dpa.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


# ====================================================================== accountant
@pytest.mark.parametrize(
    "z, q, steps, kind",
    [
        (1.1, 0.01, 300, "rdp"),
        (0.8, 0.05, 50, "rdp"),
        (3.0, 1.0, 10, "rdp"),
        (2.0, 1.0, 5, "pld"),
        (1.5, 0.1, 4, "pld"),
    ],
)
def test_epsilon_equals_the_accountant_librarys_own_figure(z, q, steps, kind):
    """The required test: the ε fedrec reports equals dp-accounting's own figure."""
    assert epsilon(z, q, steps, DELTA, kind) == _library_epsilon(z, q, steps, DELTA, kind)


@pytest.mark.parametrize("z, q, steps", [(1.0, 0.01, 1000), (1.1, 0.02, 200), (4.0, 1.0, 20)])
def test_epsilon_close_to_opacus_rdp(z, q, steps):
    rdp_mod = pytest.importorskip("opacus.accountants")
    acc = rdp_mod.RDPAccountant()
    acc.history = [(z, q, steps)]
    ours = epsilon(z, q, steps, DELTA)
    assert ours == pytest.approx(acc.get_epsilon(DELTA), rel=0.05)
    assert ours == pytest.approx(acc.get_epsilon(DELTA), rel=0.005)  # in fact: < 0.5 %


def test_epsilon_equals_flowers_rdp_accountant():
    pa = pytest.importorskip("flwr.supercore.privacy_accounting")
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant as FlwrRdp

    cfg = pa.PrivacyConfig(
        target_delta=DELTA,
        population_size=1000,
        neighboring_relation=pa.NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=pa.SamplingMethod.POISSON,
    )
    flwr_acc = FlwrRdp(cfg)
    flwr_acc.compose(pa.GaussianPrivacyEvent(1.2, 20, 1000), count=100)
    assert epsilon(1.2, 20 / 1000, 100, DELTA) == flwr_acc.get_epsilon(DELTA)


def test_gaussian_rdp_by_hand():
    """q = 1: T Gaussian releases have RDP T a / (2 z^2) at order a; the library converts
    with eps = min_a r + log(1 - 1/a) - log(delta a) / (a - 1) (Canonne et al. 2020)."""
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

    z, T, delta = 2.0, 7, 1e-6
    best = min(
        T * a / (2 * z * z) + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        for a in DEFAULT_RDP_ORDERS
        if a > 1.01
    )
    assert epsilon(z, 1.0, T, delta) == pytest.approx(best, rel=1e-12)
    # T releases with z are one release with z / sqrt(T) (both RDP and PLD)
    assert epsilon(z, 1.0, T, delta) == pytest.approx(epsilon(z / math.sqrt(T), 1.0, 1, delta))
    exact = dpa.get_epsilon_gaussian(z / math.sqrt(T), delta)  # the analytic Gaussian
    assert epsilon(z, 1.0, T, delta, "pld") == pytest.approx(exact, rel=2e-3)
    assert exact < epsilon(z, 1.0, T, delta, "pld") < epsilon(z, 1.0, T, delta)


def test_edge_cases():
    assert epsilon(1.0, 0.1, 0, DELTA) == 0.0
    assert epsilon(0.0, 0.1, 0, DELTA) == 0.0
    assert epsilon(0.0, 0.1, 3, DELTA) == math.inf
    assert epsilon(0, 1, 1, DELTA, "pld") == math.inf
    assert epsilon_curve(1.0, 0.1, 0, DELTA) == []
    assert epsilon_curve(0.0, 0.1, 2, DELTA) == [math.inf, math.inf]
    assert noise_for_epsilon(1.0, 0.1, 0, DELTA) == 0.0
    assert epsilon(1.0, np.float64(0.5), np.int64(3), DELTA) == epsilon(1.0, 0.5, 3, DELTA)


def test_monotone():
    eps_z = [epsilon(z, 0.05, 100, DELTA) for z in (0.7, 1.0, 1.5, 3.0)]
    assert all(a > b for a, b in zip(eps_z, eps_z[1:]))  # more noise -> smaller ε
    eps_t = [epsilon(1.0, 1.0, t, DELTA) for t in (1, 10, 100, 1000)]
    assert all(a < b for a, b in zip(eps_t, eps_t[1:]))  # more steps -> larger ε
    assert epsilon(1.0, 0.05, 10, DELTA) < epsilon(1.0, 0.05, 11, DELTA)
    eps_q = [epsilon(1.0, q, 100, DELTA) for q in (0.01, 0.1, 1.0)]
    assert all(a < b for a, b in zip(eps_q, eps_q[1:]))  # more sampling -> larger ε
    assert epsilon(1.0, 1.0, 100, 1e-3) < epsilon(1.0, 1.0, 100, 1e-6)
    # PLD is tighter than RDP on the same event
    assert epsilon(1.5, 0.1, 4, DELTA, "pld") < epsilon(1.5, 0.1, 4, DELTA, "rdp")


@pytest.mark.parametrize(
    "kind, z, q, steps, rel", [("rdp", 1.5, 0.05, 15, 1e-12), ("pld", 2.0, 1.0, 4, 1e-6)]
)
def test_curve(kind, z, q, steps, rel):
    curve = epsilon_curve(z, q, steps, DELTA, kind)
    assert len(curve) == steps
    assert all(a < b for a, b in zip(curve, curve[1:]))
    assert curve[-1] == pytest.approx(epsilon(z, q, steps, DELTA, kind), rel=rel)
    assert curve[1] == pytest.approx(epsilon(z, q, 2, DELTA, kind), rel=rel)


def test_noise_for_epsilon_round_trips():
    for target in (0.5, 8.0):
        z = noise_for_epsilon(target, 1.0, 10, DELTA)
        eps = epsilon(z, 1.0, 10, DELTA)
        assert eps <= target
        assert eps == pytest.approx(target, rel=1e-4)
        assert epsilon(z - 1e-3, 1.0, 10, DELTA) > target  # the smallest such z
    q, steps = 0.02, 200
    z = noise_for_epsilon(2.0, q, steps, DELTA)
    assert epsilon(z, q, steps, DELTA) <= 2.0
    assert epsilon(z, q, steps, DELTA) == pytest.approx(2.0, rel=1e-4)
    # the same as dp-accounting's calibration of the same event called directly
    direct = dpa.calibrate_dp_mechanism(
        RdpAccountant, lambda x: dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(x), 10), 8.0, DELTA
    )
    assert noise_for_epsilon(8.0, 1.0, 10, DELTA) == direct
    z = noise_for_epsilon(2.0, 1.0, 3, DELTA, "pld", tol=1e-4)
    assert epsilon(z, 1.0, 3, DELTA, "pld") == pytest.approx(2.0, rel=1e-3)


def test_gaussian_ldp_epsilon():
    # replace-one: sensitivity 2C -> noise multiplier z / 2
    assert gaussian_ldp_epsilon(4.0, 10, DELTA) == epsilon(2.0, 1.0, 10, DELTA)
    assert gaussian_ldp_epsilon(4.0, 10, DELTA, relation="add-or-remove-one") == epsilon(
        4.0, 1.0, 10, DELTA
    )
    assert gaussian_ldp_epsilon(4.0, 3, DELTA, "pld") == epsilon(2.0, 1.0, 3, DELTA, "pld")
    assert gaussian_ldp_epsilon(4.0, 0, DELTA) == 0.0
    with pytest.raises(ConfigError, match="relation"):
        gaussian_ldp_epsilon(4.0, 3, DELTA, relation="swap")


def test_accountant_matches_epsilon_and_round_trips():
    acc = Accountant(1.5, DELTA)
    assert acc.epsilon == 0.0 and acc.steps == 0
    for _ in range(8):
        acc.step(0.05)
    assert acc.steps == 8
    assert acc.epsilon == pytest.approx(epsilon(1.5, 0.05, 8, DELTA), rel=1e-12)
    assert acc.epsilon_at(1e-3) < acc.epsilon
    for q in (0.1, 1.0, 0.02):  # varying rates (drop-outs)
        acc.step(q)
    state = json.loads(json.dumps(acc.to_state()))
    back = Accountant.from_state(state)
    assert back.epsilon == acc.epsilon  # identical, not approximately
    assert back.sampling_rates == acc.sampling_rates and back.steps == 11
    assert back.step(0.05) == acc.step(0.05)
    # varying rates = the library composing the same events one by one
    lib = RdpAccountant()
    for q in acc.sampling_rates:
        e = dpa.GaussianDpEvent(1.5)
        lib.compose(e if q == 1 else dpa.PoissonSampledDpEvent(q, e))
    assert acc.epsilon == lib.get_epsilon(DELTA)
    const = Accountant(2.0, DELTA)
    for _ in range(50):
        const.step(1.0)
    assert const.epsilon == pytest.approx(epsilon(2.0, 1.0, 50, DELTA), rel=1e-12)


def test_accountant_pld_and_zero_noise():
    acc = Accountant(2.0, DELTA, "pld")
    for _ in range(2):
        acc.step(1.0)
    back = Accountant.from_state(json.loads(json.dumps(acc.to_state())))
    assert back.epsilon == acc.epsilon
    assert acc.epsilon == pytest.approx(epsilon(2.0, 1.0, 2, DELTA, "pld"), rel=1e-6)
    free = Accountant(0.0, DELTA)
    assert free.epsilon == 0.0
    assert free.step(0.5) == math.inf


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: epsilon(-1.0, 0.1, 10, DELTA), r"noise_multiplier must be a finite number >= 0"),
        (lambda: epsilon(float("nan"), 0.1, 10, DELTA), "noise_multiplier"),
        (lambda: epsilon(1.0, 0.0, 10, DELTA), r"sampling_rate must be a number in \(0, 1\]"),
        (lambda: epsilon(1.0, 1.5, 10, DELTA), "sampling_rate"),
        (lambda: epsilon(1.0, 0.1, -1, DELTA), r"steps must be an integer >= 0"),
        (lambda: epsilon(1.0, 0.1, 2.5, DELTA), "steps"),
        (lambda: epsilon(1.0, 0.1, True, DELTA), "steps"),
        (lambda: epsilon(1.0, 0.1, 10, 0.0), r"delta must be a number in \(0, 1\)"),
        (lambda: epsilon(1.0, 0.1, 10, 1.0), "delta"),
        (lambda: epsilon(1.0, 0.1, 10, DELTA, "moments"), "accountant must be one of rdp, pld"),
        (lambda: epsilon_curve(1.0, 0.1, 10, DELTA, "gdp"), "accountant"),
        (lambda: noise_for_epsilon(0.0, 0.1, 10, DELTA), "target_epsilon must be"),
        (lambda: noise_for_epsilon(math.inf, 0.1, 10, DELTA), "target_epsilon"),
        (lambda: gaussian_ldp_epsilon(1.0, -2, DELTA), "rounds must be an integer >= 0"),
        (lambda: Accountant(1.0, 2.0), "delta"),
        (lambda: Accountant(1.0, DELTA).step(0.0), "sampling_rate"),
        (lambda: Accountant.from_state({"version": 1}), "lacks"),
        (lambda: Accountant.from_state({"version": 99}), "version"),
        (
            lambda: Accountant.from_state(
                {
                    "version": 1,
                    "noise_multiplier": 1.0,
                    "delta": DELTA,
                    "accountant": "rdp",
                    "sampling_rates": [0.1, 2.0],
                }
            ),
            r"sampling_rates\[1\]",
        ),
    ],
)
def test_input_errors(call, match):
    with pytest.raises(ConfigError, match=match) as info:
        call()
    assert isinstance(info.value, ValueError)


def test_missing_dp_accounting_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)
    with pytest.raises(ConfigError, match=r"pip install 'fedrec\[privacy\]' \(dp-accounting\)"):
        epsilon(1.0, 0.1, 10, DELTA)
    with pytest.raises(ConfigError, match="privacy"):
        Accountant(1.0, DELTA)


# ====================================================================== mechanisms
def _random_updates(rng, n=4, R=6, d=3, p=5, dense_touch=True, scale=2.0):
    ids, rows = [], []
    for _ in range(n):
        k = R if dense_touch else int(rng.integers(0, R + 1))
        i = np.sort(rng.choice(R, size=k, replace=False))
        ids.append(i)
        rows.append(rng.normal(scale=scale, size=(k, d)))
    dense = rng.normal(scale=scale, size=(n, p))
    w = rng.integers(1, 50, size=n).astype(float)  # ignored by the DP mean
    return RowUpdates.from_lists(ids, rows, R, dense=dense, weights=w, d=d)


def test_central_gaussian_equals_flower_fixed_clipping_dense():
    fdp = pytest.importorskip("flwr.supercore.differential_privacy")
    rng = np.random.default_rng(0)
    R, d, p, n, C = 6, 3, 5, 4, 1.5
    upd = _random_updates(rng, n=n, R=R, d=d, p=p)
    global_model = [rng.normal(size=(R, d)), rng.normal(size=p)]
    clipped = []
    for c in range(n):
        client = [global_model[0] + upd.rows[c], global_model[1] + upd.dense[c]]
        fdp.compute_clip_model_update(client, global_model, C)  # Flower, in place
        clipped.append([client[0] - global_model[0], client[1] - global_model[1]])
    want_rows = sum(u[0] for u in clipped) / n
    want_dense = sum(u[1] for u in clipped) / n
    rows, dense, info = central_gaussian(upd, C, 0.0, np.random.default_rng(1))
    np.testing.assert_allclose(rows, want_rows, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dense, want_dense, rtol=0, atol=1e-12)
    assert info["stdv"] == 0.0
    norms = [fdp.get_norm([upd.rows[c], upd.dense[c]]) for c in range(n)]
    np.testing.assert_allclose(info["norms"], norms, rtol=1e-12)
    assert info["num_clipped"] == sum(x > C for x in norms) > 0
    for z, m in [(1.0, n), (0.7, 10), (2.5, 3)]:
        _, _, info = central_gaussian(upd, C, z, np.random.default_rng(1), num_sampled=m)
        assert info["stdv"] == fdp.compute_stdv(z, C, m)


def test_central_gaussian_by_hand_row_sparse():
    upd = RowUpdates.from_lists(
        [np.array([0]), np.array([2, 1])],
        [np.array([[3.0, 4.0]]), np.array([[0.0, 0.0], [0.6, 0.8]])],
        4,
        weights=[100.0, 1.0],
    )
    rows, dense, info = central_gaussian(upd, 1.0, 0.0, np.random.default_rng(0))
    # client 0: [3, 4] (norm 5) -> [0.6, 0.8]; client 1 (norm 1) unchanged; sum / 2, unweighted
    want = np.array([[0.3, 0.4], [0.3, 0.4], [0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(rows, want, atol=1e-15)
    assert dense.shape == (0,)
    np.testing.assert_allclose(info["clip_factors"], [0.2, 1.0])
    np.testing.assert_allclose(info["norms"], [5.0, 1.0])
    rows4, _, _ = central_gaussian(upd, 1.0, 0.0, np.random.default_rng(0), num_sampled=4)
    np.testing.assert_allclose(rows4, want / 2, atol=1e-15)


def test_central_gaussian_noise_std_and_untouched_rows():
    fdp = pytest.importorskip("flwr.supercore.differential_privacy")
    rng = np.random.default_rng(3)
    R, d, p, n, C, z = 2000, 32, 4000, 5, 0.5, 1.3
    upd = _random_updates(rng, n=n, R=R, d=d, p=p, dense_touch=False, scale=0.01)
    clean_rows, clean_dense, _ = central_gaussian(upd, C, 0.0, np.random.default_rng(0))
    rows, dense, info = central_gaussian(upd, C, z, np.random.default_rng(7), num_sampled=n)
    sigma = fdp.compute_stdv(z, C, n)
    assert info["stdv"] == sigma
    noise = np.concatenate([(rows - clean_rows).ravel(), dense - clean_dense])
    assert noise.std() == pytest.approx(sigma, rel=0.02)
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(noise.size)
    untouched = ~upd.touch_mask().any(axis=0)
    assert untouched.any() and np.all(rows[untouched] != 0)  # no zero row gives them away
    again = central_gaussian(upd, C, z, np.random.default_rng(7), num_sampled=n)
    np.testing.assert_array_equal(again[0], rows)  # deterministic given the generator
    np.testing.assert_array_equal(again[1], dense)


def test_central_gaussian_errors():
    upd = _random_updates(np.random.default_rng(0))
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="clip_norm"):
        central_gaussian(upd, -1.0, 1.0, rng)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        central_gaussian(upd, 1.0, float("inf"), rng)
    with pytest.raises(ConfigError, match="num_sampled"):
        central_gaussian(upd, 1.0, 1.0, rng, num_sampled=0)
    with pytest.raises(ConfigError, match="rng"):
        central_gaussian(upd, 1.0, 1.0, 42)
    with pytest.raises(ConfigError, match="RowUpdates"):
        central_gaussian([np.zeros(3)], 1.0, 1.0, rng)


@pytest.mark.parametrize(
    "z, m, sigma_b", [(1.0, 100, None), (0.5, 40, None), (1.0, 10, 3.0), (0.0, 10, None)]
)
def test_adaptive_noise_params_equal_flower(z, m, sigma_b):
    fdp = pytest.importorskip("flwr.supercore.differential_privacy")
    assert adaptive_noise_params(z, m, sigma_b) == fdp.compute_adaptive_noise_params(z, m, sigma_b)
    ac = AdaptiveClip(num_sampled=m, noise_multiplier=z, clipped_count_stddev=sigma_b)
    assert (ac.clipped_count_stddev, ac.model_noise_multiplier) == adaptive_noise_params(
        z, m, sigma_b
    )


def test_adaptive_noise_params_too_little_count_noise():
    fdp = pytest.importorskip("flwr.supercore.differential_privacy")
    with pytest.raises(ValueError):
        fdp.compute_adaptive_noise_params(1.0, 10, None)  # sigma_b = 0.5 <= z / 2
    with pytest.raises(ConfigError, match="clipped_count_stddev"):
        AdaptiveClip(num_sampled=10, noise_multiplier=1.0)


def test_adaptive_clip_equals_flower_formula_without_count_noise():
    """Hand-made round: norms 0.05, 0.08, 0.2, 0.5, 1.0 with C = 0.1 -> 2 of 5 unclipped."""
    flwr_strategy = pytest.importorskip("flwr.serverapp.strategy")
    norms = np.array([0.05, 0.08, 0.2, 0.5, 1.0])
    ac = AdaptiveClip(0.1, 0.5, 0.2, clipped_count_stddev=0.0, num_sampled=5, noise_multiplier=0)
    new_c = ac.update(norms, np.random.default_rng(0))
    assert new_c == 0.1 * math.exp(-0.2 * (2 / 5 - 0.5))
    assert ac.last_unclipped_fraction == 0.4
    # Flower's geometric update applied to the same fraction
    fl = flwr_strategy.DifferentialPrivacyServerSideAdaptiveClipping(
        flwr_strategy.FedAvg(),
        noise_multiplier=0.0,
        num_sampled_clients=5,
        initial_clipping_norm=0.1,
        target_clipped_quantile=0.5,
        clip_norm_lr=0.2,
    )
    fl._geometric_update(2 / 5)
    assert fl.clipping_norm == new_c


def test_adaptive_clip_equals_flowers_dpfedavg_adaptive():
    """Flower's DPFedAvgAdaptive (clients send the *unclipped* bit, as Andrew et al.) with
    zero count noise: the same clip norm round after round."""
    legacy = pytest.importorskip("flwr.server.strategy")
    from flwr.common import Code, FitRes, Parameters, Status

    rng = np.random.default_rng(5)
    fl = legacy.DPFedAvgAdaptive(
        legacy.FedAvg(), num_sampled_clients=8, init_clip_norm=0.3, noise_multiplier=0.0
    )
    ac = AdaptiveClip(0.3, 0.5, 0.2, num_sampled=8, noise_multiplier=0.0)
    for _ in range(5):
        norms = rng.uniform(0, 1, size=8)
        results = [
            (
                None,
                FitRes(
                    Status(Code.OK, ""),
                    Parameters([], ""),
                    1,
                    {"dpfedavg_norm_bit": bool(x <= fl.clip_norm)},
                ),
            )
            for x in norms
        ]
        fl._update_clip_norm(results)
        assert ac.update(norms, rng) == pytest.approx(fl.clip_norm, rel=1e-15)


def test_adaptive_clip_tracks_the_quantile_and_round_trips():
    norms = np.linspace(0.1, 2.0, 20)
    ac = AdaptiveClip(0.01, 0.75, 0.2, clipped_count_stddev=0.0, num_sampled=20)
    rng = np.random.default_rng(0)
    for _ in range(200):
        ac.update(norms, rng)
    assert abs(np.mean(norms <= ac.clip_norm) - 0.75) <= 0.05 + 1e-12
    # noisy count: deterministic given the generator, state JSON-able
    noisy = AdaptiveClip(0.5, 0.5, 0.2, num_sampled=20, noise_multiplier=1.0)
    assert noisy.clipped_count_stddev == 1.0  # m / 20
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    c1 = noisy.update(norms, r1)
    back = AdaptiveClip.from_state(json.loads(json.dumps(noisy.to_state())))
    assert back.clip_norm == c1 and back.rounds == 1
    assert back.model_noise_multiplier == noisy.model_noise_multiplier
    twin = AdaptiveClip(0.5, 0.5, 0.2, num_sampled=20, noise_multiplier=1.0)
    assert twin.update(norms, r2) == c1
    assert back.update(norms, r1) == twin.update(norms, r2)
    with pytest.raises(ConfigError, match="target_quantile"):
        AdaptiveClip(0.1, 1.5, num_sampled=5)
    with pytest.raises(ConfigError, match="initial_clip_norm"):
        AdaptiveClip(0.0, num_sampled=5)
    with pytest.raises(ConfigError, match="norms"):
        ac.update([-1.0], rng)
    with pytest.raises(ConfigError, match="malformed"):
        AdaptiveClip.from_state({"clip_norm": 1.0})


def test_local_gaussian_clip_equals_flower_and_noise_std():
    fdp = pytest.importorskip("flwr.supercore.differential_privacy")
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(7, 4))
    flower = [rows.copy()]
    fdp.clip_inputs_inplace(flower, 0.8)
    np.testing.assert_allclose(local_gaussian(rows, 0.8, 0.0, rng), flower[0], atol=1e-15)
    np.testing.assert_array_equal(local_gaussian(rows, 100.0, 0.0, rng), rows)  # no clip
    big = np.zeros((3000, 50))
    big[0, 0] = 5.0
    out = local_gaussian(big, 1.0, 0.7, np.random.default_rng(4))
    expected = big * (1.0 / 5.0)
    assert (out - expected).std() == pytest.approx(0.7, rel=0.02)
    again = local_gaussian(big, 1.0, 0.7, np.random.default_rng(4))
    np.testing.assert_array_equal(out, again)
    with pytest.raises(ConfigError, match="finite"):
        local_gaussian(np.array([[np.nan]]), 1.0, 1.0, rng)


def test_classic_gaussian_stdv_equals_flowers_local_dp_noise():
    fdp = pytest.importorskip("flwr.supercore.differential_privacy")
    from flwr.compat.common.parameter import ndarrays_to_parameters, parameters_to_ndarrays

    shape = (50, 3)
    np.random.seed(11)
    noised = fdp.add_localdp_gaussian_noise_to_params(
        ndarrays_to_parameters([np.zeros(shape)]), 0.5, 0.9, 1e-5
    )
    np.random.seed(11)
    want = np.random.normal(0, classic_gaussian_stdv(0.5, 0.9, 1e-5), shape)
    np.testing.assert_array_equal(parameters_to_ndarrays(noised)[0], want)
    with pytest.raises(ConfigError, match="delta"):
        classic_gaussian_stdv(1.0, 1.0, 1.0)


def test_no_flwr_in_fedrec_privacy():
    import ast
    from pathlib import Path

    import fedrec.privacy

    for path in Path(fedrec.privacy.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "flwr" or n.startswith("flwr.") for n in names), path


# ====================================================================== DP-SGD
torch = pytest.importorskip("torch")


def _logreg_data(n=200, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ rng.normal(size=d) > 0).astype(np.int64)
    return X, y


def _logreg(d=5, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(d, 2)


def _weights(model):
    return [p.detach().numpy().copy() for p in model.parameters()]


@pytest.fixture(scope="module")
def dpsgd_run():
    pytest.importorskip("opacus")
    from fedrec.privacy.dpsgd import dp_sgd_train

    X, y = _logreg_data()
    kw = dict(epochs=5, batch_size=20, lr=0.5, seed=3, noise_multiplier=1.0, max_grad_norm=1.0)
    before = dp_sgd_train(_logreg(), X, y, **{**kw, "epochs": 0}, delta=1e-3)
    model = _logreg()
    res = dp_sgd_train(model, X, y, **kw, delta=1e-3)
    return X, y, kw, before, model, res


def test_dpsgd_trains_and_reports_opacus_epsilon(dpsgd_run):
    from opacus.accountants import RDPAccountant

    X, y, kw, before, model, res = dpsgd_run
    assert before.steps == 0 and before.epsilon == 0.0
    assert res.loss < before.loss  # it learns
    assert res.steps == 5 * 10 and res.sample_rate == 0.1 and res.num_examples == 200
    acc = RDPAccountant()
    acc.history = [(1.0, 0.1, res.steps)]
    assert math.isfinite(res.epsilon)
    assert res.epsilon == acc.get_epsilon(1e-3)  # the engine's accountant's own figure
    assert res.epsilon == pytest.approx(epsilon(1.0, 0.1, res.steps, 1e-3), rel=0.05)
    logits = model(torch.from_numpy(X))
    assert (logits.argmax(1).numpy() == y).mean() > 0.8
    # Opacus's hooks are gone: the model is a plain module again
    assert not model._forward_hooks and not model._backward_hooks
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_dpsgd_deterministic(dpsgd_run):
    from fedrec.privacy.dpsgd import dp_sgd_train

    X, y, kw, _, model, res = dpsgd_run
    twin = _logreg()
    again = dp_sgd_train(twin, X, y, **kw, delta=1e-3)
    assert again == res
    for a, b in zip(_weights(twin), _weights(model)):
        np.testing.assert_array_equal(a, b)
    other = _logreg()
    dp_sgd_train(other, X, y, **{**kw, "seed": 4, "epochs": 1}, delta=1e-3)
    assert not np.array_equal(_weights(other)[0], _weights(model)[0])


def test_dpsgd_zero_noise_empty_batches_and_adam():
    pytest.importorskip("opacus")
    from fedrec.privacy.dpsgd import dp_sgd_train

    X, y = _logreg_data(n=4)
    res = dp_sgd_train(
        _logreg(),
        X,
        y,
        epochs=3,
        batch_size=1,  # q = 1/4: empty Poisson batches are likely and must not break
        lr=0.1,
        seed=0,
        noise_multiplier=0.0,
        max_grad_norm=1.0,
        delta=1e-3,
        optimizer="adam",
    )
    assert res.steps == 12 and res.epsilon == math.inf
    empty = dp_sgd_train(
        _logreg(), X[:0], y[:0], epochs=1, batch_size=2, lr=0.1, seed=0,
        noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-3,
    )  # fmt: skip
    assert empty.num_examples == 0 and empty.epsilon == 0.0 and math.isnan(empty.loss)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"delta": 1.0}, "delta"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_dpsgd_input_errors(change, match):
    pytest.importorskip("opacus")
    from fedrec.privacy.dpsgd import dp_sgd_train

    X, y = _logreg_data(n=10)
    kw = dict(
        epochs=1, batch_size=5, lr=0.1, seed=0, noise_multiplier=1.0, max_grad_norm=1.0,
        delta=1e-3,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=match):
        dp_sgd_train(_logreg(), X, y, **{**kw, **change})


def test_dpsgd_unsupported_model_and_bad_labels():
    pytest.importorskip("opacus")
    from fedrec.privacy.dpsgd import dp_sgd_train

    X, y = _logreg_data(n=10)
    kw = dict(
        epochs=1, batch_size=5, lr=0.1, seed=0, noise_multiplier=1.0, max_grad_norm=1.0,
        delta=1e-3,
    )  # fmt: skip
    bn = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="Opacus cannot train"):
        dp_sgd_train(bn, X, y, **kw)
    with pytest.raises(ConfigError, match="out of range"):
        dp_sgd_train(_logreg(), X, y + 5, **kw)


def test_missing_opacus_is_one_clear_error(monkeypatch):
    from fedrec.privacy.dpsgd import dp_sgd_train

    monkeypatch.setitem(sys.modules, "opacus", None)
    X, y = _logreg_data(n=10)
    with pytest.raises(ConfigError, match=r"pip install 'fedrec\[privacy\]'"):
        dp_sgd_train(
            _logreg(), X, y, epochs=1, batch_size=5, lr=0.1, seed=0, noise_multiplier=1.0,
            max_grad_norm=1.0, delta=1e-3,
        )  # fmt: skip

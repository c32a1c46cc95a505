"""Federated LEGO (``lego`` strategy + ``LegoClient``): equal to the pure drivers,
eps balls, dynamic requests, cohort invariance, what leaves a client, config errors.

Small synthetic world (``synthetic-rec``, 200 users, d = 16, 2 FedMF rounds) with a
short LEGO schedule. ``synthetic-rec`` plants one attribute (``gender``); the fixture
:func:`extra_attributes` adds two random categorical attributes to the cached dataset
(``age_bucket`` with 3 classes, ``occupation`` with 4) so that multi-attribute and
dynamic requests can be exercised; they carry no signal, which does not matter for
these mechanical checks (the quality is measured in ``experiments/lego``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import fedrec
from fedrec.algorithms import lego as L
from fedrec.clients import lego as C
from fedrec.errors import ConfigError
from fedrec.recsys.data import user_data

OPTIONS = "num_users=200"
N, D = 200, 16
BASE = {
    "strategy.name": "lego",
    "dataset.name": "synthetic-rec",
    "dataset.options": OPTIONS,
    "strategy.params.users-per-client": 10,
    "partition.num-clients": 20,
    "strategy.params.dim": D,
    "num-server-rounds": 2,
    "train.lr": 0.5,
    "train.batch-size": 8,
    "output.plots": False,
    "output.progress": False,
    "output.client-metrics": False,
    "output.checkpoint": False,
    "runtime.num-nodes": 1,
    "strategy.params.eps": 0.5,
    "strategy.params.steps": 8,
    "strategy.params.n-phi": 2,
    "strategy.params.warmup-phi": 4,
    "strategy.params.lr-phi": 1e-2,
    "strategy.params.lr-emb": 0.1,
    "strategy.params.hidden": 8,
    "strategy.params.combine-steps": 4,
    "strategy.params.combine-lr": 0.1,
}
DYNAMIC = {
    **BASE,
    "strategy.params.attributes": "gender,age_bucket",
    "strategy.params.add-attributes": "occupation",
    "strategy.params.withdraw-attributes": "age_bucket",
    "strategy.params.consent-fraction": 0.8,
    "strategy.params.release-embeddings": True,
    # the early stop of Step 1 and the warm start of Step 2 at this scale
    "strategy.params.steps": 12,
    "strategy.params.calibrate-patience": 2,
    "strategy.params.warm-combine-steps": 2,
}
EXTRA = {"age_bucket": ["a", "b", "c"], "occupation": ["w", "x", "y", "z"]}


@pytest.fixture
def extra_attributes(add_user_attributes):
    ds, _ = user_data("synthetic-rec", OPTIONS)
    with add_user_attributes(ds, EXTRA):
        yield ds


def released(path, name="embeddings.npz"):
    z = np.load(path / name)
    return z["embeddings"][np.argsort(z["users"])].astype(np.float64)


def pure_lego(lg, U0):
    """The pure dynamic driver with the run's seed and options."""
    return L.Lego(
        U0,
        eps=lg["eps"],
        relative=True,
        seed=lg["seed"],
        calibrate_options=lg["calibrate_options"],
        combine_options=lg["combine_options"],
    )


def check_request(fed, ref):
    """A federated request's record against the pure driver's last request."""
    t = ref.timings[-1]
    assert fed["alpha"] == pytest.approx(ref.alpha, abs=1e-7)
    assert list(fed["alpha"]) == list(ref.alpha)
    assert fed["calibration_steps"] == t["calibration_steps"]
    assert (fed["combine_steps"], fed["warm"]) == (t["combine_steps"], t["warm"])
    assert fed["messages"] == t["messages"]  # the pure driver counts the same schedule


# ----------------------------------------------------------------- (a) + (b) + (c)
@pytest.mark.e2e
def test_federated_lego_equals_pure_drivers_and_stays_in_balls(lego_dynamic_run):
    out, summary, _, ds = lego_dynamic_run  # the DYNAMIC run (conftest, once per module)
    lg = json.loads((out / "lego.json").read_text())
    U0, U = released(out, "embeddings_original.npz"), released(out)
    mask = C.consent_mask(0, np.arange(N), 0.8)  # the users who consent
    assert 0.6 * N < mask.sum() < N
    assert lg["consenting_users"] == {"gender": mask.sum(), "occupation": mask.sum()}
    # the pure dynamic driver on the released originals, the same three requests
    ref = pure_lego(lg, U0)
    req = lg["requests"]
    ref.request(
        {a: ds.user_attrs[a] for a in ("gender", "age_bucket")},
        dict.fromkeys(("gender", "age_bucket"), mask),
    )
    check_request(req[0], ref)
    ref.add("occupation", ds.user_attrs["occupation"], mask)
    check_request(req[1], ref)
    ref.withdraw("age_bucket")
    check_request(req[2], ref)
    assert list(req[2]["alpha"]) == ["gender", "occupation"]
    np.testing.assert_allclose(U, ref.embeddings(), atol=1e-6, rtol=0)
    assert L.max_row_shift(U, U0) > 1e-3  # something moved
    # the early stop cut some calibration short; the add and the withdraw were warm
    steps = {**req[0]["calibration_steps"], **req[1]["calibration_steps"]}
    assert min(steps.values()) < DYNAMIC["strategy.params.steps"], steps
    assert [r["warm"] for r in req] == [False, True, True]
    assert [r["combine_steps"] for r in req] == [4, 2, 2]
    # the Step-1 MI histories are the driver's too
    first = req[0]
    np.testing.assert_allclose(
        first["history"]["calibrate"]["gender"]["mi"],
        ref.calibrations["gender"].history["mi"],
        rtol=1e-6,
        atol=1e-9,
    )
    # (b) every row inside its own ball
    eps_u = lg["eps"] * np.linalg.norm(U0, axis=1)
    assert np.all(L.row_shifts(U, U0) <= eps_u * (1 + 1e-6) + 1e-7)
    # the summary's final metrics are those after the last request; before = FedMF's model
    assert summary["final"]["global"]["ndcg@10"] == pytest.approx(
        lg["requests"][-1]["metrics"]["ndcg@10"]
    )
    assert lg["before"]["ndcg@10"] > 0


@pytest.mark.e2e
def test_add_reruns_only_the_new_calibration_and_withdraw_none(lego_dynamic_run):
    out, _, sent, _ = lego_dynamic_run
    lg = json.loads((out / "lego.json").read_text())
    req = lg["requests"]
    assert [r["op"] for r in req] == ["request", "add", "withdraw"]
    assert [r["num_calibrations"] for r in req] == [2, 1, 0]
    assert [r["calibrations_run"] for r in req] == [["gender", "age_bucket"], ["occupation"], []]
    assert lg["total_calibrations"] == 3
    assert [r["active"] for r in req] == [
        ["gender", "age_bucket"],
        ["gender", "age_bucket", "occupation"],
        ["gender", "occupation"],
    ]
    # what was actually sent: one prior phase per calibrating request, carrying only them
    priors = [a for action, a, _ in sent if action == "lego_prior"]
    assert priors == ["gender,age_bucket", "occupation"]
    cal = [(a, n) for action, a, n in sent if action == "lego_calibrate"]
    p = BASE["strategy.params.n-phi"], BASE["strategy.params.warmup-phi"]
    s0, s1 = req[0]["calibration_steps"], req[1]["calibration_steps"]
    first = len(calibration_schedule(max(s0.values()), *p))
    assert len(cal) == first + len(calibration_schedule(s1["occupation"], *p))
    assert cal[0] == ("gender,age_bucket", 2) and cal[first:] == [("occupation", 1)] * (
        len(cal) - first
    )
    for t in ("gender", "age_bucket"):  # a calibration is in the messages until it stops
        n_t = sum(t in a.split(",") for a, _ in cal[:first])
        assert n_t == len(calibration_schedule(s0[t], *p)), (t, s0)
    for r in req:
        assert r["messages"]["calibrate"] == (
            1 + len(calibration_schedule(max(r["calibration_steps"].values()), *p))
            if r["calibration_steps"]
            else 0
        )
    # Step 2 of the add: warm-up messages carry only the new attribute's estimator
    comb = [(a, n) for action, a, n in sent if action == "lego_combine"]
    n_phi, warm = p[0], DYNAMIC["strategy.params.warm-combine-steps"]
    first_comb = p[1] + BASE["strategy.params.combine-steps"] * (n_phi + 1)
    add = comb[first_comb : first_comb + p[1] + warm * (n_phi + 1)]
    assert add[: p[1]] == [("gender,age_bucket,occupation", 1)] * p[1]
    assert set(add[p[1] :]) == {("gender,age_bucket,occupation", 3)}
    assert len(comb) == first_comb + len(add) + warm * (n_phi + 1)  # withdraw: all warm
    assert req[1]["messages"]["combine"] == len(add) + 1  # + lego_apply
    assert req[2]["messages"]["calibrate"] == 0 and req[2]["upload_bytes"]["calibrate"] == 0
    for r in req:
        assert r["total_s"] >= r["combine_s"] > 0
    # rounds.jsonl carries the compact record on the last round
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    last = [r for r in rows if r.get("scope") == "global"][-1]
    assert last["lego"]["total_calibrations"] == 3 and "history" not in last["lego"]["requests"][0]


@pytest.mark.e2e
@pytest.mark.parametrize("balance", ["sum", "minmax"])
def test_other_objectives_federated_equal_pure(tmp_path, extra_attributes, balance):
    """``combine-balance`` sum and minmax (the DYNAMIC run uses the default), a request
    and a warm add, against the pure driver."""
    cfg = {
        **BASE,
        "strategy.params.attributes": "gender,occupation",
        "strategy.params.add-attributes": "age_bucket",
        "strategy.params.combine-balance": balance,
        "strategy.params.combine-temperature": 0.001,  # the vCLUB terms here are ~0.01
        "strategy.params.warm-combine-steps": 3,
        "strategy.params.release-embeddings": True,
    }
    out = tmp_path / "r"
    fedrec.run(cfg, backend="local", out=out, quiet=True)
    lg = json.loads((out / "lego.json").read_text())
    assert lg["combine_options"]["balance"] == balance
    U0, ds = released(out, "embeddings_original.npz"), extra_attributes
    ref = pure_lego(lg, U0)
    ref.request({a: ds.user_attrs[a] for a in ("gender", "occupation")})
    check_request(lg["requests"][0], ref)
    ref.add("age_bucket", ds.user_attrs["age_bucket"])
    check_request(lg["requests"][1], ref)
    hist = lg["requests"][1]["history"]["combine"]  # the balance's coefficients c_t
    np.testing.assert_allclose(hist["weights"], ref.combination.history["weights"], rtol=1e-6)
    if balance == "minmax":  # each step after the first weights the previous step's worst
        assert any(max(w) / min(w) > 10 for w in hist["weights"][1:])
    np.testing.assert_allclose(released(out), ref.embeddings(), atol=1e-6, rtol=0)


def calibration_schedule(*args):
    from fedrec.strategies.lego import calibration_schedule as schedule

    return schedule(*args)


def test_calibration_schedule_is_the_driver_sequence():
    for steps, n_phi, warm in [(3, 2, 4), (2, 0, 1), (0, 5, 3), (4, 1, 0)]:
        msgs = calibration_schedule(steps, n_phi, warm)
        ops = []
        for step, fit in msgs:
            ops += (["step"] if step else []) + (["fit"] if fit else [])
        want = ["fit"] * warm + (["fit"] * n_phi + ["step"]) * steps
        while want and want[-1] == "fit":  # fits after the last step change nothing
            want.pop()
        assert ops == want
        if steps and n_phi:  # every step shares the next fit's message
            assert len(msgs) == warm + steps * n_phi + 1


# ----------------------------------------------------------------- (d) cohort invariance
@pytest.mark.slow
@pytest.mark.e2e
def test_cohort_on_one_node_equals_one_node_per_client(
    tmp_path, lego_dynamic_run, extra_attributes
):
    cfg = DYNAMIC
    assert cfg["runtime.num-nodes"] == 1  # run a = the shared DYNAMIC run
    (tmp_path / "a").symlink_to(lego_dynamic_run[0], target_is_directory=True)
    a = lego_dynamic_run[1]
    b = fedrec.run({**cfg, "runtime.num-nodes": 0}, backend="local", out=tmp_path / "b")
    c = fedrec.run({**cfg, "runtime.num-nodes": 3}, backend="local", out=tmp_path / "c")
    assert (a["num_nodes"], b["num_nodes"], c["num_nodes"]) == (1, 20, 3)
    assert a["final"] == b["final"] == c["final"]
    ea = released(tmp_path / "a")
    for other in ("b", "c"):  # FedMF's rounds first: LEGO starts from these embeddings
        np.testing.assert_array_equal(
            released(tmp_path / other, "embeddings_original.npz"),
            released(tmp_path / "a", "embeddings_original.npz"),
            err_msg="the FedMF rounds before LEGO already differ (experiments/lego/README.md, "
            "'Cohort invariance')",
        )
        np.testing.assert_array_equal(released(tmp_path / other), ea)
        la, lo = (json.loads((tmp_path / x / "lego.json").read_text()) for x in ("a", other))
        assert [r["alpha"] for r in la["requests"]] == [r["alpha"] for r in lo["requests"]]


def test_batch_first_maths_is_slice_wise_and_equals_the_2d_functions():
    """The client half runs the pure functions on (C, n, d) stacks: every slice must be
    bit-for-bit what the function gives on that slice alone (cohort invariance), and the
    2-D pure functions on the flattened rows agree to rounding."""
    rng = np.random.default_rng(0)
    Cn, n, d, K, h = 5, 3, 6, 3, 7
    X = rng.standard_normal((Cn, n, d))
    y = rng.integers(0, K, (Cn, n))
    m = rng.random((Cn, n)) < 0.6
    m[0] = False
    params = L.classifier_init(d, K, h, seed=2)
    grads, cnt, loss = L.classifier_grad_sums(params, X, y, m)
    assert cnt.shape == loss.shape == (Cn,) and all(g.shape[0] == Cn for g in grads)
    for c in range(Cn):
        one, c1, l1 = L.classifier_grad_sums(params, X[c : c + 1], y[c : c + 1], m[c : c + 1])
        for a, b in zip(grads, one):
            np.testing.assert_array_equal(a[c], b[0])
        assert (cnt[c], loss[c]) == (c1[0], l1[0])
        g, c0, l0 = L.classifier_grad_sums(params, X[c], y[c], m[c])
        for a, b in zip(grads, g):
            np.testing.assert_allclose(a[c], b, atol=1e-12)
        assert cnt[c] == c0 and loss[c] == pytest.approx(l0, abs=1e-12)
    assert not any(g[0].any() for g in grads)
    # calibration step (two steps, so the Adam state is exercised)
    X0 = X.copy()
    prior = np.array([0.2, 0.5, 0.3])
    eps = 0.3 * np.linalg.norm(X0, axis=-1)
    lr = 0.05 * eps
    U, st, ref, ref_state = X0, None, X0.reshape(-1, d), None
    alone, alone_st = [X0[c : c + 1] for c in range(Cn)], [None] * Cn
    for _ in range(2):
        U, st, mi = L.calibration_step(params, U, X0, y, prior, lr, eps, opt_state=st, mask=m)
        for c in range(Cn):
            alone[c], alone_st[c], mi_c = L.calibration_step(
                params,
                alone[c],
                X0[c : c + 1],
                y[c : c + 1],
                prior,
                lr[c : c + 1],
                eps[c : c + 1],
                opt_state=alone_st[c],
                mask=m[c : c + 1],
            )
            np.testing.assert_array_equal(alone[c][0], U[c])
            assert mi_c[0] == mi[c]
        ref, ref_state, ref_mi = L.calibration_step(
            params,
            ref,
            X0.reshape(-1, d),
            y.ravel(),
            prior,
            lr.ravel(),
            eps.ravel(),
            opt_state=ref_state,
            mask=m.ravel(),
        )
        assert mi.sum() == pytest.approx(ref_mi, abs=1e-10)
    np.testing.assert_allclose(U.reshape(-1, d), ref, atol=1e-12)
    # combination gradient and mixture
    S = [X0, U, X0 + 0.1]
    at = np.array([0.2, -0.1, 0.4])
    ps = [L.classifier_init(d, K, h, seed=s) for s in (3, 4, 5)]
    ys = [y, (y + 1) % K, y[:, ::-1]]
    w = np.array([0.5, 0.25, 1.0])
    g, mis = L.combine_grad(at, S, ps, ys, [prior] * 3, masks=[m] * 3, weights=w)
    assert g.shape == mis.shape == (Cn, 3)
    for c in range(Cn):
        sl = slice(c, c + 1)
        g1, mi1 = L.combine_grad(
            at,
            [s[sl] for s in S],
            ps,
            [yy[sl] for yy in ys],
            [prior] * 3,
            masks=[m[sl]] * 3,
            weights=w,
        )
        np.testing.assert_array_equal(g1[0], g[c])
        np.testing.assert_array_equal(mi1[0], mis[c])
        g0, mi0 = L.combine_grad(
            at,
            [s[c] for s in S],
            ps,
            [yy[c] for yy in ys],
            [prior] * 3,
            masks=[m[c]] * 3,
            weights=w,
        )
        np.testing.assert_allclose(g[c], g0, atol=1e-12)
        np.testing.assert_allclose(mis[c], mi0, atol=1e-12)
    mixed = L.mix(at, S)
    for c in range(Cn):
        np.testing.assert_array_equal(L.mix(at, [s[c : c + 1] for s in S])[0], mixed[c])
    np.testing.assert_allclose(
        mixed.reshape(-1, d), L.mix(at, [s.reshape(-1, d) for s in S]), atol=1e-14
    )


# ----------------------------------------------------------------- (e) what leaves a client
ALLOWED_LEGO_METRICS = {"counts", "num-examples", "count", "loss", "mi", "g-alpha"}


@pytest.mark.e2e
def test_no_message_leaving_a_client_holds_embeddings_or_labels(
    tmp_path, monkeypatch, extra_attributes
):
    from fedrec import protocol
    from fedrec.clients import app as client_app_module
    from fedrec.specs import lego as S
    from fedrec.state import StateStore

    sent = []
    original = client_app_module.handle

    def spy(message, context):
        reply = original(message, context)
        sent.append((message.metadata.message_type, reply, context))
        return reply

    monkeypatch.setattr(client_app_module, "handle", spy)
    cfg = {
        **BASE,
        "strategy.params.users-per-client": 1,
        "partition.num-clients": N,
        "num-server-rounds": 1,
        "strategy.params.attributes": "gender,age_bucket",
        "strategy.params.consent-fraction": 0.5,
        "strategy.params.steps": 3,
        "strategy.params.warmup-phi": 2,
        "strategy.params.combine-steps": 2,
    }
    fedrec.run(cfg, backend="local", out=tmp_path / "r")
    ds = extra_attributes
    consent = C.consent_mask(0, np.arange(N), 0.5)
    assert 0 < consent.sum() < N
    # every private embedding any client held: U0, calibrations, final P
    rows = []
    for ctx in {id(c): c for _, _, c in sent}.values():  # the node's columnar state
        rec = ctx.state.array_records[protocol.STATE]
        store = StateStore.from_arrays({k: rec[k].numpy() for k in rec})
        rows.append(store.columns[S.P].values)
        rows += C.state_embeddings(store.columns[S.STATE].values, D)
    rows = np.unique(np.concatenate(rows), axis=0)
    assert len(rows) >= 3 * N  # U0, P (= U(alpha)), 2 calibrations

    def keys(a):  # rows / windows as hashable float32 values rounded to 1e-6
        return {tuple(r) for r in np.round(np.asarray(a, dtype=np.float32), 6).tolist()}

    private = keys(rows)
    lego_replies = 0

    def replies(reply):
        rec = reply.content.array_records[protocol.REPLIES]
        return protocol.unpack_replies({k: rec[k].numpy() for k in rec})

    for mtype, reply, _ in sent:
        if not mtype.startswith("query.lego_"):
            continue
        for c, weights, metrics in replies(reply):
            assert set(metrics) <= ALLOWED_LEGO_METRICS, set(metrics)
            if not consent[c]:  # nothing label-dependent at all
                for v in metrics.values():
                    assert not np.any(np.asarray(v)), (mtype, c, metrics)
                assert all(len(w) == 0 for w in weights or []), (
                    f"non-consenting client {c} sent arrays in {mtype}"
                )
            lego_replies += 1
            for arr in (w for w in weights or [] if w.size >= D):  # shorter: no embedding
                win = np.lib.stride_tricks.sliding_window_view(arr.ravel(), D)
                assert not keys(win) & private, f"{mtype} from client {c} contains an embedding"
    assert lego_replies > 0
    # no metric of a LEGO reply is a label: only counts (of consenting users), sums, losses
    for mtype, reply, _ in sent:
        if mtype == "query.lego_prior":
            for c, _, metrics in replies(reply):
                assert sum(metrics[S.COUNTS]) == 2 * int(consent[c])  # one user, two attributes
    assert ds.user_attrs["gender"].shape == (N,)


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "params, match",
    [
        (
            {"attributes": "gender,zodiac"},
            r"'strategy.params.attributes': 'zodiac' .*allowed: gender",
        ),
        ({"attributes": ""}, r"'strategy.params.attributes': empty"),
        ({"attributes": "gender,gender"}, r"'strategy.params.attributes': .*twice"),
        ({"add-attributes": "gender"}, r"'strategy.params.add-attributes': gender already"),
        ({"withdraw-attributes": "gender2"}, r"'strategy.params.withdraw-attributes'"),
        ({"eps": -0.1}, r"'strategy.params.eps'.*>= 0"),
        ({"consent-fraction": 0.0}, r"'strategy.params.consent-fraction'.*\(0, 1\]"),
        (
            {"combine-balance": "mean"},
            r"'strategy.params.combine-balance': 'mean' .*allowed values: sum, normalized, minmax",
        ),
        ({"combine-temperature": 0.0}, r"'strategy.params.combine-temperature'.*> 0"),
        ({"combine-tol": -1.0}, r"'strategy.params.combine-tol'.*>= 0"),
        ({"combine-window": 0}, r"'strategy.params.combine-window'.*>= 1"),
        ({"warm-combine-steps": -1}, r"'strategy.params.warm-combine-steps'.*>= 0"),
        ({"calibrate-patience": -2}, r"'strategy.params.calibrate-patience'.*>= 0"),
        ({"calibrate-tol": -0.5}, r"'strategy.params.calibrate-tol'.*>= 0"),
    ],
)
def test_bad_params_are_one_line_config_errors(tmp_path, params, match):
    cfg = {
        **BASE,
        "strategy.params.attributes": "gender",
        **{f"strategy.params.{k}": v for k, v in params.items()},
    }
    with pytest.raises(ConfigError, match=match) as info:
        fedrec.run(cfg, backend="local", out=tmp_path / "x")
    assert "\n" not in str(info.value)

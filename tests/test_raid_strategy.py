"""Federated RAID: the penalty hook is per-user, cohorts equal one node per client,
the centroid rounds shrink the distance between the group distributions."""

import json

import numpy as np
import pytest
import torch

import fedrec
from fedrec.errors import FedrecError
from fedrec.models.recsys import mf_bpr_user_step

BASE = {
    "strategy.name": "raid",
    "dataset.name": "synthetic-rec",
    "dataset.options": "num_users=120",
    "strategy.params.users-per-client": 1,
    "partition.num-clients": 120,
    "strategy.params.dim": 8,
    "num-server-rounds": 4,
    "train.lr": 0.5,
    "train.batch-size": 8,
    "output.plots": False,
    "output.progress": False,
    "output.client-metrics": False,
    "strategy.params.warmup-rounds": 1,
    "strategy.params.centroid-every": 1,
    "strategy.params.gamma": 0.4,
    "runtime.num-nodes": 1,
}


def test_user_grad_hook_is_per_user():
    g = torch.Generator().manual_seed(0)
    P, Q = torch.randn(4, 3, generator=g), torch.randn(10, 3, generator=g)
    T = torch.randn(4, 3, generator=g)
    pos = [np.array([0, 1, 2]), np.array([3]), np.array([4, 5]), np.array([6, 7, 8, 9])]
    neg = [np.array([9, 8, 7]), np.array([0]), np.array([1, 2]), np.array([0, 1, 2, 3])]

    def hook(T):
        return lambda Pa, idx: 2 * 0.3 * (Pa - T.index_select(0, idx))

    both = mf_bpr_user_step(
        P, Q, pos, neg, lr=0.1, batch_size=2, seed=[1, 2, 3, 4], user_grad=hook(T)
    )
    plain = mf_bpr_user_step(P, Q, pos, neg, lr=0.1, batch_size=2, seed=[1, 2, 3, 4])
    assert not torch.allclose(both.P, plain.P)
    for j in range(4):
        one = mf_bpr_user_step(
            P[j : j + 1],
            Q,
            pos[j : j + 1],
            neg[j : j + 1],
            lr=0.1,
            batch_size=2,
            seed=[j + 1],
            user_grad=hook(T[j : j + 1]),
        )
        torch.testing.assert_close(one.P[0], both.P[j])
    # with no BPR signal left (lr on BPR only moves P), the hook alone pulls P toward T
    z = mf_bpr_user_step(P, Q, [np.array([0])] * 4, [np.array([0])] * 4, lr=0.5, user_grad=hook(T))
    assert float((z.P - T).norm()) < float((P - T).norm())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["gaussian", "adversarial"])
@pytest.mark.e2e
def test_cohort_equals_one_node_per_client(tmp_path, mode):
    cfg = {
        **BASE,
        "strategy.params.mode": mode,
        "num-server-rounds": 3,
        "dataset.options": "num_users=40",
        "partition.num-clients": 40,
    }
    a = fedrec.run({**cfg, "runtime.num-nodes": 1}, backend="local", out=tmp_path / "a")
    b = fedrec.run({**cfg, "runtime.num-nodes": 0}, backend="local", out=tmp_path / "b")
    assert b["num_nodes"] == 40 and a["final"] == b["final"]
    ra, rb = (json.loads((tmp_path / x / "raid.json").read_text()) for x in "ab")
    assert len(ra["defense"]) == len(rb["defense"]) == 3
    for x, y in zip(ra["defense"], rb["defense"]):  # diagnostics: equal up to BLAS rounding
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-7)


@pytest.mark.e2e
def test_centroid_rounds_shrink_the_group_distance(tmp_path):
    from fedrec.algorithms.raid import bures_w2, group_moment_sums, moments_from_sums
    from fedrec.data import load_dataset

    g = np.asarray(load_dataset("synthetic-rec", num_users=120).user_attrs["gender"])
    out = {}
    for gamma in (0.0, 0.4):
        run = tmp_path / f"g{gamma}"
        fedrec.run(
            {
                **BASE,
                "strategy.params.gamma": gamma,
                "strategy.params.release-embeddings": True,
                "strategy.params.target-moments": "barycenter",
            },
            backend="local",
            out=run,
        )
        e = np.load(run / "embeddings.npz")
        m, C = moments_from_sums(
            *group_moment_sums(e["embeddings"][np.argsort(e["users"])].astype(np.float64), g, 2)
        )
        out[gamma] = bures_w2(m[0], C[0], m[1], C[1])  # between the released groups
        log = json.loads((run / "raid.json").read_text())["defense"]
        assert [x["version"] for x in log] == [1, 2, 3, 4]
        if gamma:  # the Gaussian W2 measured at each centroid round goes down
            assert log[-1]["group-w2-gaussian"] < 0.5 * log[0]["group-w2-gaussian"]
    assert out[0.4] < 0.5 * out[0.0]


@pytest.mark.e2e
@pytest.mark.parametrize("targets", ["barycenter", "resampled"])
def test_release_transport_lands_the_released_groups_on_their_targets(tmp_path, targets):
    """release-transport: after the last round every user takes its OT target, so the
    released groups' moments are the targets' (barycenter: equal; resampled: the drawn
    moments, whose W2 the server logs)."""
    from fedrec.algorithms.raid import bures_w2, group_moment_sums, moments_from_sums
    from fedrec.data import load_dataset

    g = np.asarray(load_dataset("synthetic-rec", num_users=120).user_attrs["gender"])
    run = tmp_path / targets
    s = fedrec.run(
        {
            **BASE,
            "num-server-rounds": 3,
            "strategy.params.centroid-every": 5,  # the last round is no centroid round
            "strategy.params.release-embeddings": True,
            "strategy.params.release-transport": True,
            "strategy.params.target-moments": targets,
        },
        backend="local",
        out=run,
    )
    e = np.load(run / "embeddings.npz")
    P = e["embeddings"][np.argsort(e["users"])].astype(np.float64)
    m, C = moments_from_sums(*group_moment_sums(P, g, 2))
    w2 = bures_w2(m[0], C[0], m[1], C[1]) ** 0.5
    log = json.loads((run / "raid.json").read_text())["defense"]
    assert [x["round"] for x in log] == [1, 3] and log[-1]["transported"]
    expected = log[-1].get("group-w2-target", 0.0)
    assert (targets == "resampled") == (expected > 0.1)
    assert w2 == pytest.approx(expected, abs=2e-3)  # float32 embeddings
    assert s["final"]["global"]["ndcg@10"] >= 0


@pytest.mark.e2e
def test_free_support_atom_targets_move_every_group_mean_onto_the_barycenter_mean(tmp_path):
    """Each user moves with its k-means atom's displacement; the atoms are their members'
    means and the plans' column marginals are uniform, so after release-transport every
    group's mean is the mean of the barycenter atoms (a check of the atom bookkeeping
    between the server's pooled order and each client's re-quantisation)."""
    from fedrec.data import load_dataset

    g = np.asarray(load_dataset("synthetic-rec", num_users=120).user_attrs["gender"])
    run = tmp_path / "fs"
    fedrec.run(
        {
            **BASE,
            "strategy.params.mode": "free-support",
            "strategy.params.support-targets": "atoms",
            "strategy.params.target-moments": "barycenter",
            "partition.num-clients": 12,
            "strategy.params.users-per-client": 10,
            "strategy.params.quantize-k": 3,
            "strategy.params.support-size": 8,
            "num-server-rounds": 2,
            "strategy.params.centroid-every": 5,
            "strategy.params.release-embeddings": True,
            "strategy.params.release-transport": True,
        },
        backend="local",
        out=run,
    )
    e = np.load(run / "embeddings.npz")
    P = e["embeddings"][np.argsort(e["users"])].astype(np.float64)
    np.testing.assert_allclose(P[g == 0].mean(0), P[g == 1].mean(0), atol=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("targets", ["atoms", "client-plans"])
def test_free_support_cross_silo_runs_and_bad_attribute_is_named(tmp_path, targets):
    s = fedrec.run(
        {
            **BASE,
            "strategy.params.mode": "free-support",
            "strategy.params.support-targets": targets,
            "partition.num-clients": 12,
            "strategy.params.users-per-client": 10,
            "strategy.params.quantize-k": 3,
            "strategy.params.support-size": 8,
            "num-server-rounds": 2,
        },
        backend="local",
        out=tmp_path / "fs",
    )
    assert s["final"]["global"]["ndcg@10"] >= 0
    log = json.loads((tmp_path / "fs" / "raid.json").read_text())["defense"]
    from fedrec.data import load_dataset

    g = np.asarray(load_dataset("synthetic-rec", num_users=120).user_attrs["gender"])
    per_silo = [np.bincount(g[10 * c : 10 * c + 10], minlength=2) for c in range(12)]
    # k-means atoms: min(k, users of the group in the silo), for every silo and group
    assert log[0]["atoms"] == sum(int(np.minimum(n, 3).sum()) for n in per_silo)
    with pytest.raises(FedrecError, match="allowed: gender"):
        fedrec.run(
            {**BASE, "strategy.params.attribute": "age"}, backend="local", out=tmp_path / "x"
        )


def test_experiment_report_averages_seeds_and_reads_noise_at_equal_ndcg():
    """experiments/raid/run_raid.py's table: NDCG as % of the same seed's reference,
    mean ± std over seeds, the strongest attacker's symmetric AUC, and the noise curve
    interpolated at a run's NDCG."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    path = Path(__file__).resolve().parents[1] / "experiments" / "raid" / "run_raid.py"
    spec = importlib.util.spec_from_file_location("run_raid", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    atk = ("mlp", "logreg")

    def row(name, seed, ndcg, sym):
        r = {"name": name, "seed": seed, "ndcg@10": ndcg, "w2": 1.0, "wall": 1.0, "extra": 0}
        for a in mod.ATTRS:
            r[f"sym:{a}:mlp"], r[f"sym:{a}:logreg"] = sym, sym - 0.01
        r["acc:gender:mlp"], r["majority:gender"] = 0.6, 0.7
        return r

    rows = [
        row("none", 1, 0.04, 0.70),
        row("none", 2, 0.02, 0.70),
        row("noise-s1", 1, 0.03, 0.60),  # 75 %
        row("noise-s1", 2, 0.015, 0.60),  # 75 %
        row("raid-g1", 1, 0.036, 0.52),  # 90 %
        row("raid-g1", 2, 0.020, 0.54),  # 100 %
        row("silo-none", 1, 0.05, 0.70),
        row("silo-raid-g1", 1, 0.045, 0.50),  # 90 % of silo-none
    ]
    S = mod.summarise(rows, atk)
    assert S["raid-g1"]["ndcg%"][:2] == pytest.approx((95.0, 5.0))
    assert S["raid-g1"]["gender:worst"][0] == pytest.approx(0.53)
    assert S["silo-raid-g1"]["ndcg%"][0] == pytest.approx(90.0)
    # noise curve (75 %, 0.60) -> (100 %, 0.70): at 95 % it reads 0.68
    assert mod.noise_at(S, "gender:worst", 95.0) == pytest.approx(0.68)
    assert mod.noise_at(S, "gender:worst", 50.0) is None
    text = mod.report(rows, SimpleNamespace(attackers=list(atk), seeds=[1, 2]))
    assert "| raid-g1 | 95.0 ± 5.0 | 0.530 ± 0.010 |" in text
    assert "| 0.600 (0.700) | 1.000 | 1 | 0 |" in text  # accuracy (majority), W2, wall, gamma
    assert "| raid-g1 | 95.0 | 0.530 / 0.680 |" in text


def test_joint_attribute_codes_and_run(tmp_path):
    """attribute = "a,b" protects every combination: mixed-radix codes, empty
    combinations skipped, an unknown name in the list named in the error."""
    from fedrec.specs.raid import group_codes

    attrs = {"g": np.array([0, 1, 1, 0]), "a": np.array([2, 0, 1, 2])}
    codes, G = group_codes(attrs, "g, a")
    np.testing.assert_array_equal(codes, [2, 3, 4, 2])
    assert G == 6
    np.testing.assert_array_equal(group_codes(attrs, "a")[0], attrs["a"])
    s = fedrec.run(
        {**BASE, "strategy.params.attribute": "gender,gender", "num-server-rounds": 2},
        backend="local",
        out=tmp_path / "joint",
    )
    assert s["final"]["global"]["ndcg@10"] >= 0
    with pytest.raises(FedrecError, match="'age' is not a user attribute.*allowed: gender"):
        fedrec.run(
            {**BASE, "strategy.params.attribute": "gender,age"}, backend="local", out=tmp_path / "x"
        )

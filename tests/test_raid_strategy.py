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
            {**BASE, "strategy.params.gamma": gamma, "strategy.params.release-embeddings": True},
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
def test_free_support_cross_silo_runs_and_bad_attribute_is_named(tmp_path):
    s = fedrec.run(
        {
            **BASE,
            "strategy.params.mode": "free-support",
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

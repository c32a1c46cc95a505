"""Federated MF-BPR: sparse aggregation, cohort = per-user, no private data leaves."""

import numpy as np
import pytest

import fedrec
from fedrec.config import validate
from fedrec.protocol import ClientReply
from fedrec.strategies.fedmf import FedMF

SMALL = {
    "strategy.name": "fedmf",
    "dataset.name": "synthetic-rec",
    "strategy.params.users-per-client": 50,
    "partition.num-clients": 20,
    "strategy.params.dim": 16,
    "num-server-rounds": 2,
    "train.lr": 0.5,
    "train.batch-size": 8,
    "output.plots": False,
    "output.progress": False,
    "output.client-metrics": False,
}


def test_sparse_aggregation_leaves_untouched_rows_unchanged():
    s = FedMF(validate({"strategy.name": "fedmf"}))
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(6, 3)).astype(np.float32)
    s.current_weights = [Q]
    r1 = ClientReply(
        0,
        1,
        {"num-examples": 2, "train-loss": 0.5},
        [np.array([1, 3]), np.ones((2, 3), np.float32), np.array([1, 1])],
    )
    r2 = ClientReply(
        1,
        1,
        {"num-examples": 1, "train-loss": 0.7},
        [np.array([3]), 3 * np.ones((1, 3), np.float32), np.array([1])],
    )
    (newQ,), m = s.aggregate(1, [r1, r2])
    untouched = [0, 2, 4, 5]
    assert np.array_equal(newQ[untouched], Q[untouched])  # bit for bit
    np.testing.assert_allclose(newQ[1], Q[1] + 1.0, rtol=1e-6)  # one user touched it
    np.testing.assert_allclose(newQ[3], Q[3] + 2.0, rtol=1e-6)  # mean of 1 and 3
    assert m["rows-touched"] == 2 and m["num-examples"] == 3


@pytest.mark.e2e
def test_cohort_on_one_node_equals_one_node_per_client(tmp_path):
    a = fedrec.run({**SMALL, "runtime.num-nodes": 1}, backend="local", out=tmp_path / "a")
    b = fedrec.run({**SMALL, "runtime.num-nodes": 0}, backend="local", out=tmp_path / "b")
    assert a["num_nodes"] == 1 and b["num_nodes"] == 20
    assert a["final"] == b["final"]
    assert a["final"]["global"]["ndcg@10"] > 0


@pytest.mark.e2e
def test_no_message_leaving_a_client_holds_embeddings_or_interactions(tmp_path, monkeypatch):
    from fedrec import protocol
    from fedrec.clients import app as client_app_module
    from fedrec.recsys.data import user_data
    from fedrec.state import StateStore

    sent = []
    original = client_app_module.handle

    def spy(message, context):
        reply = original(message, context)
        sent.append((reply, context))
        return reply

    monkeypatch.setattr(client_app_module, "handle", spy)
    fedrec.run({**SMALL, "runtime.num-nodes": 4}, backend="local", out=tmp_path / "r")
    ds, ud = user_data("synthetic-rec")
    emb_rows, arrays, lists = [], [], []
    contexts = {id(ctx): ctx for _, ctx in sent}  # each node's private state, final
    for context in contexts.values():  # the node's columnar state: field "P" of each client
        rec = context.state.array_records[protocol.STATE]
        store = StateStore.from_arrays({k: rec[k].numpy() for k in rec})
        emb_rows.append(store.columns["P"].values)
    for reply, _ in sent:
        rec = reply.content.array_records[protocol.REPLIES]
        for _, weights, metrics in protocol.unpack_replies({k: rec[k].numpy() for k in rec}):
            arrays += list(weights or [])
            lists += [np.asarray(v) for v in metrics.values() if isinstance(v, np.ndarray)]
    P = np.concatenate(emb_rows)
    assert P.shape[1] == 16 and len(P) == ud.num_users
    for arr in arrays:  # item ids, item-row deltas and counts only
        if arr.ndim == 2:
            assert arr.shape[1] == 16
            assert not any(np.isclose(arr, row, atol=1e-7).all(axis=1).any() for row in P[:50])
    train_sets = {tuple(np.unique(ud.train[u])) for u in range(ud.num_users)}
    for lst in lists + [a for a in arrays if a.ndim == 1]:
        assert tuple(np.unique(lst)) not in train_sets or len(lst) < 3
    assert not any(
        np.array_equal(np.sort(l), np.sort(ds.timestamp[: len(l)])) for l in lists if len(l) > 10
    )


@pytest.mark.e2e
def test_release_writes_threat_model_files(tmp_path):
    out = tmp_path / "rel"
    fedrec.run(
        {**SMALL, "num-server-rounds": 1, "strategy.params.release-embeddings": True},
        backend="local",
        out=out,
    )
    emb = np.load(out / "embeddings.npz")
    assert emb["embeddings"].shape == (1000, 16) and len(np.unique(emb["users"])) == 1000
    assert "clients" in np.load(out / "uploads.npz")


def test_num_clients_must_match_users(tmp_path):
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match="set it to 20"):
        fedrec.run({**SMALL, "partition.num-clients": 7}, backend="local", out=tmp_path / "x")


@pytest.mark.e2e
def test_dataset_options_size_the_synthetic_world(tmp_path):
    from fedrec.errors import ConfigError, FedrecError
    from fedrec.recsys.data import parse_options

    assert parse_options("num_users=120, attr_strength=0.5,x=a") == {
        "num_users": 120,
        "attr_strength": 0.5,
        "x": "a",
    }
    with pytest.raises(ConfigError, match="dataset.options"):
        parse_options("num_users")
    s = fedrec.run(
        {
            **SMALL,
            "dataset.options": "num_users=120",
            "partition.num-clients": 3,
            "strategy.params.users-per-client": 40,
            "num-server-rounds": 1,
        },
        backend="local",
        out=tmp_path / "r",
    )
    assert s["final"]["global"]["num_users"] == 120
    with pytest.raises(FedrecError, match="allowed: num_users"):
        fedrec.run({**SMALL, "dataset.options": "users=5"}, backend="local", out=tmp_path / "x")


def test_server_lr_decays_linearly_and_adam_leaves_untouched_rows():
    s = FedMF(
        validate(
            {
                "strategy.name": "fedmf",
                "num-server-rounds": 5,
                "strategy.params.server-lr": 20.0,
                "strategy.params.server-lr-final": 4.0,
            }
        )
    )
    assert [s.server_lr(r) for r in (1, 3, 5)] == [20.0, 12.0, 4.0]
    a = FedMF(
        validate(
            {
                "strategy.name": "fedmf",
                "strategy.params.server-optimizer": "adam",
                "strategy.params.server-lr": 0.1,
            }
        )
    )
    Q = np.ones((4, 2), np.float32)
    a.current_weights = [Q]
    r = ClientReply(
        0,
        1,
        {"num-examples": 1, "train-loss": 0.1},
        [np.array([2]), np.full((1, 2), -3.0, np.float32), np.array([1])],
    )
    (newQ,), _ = a.aggregate(1, [r])
    np.testing.assert_allclose(newQ[2], 1 - 0.1, rtol=1e-6)  # first Adam step: lr * sign
    assert np.array_equal(newQ[[0, 1, 3]], Q[[0, 1, 3]])


@pytest.mark.slow
@pytest.mark.e2e
def test_federated_ndcg_within_10_percent_of_centralized(tmp_path):
    """Reference check on small data: FedMF-BPR (per-user clients, the ML-100K experiment's
    local settings) against centralized MF-BPR with as many passes over the data."""
    from fedrec.recsys.data import user_data
    from fedrec.recsys.train import evaluate_full_ranking, mf_score_fn, train_mf_bpr

    rounds, local_epochs = 10, 2
    s = fedrec.run(
        {
            **SMALL,
            "dataset.options": "num_users=300",
            "partition.num-clients": 300,
            "strategy.params.users-per-client": 1,
            "num-server-rounds": rounds,
            "train.local-epochs": local_epochs,
            "strategy.params.server-lr": 20.0,
            "runtime.num-nodes": 1,
        },
        backend="local",
        out=tmp_path / "r",
    )
    _, ud = user_data("synthetic-rec", "num_users=300")
    params = train_mf_bpr(ud, ud.num_items, d=16, epochs=rounds * local_epochs, reg=0.0, seed=0)
    central = evaluate_full_ranking(mf_score_fn(params), ud, (10,))["ndcg@10"]
    fed = s["final"]["global"]["ndcg@10"]
    assert central > 0.05
    assert fed >= 0.9 * central, (fed, central)

"""Federated SASRec: per-user steps are cohort-independent, cohort = one node per user,
the server step is FedAvg/FedAdam on the example-weighted deltas, no sequence leaves."""

import copy

import numpy as np
import pytest
import torch

import fedrec
from fedrec.config import validate
from fedrec.models.recsys import SASRec, sasrec_user_step, to_tokens
from fedrec.protocol import ClientReply
from fedrec.strategies.fedsasrec import FedSASRec

SMALL = {
    "strategy.name": "fedsasrec",
    "dataset.name": "synthetic-rec",
    "strategy.params.users-per-client": 50,
    "partition.num-clients": 20,
    "strategy.params.dim": 16,
    "strategy.params.max-len": 20,
    "strategy.params.num-heads": 2,
    "num-server-rounds": 2,
    "train.lr": 1.0,
    "output.plots": False,
    "output.progress": False,
    "output.client-metrics": False,
}


def _user_data():
    from fedrec.recsys.data import user_data

    return user_data("synthetic-rec")[1]


@pytest.mark.slow
def test_user_step_equals_plain_sgd_on_each_user_alone():
    ud = _user_data()
    model = SASRec(ud.num_items, 16, 20, 2, 2, 0.2, seed=3)
    users = list(range(12))
    seqs = [ud.train_seq[u] for u in users]
    n_t = [min(max(len(s) - 1, 0), 20) for s in seqs]
    rng = np.random.default_rng(0)
    negs = [rng.integers(0, ud.num_items, 2 * n) for n in n_t]
    up = sasrec_user_step(
        model, seqs, negs, lr=0.5, epochs=2, seeds=[10 + u for u in users], chunk=5
    )
    names = [n for n, _ in model.named_parameters()]
    for j in (0, 7, 11):
        ref = copy.deepcopy(model).train()
        s = seqs[j]
        x, y = to_tokens([s[:-1]], 20), to_tokens([s[1:]], 20)
        for e in range(2):
            neg = torch.zeros_like(y)
            neg[0, 20 - n_t[j] :] = torch.from_numpy(negs[j].reshape(2, -1)[e] + 1)
            loss = ref.masked_bce(x, y, neg, ref.dropout_noise([10 + users[j] + e], 20))
            assert abs(float(loss.detach()) - up.losses[j, e]) < 1e-5
            g = torch.autograd.grad(loss, list(ref.parameters()))
            with torch.no_grad():
                for prm, gg in zip(ref.parameters(), g):
                    prm -= 0.5 * gg
        delta = {
            n: (b - a).detach()
            for (n, a), (_, b) in zip(model.named_parameters(), ref.named_parameters())
        }
        for n in names[1:]:
            torch.testing.assert_close(up.dense[n][j], delta[n], atol=1e-6, rtol=1e-5)
        sl = slice(int(up.indptr[j]), int(up.indptr[j + 1]))
        ids = torch.as_tensor(up.item_ids[sl]) + 1
        torch.testing.assert_close(
            up.item_deltas[sl], delta["item_emb.weight"][ids], atol=1e-6, rtol=1e-5
        )
        rest = torch.ones(ud.num_items + 1, dtype=torch.bool)
        rest[ids] = False
        assert float(delta["item_emb.weight"][rest].abs().max()) == 0.0  # untouched rows
        alone = sasrec_user_step(
            model, seqs[j : j + 1], negs[j : j + 1], lr=0.5, epochs=2, seeds=[10 + users[j]]
        )
        for n in names[1:]:
            torch.testing.assert_close(alone.dense[n][0], up.dense[n][j], atol=1e-6, rtol=1e-5)


def test_dropout_noise_rows_depend_only_on_their_seed():
    m = SASRec(30, 8, 6, 1, 2, 0.3, seed=0)
    a = m.dropout_noise([5, 9], 6)
    b = m.dropout_noise([9], 6)
    assert torch.equal(a["emb"][1], b["emb"][0])
    keep = (a["emb"] > 0).float().mean()
    assert 0.6 < float(keep) < 0.8 and torch.allclose(a["emb"][a["emb"] > 0], torch.tensor(1 / 0.7))


def test_server_step_is_example_weighted_fedavg_then_adam():
    s = FedSASRec(
        validate(
            {
                "strategy.name": "fedsasrec",
                "strategy.params.server-optimizer": "sgd",
                "strategy.params.server-lr": 1.0,
            }
        )
    )
    W = [np.zeros((5, 2), np.float32), np.zeros(3, np.float32)]
    s.current_weights, s._adam = W, None
    r1 = ClientReply(
        0,
        1,
        {"num-examples": 2, "train-loss": 0.5},
        [np.array([0, 2]), np.full((2, 2), 2.0, np.float32), np.full(3, 4.0, np.float32)],
    )
    r2 = ClientReply(
        1,
        1,
        {"num-examples": 1, "train-loss": 0.2},
        [np.array([2]), np.full((1, 2), 1.0, np.float32), np.full(3, -1.0, np.float32)],
    )
    new, m = s.aggregate(1, [r1, r2])
    np.testing.assert_allclose(new[0][1], 2 / 3)  # item 0 -> row 1 (row 0 = padding)
    np.testing.assert_allclose(new[0][3], 3 / 3)
    assert np.array_equal(new[0][[0, 2, 4]], np.zeros((3, 2)))
    np.testing.assert_allclose(new[1], 1.0)  # (4 - 1) / 3
    assert m["num-examples"] == 3 and abs(m["train-loss"] - 1.2 / 3) < 1e-9
    s2 = FedSASRec(validate({"strategy.name": "fedsasrec", "strategy.params.server-lr": 0.1}))
    s2.current_weights, s2._adam = W, None
    new2, _ = s2.aggregate(1, [r1, r2])  # first Adam step: lr * sign(Delta)
    np.testing.assert_allclose(new2[1], 0.1, rtol=1e-6)
    np.testing.assert_allclose(new2[0][1], 0.1, rtol=1e-6)
    assert np.array_equal(new2[0][2], np.zeros(2))


@pytest.mark.slow
@pytest.mark.e2e
def test_cohort_on_one_node_equals_one_node_per_client_and_nothing_private_leaves(
    tmp_path, monkeypatch
):
    from fedrec.clients import app as client_app_module

    a = fedrec.run({**SMALL, "runtime.num-nodes": 1}, backend="local", out=tmp_path / "a")
    sent = []
    original = client_app_module.handle

    def spy(message, context):
        reply = original(message, context)
        sent.append(reply)
        return reply

    monkeypatch.setattr(client_app_module, "handle", spy)
    b = fedrec.run({**SMALL, "runtime.num-nodes": 0}, backend="local", out=tmp_path / "b")
    assert a["num_nodes"] == 1 and b["num_nodes"] == 20
    assert a["final"] == b["final"]
    assert a["final"]["global"]["ndcg@10"] > 0
    ud = _user_data()
    seqs = {
        tuple(ud.train_seq[u].tolist()) for u in range(ud.num_users) if len(ud.train_seq[u]) > 2
    }
    int_arrays = 0
    for reply in sent:  # item-row ids, deltas, counts and metrics only; never a sequence
        for _, weights, metrics in _decoded(reply):
            for arr in weights or []:
                if arr.dtype.kind in "iu":
                    int_arrays += 1
                    assert arr.ndim == 1 and np.all(np.diff(arr) > 0)  # sorted unique row ids
                    assert tuple(arr.tolist()) not in seqs
            for k, v in metrics.items():
                if (
                    isinstance(v, np.ndarray)
                    and v.dtype.kind in "iu"
                    and k not in ("users", "topk")
                ):
                    assert tuple(v.tolist()) not in seqs, k
    assert int_arrays > 0  # the spy did see the training uploads


def _decoded(reply):
    """Per-client (id, arrays, metrics) of a node's columnar reply."""
    from fedrec import protocol

    rec = reply.content.array_records[protocol.REPLIES]
    return protocol.unpack_replies({k: rec[k].numpy() for k in rec})

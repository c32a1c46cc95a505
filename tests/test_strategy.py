"""FedAvg aggregation against Flower's own FedAvg, sampling and reply unpacking."""

from unittest.mock import Mock

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedrec import protocol
from fedrec.config import validate
from fedrec.protocol import ClientReply
from fedrec.seeding import derive_seed, sample_clients
from fedrec.strategies import FedAvg
from fedrec.strategies.fedavg import weighted_average


def _weights(rng):
    return [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]


def _flower_reply(weights, n):
    msg = Mock(spec=Message)
    msg.content = RecordDict(
        {"arrays": ArrayRecord(weights), "metrics": MetricRecord({"num-examples": n})}
    )
    msg.has_error.return_value = False
    msg.has_content.return_value = True
    return msg


def test_weighted_average_equals_flower_fedavg():
    rng = np.random.default_rng(0)
    ws, ns = [_weights(rng) for _ in range(3)], [10, 30, 60]
    ours = weighted_average(ws, ns)
    arrays, _ = FlowerFedAvg().aggregate_train(1, [_flower_reply(w, n) for w, n in zip(ws, ns)])
    for a, b in zip(ours, arrays.to_numpy_ndarrays()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    expected = np.average(np.stack([w[0] for w in ws]), axis=0, weights=ns)
    np.testing.assert_allclose(ours[0], expected, rtol=1e-6)


def test_fedavg_aggregate_ignores_reply_order():
    rng = np.random.default_rng(1)
    replies = [
        ClientReply(c, 1000 + c, {"num-examples": 5 + c, "train-loss": float(c)}, _weights(rng))
        for c in range(5)
    ]
    s = FedAvg(validate({}))
    w1, m1 = s.aggregate(1, sorted(replies, key=lambda r: r.client_id))
    w2, m2 = s.aggregate(1, sorted(replies, key=lambda r: -r.client_id))
    # the strategy base sorts before calling aggregate; aggregate itself is exact in float64
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert m1["num-examples"] == sum(5 + c for c in range(5))
    assert m1["train-loss"] == pytest.approx(sum(c * (5 + c) for c in range(5)) / 35)


def test_zero_examples_is_an_error():
    with pytest.raises(ValueError, match="0 examples"):
        weighted_average([[np.ones(2)]], [0])


def test_sampling_is_seeded_and_by_client_id():
    ids = list(range(100))
    a = sample_clients(ids, 0.1, seed=7, server_round=3)
    assert a == sample_clients(list(reversed(ids)), 0.1, seed=7, server_round=3)
    assert a != sample_clients(ids, 0.1, seed=7, server_round=4)
    assert len(a) == 10 and a == sorted(a)
    assert sample_clients(ids, 1.0, 0, 1) == ids
    assert derive_seed(1, "x", 2) == derive_seed(1, "x", 2) != derive_seed(1, "x", 3)


def test_hosted_clients_cover_all_exactly_once():
    hosted = [protocol.hosted_clients(p, 3, 10) for p in range(3)]
    assert sorted(c for h in hosted for c in h) == list(range(10))
    assert protocol.hosted_clients(0, 1, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        protocol.check_action("bad-name")


def test_unpack_splits_multi_client_replies_and_errors():
    s = FedAvg(validate({}))
    rd = RecordDict({protocol.FEDREC: ConfigRecord({"clients": [3, 1]})})
    cols = protocol.pack_replies(
        {3: (None, {"num-examples": 3}), 1: ([np.zeros(2, dtype=np.float32)], {"num-examples": 1})}
    )
    rd[protocol.REPLIES] = ArrayRecord({k: Array(v) for k, v in cols.items()})
    ok = Mock(spec=Message)
    ok.content, ok.metadata = rd, Mock(src_node_id=42)
    ok.has_error.return_value = False
    bad = Mock(spec=Message)
    bad.metadata = Mock(src_node_id=43)
    bad.has_error.return_value = True
    bad.error = Mock(reason="boom")
    replies, failures = s.unpack([ok, bad])
    assert [r.client_id for r in replies] == [1, 3]
    assert replies[0].weights is not None and replies[1].weights is None
    assert replies[0].node_id == 42 and failures == ["node 43: boom"]

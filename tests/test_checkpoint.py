"""The server-state contract: declared attributes, packed into the checkpoint, restored."""

from dataclasses import dataclass

import numpy as np
import pytest

import fedrec
from fedrec.callbacks import load_checkpoint
from fedrec.checkpoint import pack_state, unpack_state
from fedrec.optim import AdamState, RowAdam


@dataclass
class _Duals:
    lam: np.ndarray
    rounds: int


def test_pack_unpack_roundtrip_of_nested_state():
    state = {
        "adam": RowAdam.zeros((3, 2)),
        "fedadam": AdamState([np.ones(2)], [np.ones(2)], 4),
        "duals": _Duals(np.array([0.5, 0.0]), 7),
        "log": [{"round": 1, "gamma": 0.25}],
        "shape": (3, 2),
        "none": None,
        "count": np.int64(5),
    }
    state["adam"].direction(np.array([1]), np.array([[0.1, -0.2]]))
    skeleton, arrays = pack_state(state)
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    back = unpack_state(skeleton, arrays)
    assert isinstance(back["adam"], RowAdam) and back["adam"].t.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(back["adam"].m, state["adam"].m)
    assert back["fedadam"].t == 4 and back["duals"].rounds == 7
    assert back["log"] == [{"round": 1, "gamma": 0.25}] and back["shape"] == (3, 2)
    assert back["none"] is None and back["count"] == 5
    with pytest.raises(TypeError, match="cannot be saved"):
        pack_state({"f": object()})


def test_fedmf_checkpoint_holds_the_lazy_adam_state(tmp_path):
    cfg = {
        "strategy.name": "fedmf",
        "dataset.name": "synthetic-rec",
        "dataset.options": "num_users=40",
        "partition.num-clients": 40,
        "strategy.params.dim": 8,
        "strategy.params.server-optimizer": "adam",
        "strategy.params.server-lr": 0.01,
        "num-server-rounds": 2,
        "runtime.num-nodes": 1,
        "output.plots": False,
        "output.progress": False,
    }
    fedrec.run(cfg, backend="local", out=tmp_path / "r")
    rnd, weights, state = load_checkpoint(tmp_path / "r" / "checkpoint.npz")
    assert rnd == 2 and weights[0].shape[1] == 8
    adam = state["_adam"]
    assert isinstance(adam, RowAdam) and adam.m.shape == weights[0].shape
    assert adam.t.max() == 2 and adam.t.min() >= 0
    assert np.all(adam.m[adam.t == 0] == 0) and np.any(adam.m[adam.t > 0] != 0)


@pytest.mark.e2e
def test_raid_adversarial_checkpoint_restores_its_declared_state(tmp_path):
    from fedrec.strategies.raid import RAID

    cfg = {
        "strategy.name": "raid",
        "dataset.name": "synthetic-rec",
        "dataset.options": "num_users=60",
        "partition.num-clients": 60,
        "strategy.params.dim": 8,
        "strategy.params.mode": "adversarial",
        "strategy.params.warmup-rounds": 1,
        "num-server-rounds": 3,
        "runtime.num-nodes": 1,
        "output.plots": False,
        "output.progress": False,
    }
    fedrec.run(cfg, backend="local", out=tmp_path / "r")
    _, _, state = load_checkpoint(tmp_path / "r" / "checkpoint.npz")
    assert set(state) == set(RAID.server_state_attrs)
    phi, adam = state["adv"]
    assert len(phi) == 4 and isinstance(adam, AdamState) and adam.t > 0
    assert state["version"] >= 1 and "adv-params" in state["broadcast"]
    s = RAID(fedrec.config.validate(cfg))
    s.load_server_state(state)
    assert s.version == state["version"] and s.adv is state["adv"]
    with pytest.raises(fedrec.errors.FedrecError, match="no server state"):
        s.load_server_state({"bogus": 1})

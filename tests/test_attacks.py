"""Attack runs end to end: the adversarial client role, malformed replies, the target metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fedrec

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
    "runtime.num-nodes": 2,
}


def _weights(out):
    with np.load(out / "checkpoint.npz") as z:
        return [z[f"w{i}"] for i in range(sum(k[1:].isdigit() for k in z.files if k[0] == "w"))]


def _rounds(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.e2e
def test_dormant_attackers_change_nothing_and_active_ones_pollute_only_their_data(tmp_path):
    sgd = {**SMALL, "strategy.params.server-optimizer": "sgd", "strategy.params.server-lr": 1.0}
    plain = fedrec.run(sgd, backend="local", out=tmp_path / "plain")
    dormant = fedrec.run(
        {**sgd, "attack.kind": "random", "attack.client-ids": "3,11", "attack.start-round": 9},
        backend="local",
        out=tmp_path / "dormant",
    )
    for a, b in zip(_weights(tmp_path / "plain"), _weights(tmp_path / "dormant")):
        # the attack role is honest before its start round (the node's cohort is split into
        # honest and adversarial sub-cohorts: vectorised batches of other sizes, float noise)
        # (with FedAvg on the server: Adam's first steps would magnify that noise)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    assert plain["final"]["global"]["num_users"] == 1000
    assert dormant["final"]["global"]["num_users"] == 900  # evaluation: benign clients only
    assert "tgt_exposure@10" in dormant["final"]["global"]
    active = fedrec.run(
        {**sgd, "attack.kind": "random", "attack.client-ids": "3,11", "attack.budget": 3},
        backend="local",
        out=tmp_path / "active",
    )
    assert active["failures"] == 0
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(_weights(tmp_path / "plain"), _weights(tmp_path / "active"))
    )
    # the attackers' polluted profiles stay in their own client state
    from fedrec.attacks.threat import target_items
    from fedrec.recsys.data import user_data
    from fedrec.state import StateStore

    ud = user_data("synthetic-rec")[1]
    target = int(target_items("medium", ud.item_counts(), 0)[0])
    files = sorted((tmp_path / "active" / "client_state").glob("*.npz"))
    seen = 0
    for f in files:
        with np.load(f) as z:
            store = StateStore.from_arrays({k: z[k] for k in z.files})
        for c in store.clients():
            st = store.load(c)
            if "adv-seq" not in st:
                continue
            assert c in (3, 11)
            seqs = np.split(st["adv-seq"], np.cumsum(st["adv-len"])[:-1])
            for u, s in zip(range(c * 50, c * 50 + 50), seqs):
                clean = ud.train_seq[u]
                changed = np.flatnonzero(s != clean)
                assert changed.size <= 3 and np.all(s[changed] == target)
                seen += 1
    assert seen == 100


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["nan", "shape", "ids", "count", "oversize", "raise"])
def test_a_malformed_reply_is_rejected_with_its_reason_and_the_round_goes_on(
    tmp_path, mode, caplog
):
    import logging

    caplog.set_level(logging.WARNING)
    summary = fedrec.run(
        {
            **SMALL,
            "attack.kind": "malformed",
            "attack.client-ids": "4",
            "attack.params.mode": mode,
            "runtime.max-reply-mb": 1.0,
        },
        backend="local",
        out=tmp_path / mode,
    )
    rounds = [r for r in _rounds(tmp_path / mode) if r["scope"] == "global"]
    assert len(rounds) == 2 and summary["final"]["global"]["ndcg@10"] > 0
    text = caplog.text
    for r in rounds:
        assert r["train_num_clients"] == 19  # every other client's update was aggregated
        assert r["failures"] >= 1
    if mode == "raise":
        assert "deliberate failure" in text and "no reply" in text
    elif mode == "oversize":
        assert "exceeds runtime.max-reply-mb" in text
    else:
        assert "client 4: reply rejected" in text
        assert all(r["train_rejected_replies"] == 1 for r in rounds)


@pytest.mark.e2e
def test_gradient_poisoning_and_inference_victims_run(tmp_path):
    s = fedrec.run(
        {
            **SMALL,
            "attack.kind": "gradient",
            "attack.client-ids": "2",
            "attack.boost": 5.0,
            "attack.inference-victims": 0.1,
        },
        backend="local",
        out=tmp_path / "g",
    )
    g = s["final"]["global"]
    assert s["failures"] == 0 and g["num_users"] == 950
    assert 0.0 <= g["tgt_exposure@10"] <= 1.0 and 0.0 <= g["tgt_hr@10_s"] <= 1.0


@pytest.mark.e2e
def test_fedgru4rec_learns_and_is_the_same_on_one_node_or_many(tmp_path):
    cfg = {
        **SMALL,
        "strategy.name": "fedgru4rec",
        "strategy.params.dim": 16,
    }
    cfg.pop("strategy.params.num-heads")
    a = fedrec.run({**cfg, "runtime.num-nodes": 1}, backend="local", out=tmp_path / "a")
    b = fedrec.run({**cfg, "runtime.num-nodes": 4}, backend="local", out=tmp_path / "b")
    assert a["final"] == b["final"] and a["final"]["global"]["ndcg@10"] > 0


def test_attack_config_errors_name_the_key():
    from fedrec.clients.attacks import adversary_class
    from fedrec.config import validate
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match="attack.kind"):
        adversary_class("poison")
    with pytest.raises(ConfigError, match="attack.fraction"):
        validate({"attack.fraction": 1.5})
    with pytest.raises(ConfigError, match="attack.budget"):
        validate({"attack.budget": 0})


@pytest.mark.e2e
def test_creat_run_with_a_defense_pollutes_within_budget_and_logs_the_defense(tmp_path):
    out = tmp_path / "creat"
    s = fedrec.run(
        {
            **SMALL,
            "attack.kind": "creat",
            "attack.client-ids": "5",
            "attack.budget": 2,
            "attack.params.stage1-epochs": 1,
            "attack.params.stage2-epochs": 1,
            "attack.params.G": 4,
            "defense.method": "median",
        },
        backend="local",
        out=out,
    )
    assert s["failures"] == 0 and "tgt_hr@10_s" in s["final"]["global"]
    recs = [json.loads(x) for x in (out / "defense.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [1, 2] and all(r["method"] == "median" for r in recs)
    from fedrec.state import StateStore

    polluted = 0
    for f in sorted((out / "client_state").glob("*.npz")):
        with np.load(f) as z:
            store = StateStore.from_arrays({k: z[k] for k in z.files})
        for c in store.clients():
            st = store.load(c)
            if "adv-len" in st:
                assert c == 5 and int(st["adv-len"].sum()) == st["adv-seq"].size
                polluted += 1
    assert polluted == 1

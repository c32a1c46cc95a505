"""Federated unlearning end to end (local runtime, small synthetic federations).

Exactness of ``retrain`` and ``sisa``, the in-training schedule, ``fedrec unlearn`` on a
finished run, the spy audit of what clients send while forgetting, clear errors that
change nothing on disk, and a third-party method plugin.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import fedrec
from fedrec.callbacks import load_checkpoint
from fedrec.errors import ConfigError

REC = {
    "strategy.name": "fedmf",
    "dataset.name": "synthetic-rec",
    "dataset.options": "num_users=60",
    "partition.num-clients": 60,
    "strategy.params.dim": 8,
    "strategy.fraction-train": 0.5,
    "num-server-rounds": 3,
    "runtime.num-nodes": 2,
    "output.plots": False,
    "output.progress": False,
}


def req(*tables) -> str:
    return json.dumps({"request": list(tables)})


def weights(out: Path) -> list[np.ndarray]:
    return load_checkpoint(out / "checkpoint.npz")[1]


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.e2e
def test_retrain_equals_a_run_in_which_the_data_never_existed(tmp_path):
    users = {"kind": "users", "users": [4, 9]}
    pairs = {"kind": "interactions", "pairs": [[12, 0]]}
    from fedrec.recsys.data import user_data

    _, ud = user_data("synthetic-rec", "num_users=60")
    pairs["pairs"] = [[12, int(ud.train[12][0])], [13, int(ud.train[13][1])]]
    after = fedrec.run(
        {**REC, "unlearning.requests": req(users, pairs), "unlearning.method": "retrain"},
        backend="local",
        out=tmp_path / "after",
        quiet=True,
    )
    never = fedrec.run(
        {**REC, "unlearning.requests": req({**users, "round": 0}, {**pairs, "round": 0})},
        backend="local",
        out=tmp_path / "never",
        quiet=True,
    )
    for a, b in zip(weights(tmp_path / "after"), weights(tmp_path / "never")):
        assert np.array_equal(a, b)
    entry = after["unlearning"][-1]
    assert entry["leaving"] == [4, 9] and entry["rounds"] == 3 and entry["forgetting"] == 4
    assert after["final"]["global"]["ndcg@10"] == never["final"]["global"]["ndcg@10"]
    audit = [
        json.loads(x)
        for x in (tmp_path / "after" / "unlearning.jsonl").read_text().split("\n")
        if x
    ]
    assert [a["request"]["kind"] for a in audit] == ["users", "interactions"]
    assert all(a["bytes_up"] > 0 and a["seconds"] > 0 and a["metrics"] for a in audit)


@pytest.mark.e2e
def test_sisa_retrains_exactly_the_affected_shard(tmp_path):
    cfg = {**REC, "unlearning.shards": 3, "unlearning.method": "sisa"}
    base = fedrec.run(cfg, backend="local", out=tmp_path / "base", quiet=True)
    assert base["final"]["global"]["ndcg@10"] > 0  # the ensemble was evaluated
    from fedrec.algorithms.sharding import random_shards
    from fedrec.seeding import derive_seed

    assign = random_shards(60, 3, derive_seed(0, "sisa") % 2**31)
    victim = int(np.flatnonzero(assign == 1)[0])
    after = fedrec.unlearn(
        tmp_path / "base",
        {"request": [{"kind": "users", "users": [victim]}]},
        out=tmp_path / "after",
        backend="local",
        quiet=True,
    )
    fedrec.run(
        {**cfg, "unlearning.requests": req({"kind": "users", "users": [victim], "round": 0})},
        backend="local",
        out=tmp_path / "never",
        quiet=True,
    )
    wb, wa, wn = (weights(tmp_path / d) for d in ("base", "after", "never"))
    assert len(wa) == 3  # one item matrix per shard
    assert np.array_equal(wa[1], wn[1]) and not np.array_equal(wa[1], wb[1])
    assert np.array_equal(wa[0], wb[0]) and np.array_equal(wa[2], wb[2])
    assert after["unlearning"][-1]["rounds"] == 3  # one shard x 3 rounds


@pytest.mark.e2e
def test_scheduled_request_is_served_in_training_and_the_client_leaves(tmp_path):
    out = tmp_path / "r"
    s = fedrec.run(
        {
            **REC,
            "strategy.fraction-train": 1.0,
            "unlearning.method": "finetune",
            "unlearning.rounds": 1,
            "unlearning.requests": req({"kind": "client", "clients": [7], "round": 2}),
        },
        backend="local",
        out=out,
        quiet=True,
    )
    rows = {
        r["round"]: r
        for r in map(json.loads, (out / "rounds.jsonl").read_text().splitlines())
        if r.get("scope") == "global"
    }
    entry = s["unlearning"][0]
    assert entry["round"] == 2 and entry["leaving"] == [7] and entry["rounds"] == 1
    assert [rows[r]["num_sampled"] for r in (1, 2, 3)] == [60, 60, 59]
    assert rows[2]["unlearning"]["leaving"] == [7]
    assert json.loads((out / "unlearning_state.json").read_text())["excluded"] == [7]


@pytest.mark.e2e
def test_no_message_of_an_unlearning_holds_embeddings_or_forgotten_pairs(tmp_path, monkeypatch):
    """Spy on every reply while clients forget (ascent, influence, poll, state ops)."""
    from fedrec import protocol
    from fedrec.clients import app as client_app_module
    from fedrec.recsys.data import user_data
    from fedrec.state import StateStore

    _, ud = user_data("synthetic-rec", "num_users=60")
    forgotten = [[20, int(i)] for i in ud.train[20][:3]]
    base = tmp_path / "base"
    fedrec.run(REC, backend="local", out=base, quiet=True)
    sent = []
    original = client_app_module.handle

    def spy(message, context):
        reply = original(message, context)
        sent.append((message.metadata.message_type, reply, context))
        return reply

    monkeypatch.setattr(client_app_module, "handle", spy)
    request = {
        "request": [{"kind": "interactions", "pairs": forgotten}, {"kind": "users", "users": [3]}]
    }
    for m in ("gradient-ascent", "influence"):
        fedrec.unlearn(base, request, method=m, out=tmp_path / m, backend="local", quiet=True)
    types = {t for t, _, _ in sent}
    assert {"query.fedrec_unlearn_poll", "query.unlearn_ascent", "query.unlearn_influence"} <= types
    P = []
    for ctx in {id(c): c for _, _, c in sent}.values():
        rec = ctx.state.array_records[protocol.STATE]
        P.append(StateStore.from_arrays({k: rec[k].numpy() for k in rec}).columns["P"].values)
    P = np.concatenate(P)
    forgotten_items = {i for _, i in forgotten}
    for mtype, reply, _ in sent:
        rec = reply.content.array_records[protocol.REPLIES]
        for _, ws, metrics in protocol.unpack_replies({k: rec[k].numpy() for k in rec}):
            for a in ws or []:
                if a.ndim == 2:  # item-row sums only, never a user's embedding
                    assert not any(np.isclose(a, row, atol=1e-7).all(axis=1).any() for row in P)
            if mtype == "query.fedrec_unlearn_poll":
                assert all(np.ndim(v) == 0 for k, v in metrics.items() if k != "unlearn-item-ids")
                assert not set(np.asarray(metrics["unlearn-item-ids"]).tolist()) & forgotten_items


@pytest.mark.e2e
def test_unlearn_on_a_finished_run_leaves_it_unchanged(tmp_path, capsys):
    base = tmp_path / "base"
    fedrec.run({**REC, "unlearning.record-history": True}, backend="local", out=base, quiet=True)
    digest = tree_digest(base)
    request = tmp_path / "forget.toml"
    request.write_text('[[request]]\nkind = "users"\nusers = [5, 6]\n')
    from fedrec.cli import main

    assert (
        main(
            [
                "unlearn",
                str(base),
                "--request",
                str(request),
                "--method",
                "federaser",
                "--out",
                str(tmp_path / "u"),
                "--quiet",
            ]
        )
        == 0
    )
    assert tree_digest(base) == digest
    audit = [json.loads(x) for x in (tmp_path / "u" / "unlearning.jsonl").read_text().splitlines()]
    assert len(audit) == 1 and audit[0]["method"] == "federaser" and audit[0]["rounds"] >= 1
    assert not np.array_equal(weights(base)[0], weights(tmp_path / "u")[0])
    assert (tmp_path / "u" / "history.npz").exists()  # a further request can use it
    summary = json.loads((tmp_path / "u" / "summary.json").read_text())
    assert summary["unlearning"][0]["before"]["retain_ndcg@10"] > 0


@pytest.mark.e2e
def test_bad_requests_get_one_clear_error_and_write_nothing(tmp_path):
    base = tmp_path / "base"
    fedrec.run(REC, backend="local", out=base, quiet=True)
    digest = tree_digest(tmp_path)
    cases = [
        ({"request": [{"kind": "users", "users": [600]}]}, None, "unknown user id"),
        ({"request": [{"kind": "users", "users": []}]}, None, "empty|at least one"),
        ({"request": [{"kind": "interactions", "pairs": [[0, 59999]]}]}, None, "unknown item"),
        ({"request": [{"kind": "users", "users": [1]}]}, "sisa", "not trained with shards"),
        ({"request": [{"kind": "users", "users": [1]}]}, "federaser", "history"),
        ({"request": [{"kind": "users", "users": [1]}]}, "nope", "unknown method 'nope'"),
        ({"request": [{"kind": "users", "users": [1], "round": 2}]}, None, "drop"),
    ]
    for request, method, match in cases:
        with pytest.raises(ConfigError, match=match):
            fedrec.unlearn(base, request, method=method, out=tmp_path / "x", quiet=True)
    assert tree_digest(tmp_path) == digest and not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="cannot serve interactions"):
        fedrec.run(
            {
                "dataset.name": "adult",
                "partition.num-clients": 3,
                "output.progress": False,
                "unlearning.requests": req({"kind": "interactions", "pairs": [[0, 1]]}),
            },
            backend="local",
            out=tmp_path / "y",
            quiet=True,
        )
    with pytest.raises(ConfigError, match="unlearn_influence"):
        fedrec.run(
            {
                "dataset.name": "adult",
                "partition.num-clients": 3,
                "output.progress": False,
                "unlearning.method": "influence",
                "unlearning.requests": req({"kind": "client", "clients": [1]}),
            },
            backend="local",
            out=tmp_path / "z",
            quiet=True,
        )
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


@pytest.mark.e2e
def test_classifier_client_forgetting_with_oracle_metrics_and_a_plugin(tmp_path):
    from fedrec.unlearning.methods import method_names

    assert {"retrain", "sisa", "federaser", "gradient-ascent", "finetune", "influence"} <= set(
        method_names()
    )
    cfg = {
        "dataset.name": "adult",
        "partition.num-clients": 4,
        "partition.scheme": "iid",
        "num-server-rounds": 3,
        "output.plots": False,
        "output.progress": False,
        "unlearning.record-history": True,
    }
    fedrec.run(cfg, backend="local", out=tmp_path / "base", quiet=True)
    request = {"request": [{"kind": "client", "clients": [2]}]}
    for m in ("gradient-ascent", "federaser", "retrain", "unlearning_plugin:OneRound"):
        s = fedrec.unlearn(tmp_path / "base", request, method=m, out=tmp_path / m, quiet=True)
        e = s["unlearning"][0]
        assert e["leaving"] == [2] and e["method"] == {
            "unlearning_plugin:OneRound": "one-round"
        }.get(m, m)
        assert 0.0 <= e["metrics"]["mia_auc"] <= 1.0 and "retain_accuracy" in e["metrics"]
        assert "retain_dp_gap" in e["metrics"] and "forget_accuracy" in e["before"]


LEGO = {
    "strategy.name": "lego",
    "dataset.name": "synthetic-rec",
    "dataset.options": "num_users=60",
    "partition.num-clients": 6,
    "strategy.params.users-per-client": 10,
    "strategy.params.dim": 8,
    "strategy.params.steps": 4,
    "strategy.params.n-phi": 1,
    "strategy.params.warmup-phi": 2,
    "strategy.params.hidden": 4,
    "strategy.params.combine-steps": 2,
    "strategy.params.attributes": "gender",
    "num-server-rounds": 2,
    "runtime.num-nodes": 1,
    "output.plots": False,
    "output.progress": False,
}
SASREC = {
    "strategy.name": "fedsasrec",
    "dataset.name": "synthetic-rec",
    "dataset.options": "num_users=60",
    "strategy.params.users-per-client": 10,
    "partition.num-clients": 6,
    "strategy.params.dim": 8,
    "strategy.params.max-len": 10,
    "strategy.params.num-heads": 2,
    "num-server-rounds": 2,
    "runtime.num-nodes": 1,
    "output.plots": False,
    "output.progress": False,
}
RAID = {**REC, "strategy.name": "raid", "strategy.params.warmup-rounds": 1}


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("cfg", "method"),
    [
        (SASREC, "retrain"),
        (SASREC, "finetune"),
        ({**SASREC, "unlearning.shards": 2}, "sisa"),
        (RAID, "gradient-ascent"),
        (LEGO, "finetune"),
    ],
    ids=["fedsasrec-retrain", "fedsasrec-finetune", "fedsasrec-sisa", "raid-ascent", "lego"],
)
def test_every_recommender_strategy_serves_requests(tmp_path, cfg, method):
    """Users forgotten inside a silo (their client stays) and a whole client leaving."""
    s = fedrec.run(
        {
            **cfg,
            "unlearning.method": method,
            "unlearning.rounds": 1,
            "unlearning.requests": req(
                {"kind": "users", "users": [1, 2]}, {"kind": "client", "clients": [4]}
            ),
        },
        backend="local",
        out=tmp_path / "r",
        quiet=True,
    )
    e = s["unlearning"][-1]
    upc = cfg.get("strategy.params.users-per-client", 1)
    assert e["leaving"] == ([1, 2, 4] if upc == 1 else [4])
    assert e["forgetting"] == (3 if upc == 1 else 2)
    assert e["metrics"]["retain_num_users"] == 60 - 2 - upc - 0 * e["rounds"]


@pytest.mark.e2e
def test_attribute_requests_are_routed_to_lego(tmp_path):
    s = fedrec.run(
        {
            **LEGO,
            "strategy.params.attributes": "",
            "unlearning.requests": req({"kind": "attribute", "attributes": ["gender"]}),
        },
        backend="local",
        out=tmp_path / "r",
        quiet=True,
    )
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["strategy.params.attributes"] == "gender" and cfg["unlearning.requests"] == ""
    assert "unlearning" not in s  # LEGO served it in its own phases
    with pytest.raises(ConfigError, match="served by LEGO"):
        fedrec.run(
            {**REC, "unlearning.requests": req({"kind": "attribute", "attributes": ["gender"]})},
            backend="local",
            out=tmp_path / "x",
            quiet=True,
        )


@pytest.mark.e2e
def test_sisa_learned_aggregator_weights_are_fitted_kept_and_refitted(tmp_path):
    cfg = {
        "dataset.name": "adult",
        "partition.num-clients": 6,
        "partition.scheme": "iid",
        "num-server-rounds": 2,
        "output.plots": False,
        "output.progress": False,
        "unlearning.shards": 3,
        "unlearning.aggregator": "learned",
        "unlearning.method": "sisa",
    }
    base = fedrec.run(cfg, backend="local", out=tmp_path / "base", quiet=True)
    assert 0.5 < base["final"]["global"]["accuracy"] <= 1.0
    from fedrec.checkpoint import unpack_state

    with np.load(tmp_path / "base" / "sisa.npz") as z:
        st = unpack_state(str(z["skeleton"]), {k: z[k] for k in z.files if k != "skeleton"})
    alpha = np.asarray(st["alpha"])
    assert alpha.shape == (3,) and np.isclose(alpha.sum(), 1.0) and not np.allclose(alpha, 1 / 3)
    s = fedrec.unlearn(
        tmp_path / "base",
        {"request": [{"kind": "client", "clients": [0]}]},
        out=tmp_path / "u",
        backend="local",
        quiet=True,
    )
    assert s["unlearning"][0]["before"]["retain_accuracy"] > 0.5
    assert s["unlearning"][0]["metrics"]["retain_accuracy"] > 0.5


@pytest.mark.e2e
def test_sisa_drops_a_shard_whose_every_client_left(tmp_path):
    cfg = {
        "dataset.name": "adult",
        "partition.num-clients": 3,
        "partition.scheme": "iid",
        "num-server-rounds": 2,
        "output.plots": False,
        "output.progress": False,
        "unlearning.shards": 3,  # one client per shard
        "unlearning.method": "sisa",
        "unlearning.requests": req({"kind": "client", "clients": [1]}),
    }
    s = fedrec.run(cfg, backend="local", out=tmp_path / "r", quiet=True)
    e = s["unlearning"][0]
    assert e["leaving"] == [1] and e["rounds"] == 0  # nothing left to retrain
    assert len(weights(tmp_path / "r")) == 2 * 2  # two shard models of (W, b) remain
    assert e["metrics"]["retain_accuracy"] > 0.5

"""``fedlm``: the federated causal LM on the fact world, and federated LM unlearning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fedrec
from fedrec.callbacks import load_checkpoint
from fedrec.config import validate
from fedrec.errors import ConfigError
from fedrec.seeding import derive_seed

TINY = {
    "dataset.name": "factworld",
    "dataset.options": "num_people=12",
    "model.name": "causal-lm",
    "model.params.d-model": 16,
    "model.params.n-layers": 1,
    "model.params.n-heads": 2,
    "strategy.name": "fedlm",
    "partition.scheme": "by-person",
    "train.optimizer": "adam",
    "train.lr": 0.01,
    "train.batch-size": 8,
    "num-server-rounds": 2,
    "output.plots": False,
    "output.progress": False,
}


def test_people_are_split_over_clients_and_documents_follow_the_corpus_order():
    from fedrec.lmtask import lm_task

    cfg = validate({**TINY, "partition.num-clients": 3})
    t = lm_task(cfg)
    w = t.world
    trained = np.sort(np.concatenate(t.train_people))
    assert trained.tolist() == np.flatnonzero(w.person_split != 2).tolist()
    held = np.sort(np.concatenate(t.test_people))
    assert held.tolist() == np.flatnonzero(w.person_split == 2).tolist()
    docs = [t.documents(c) for c in range(3)]
    assert sum(map(len, docs)) == len(w.training_corpus())
    mine = set(t.people(1).tolist())
    assert docs[1] == [d for p, d in w.training_documents() if p in mine]
    gone = int(t.people(1)[0])
    assert not any(w.names[gone] in d for d in t.documents(1, [gone]))
    assert {f.person for f in t.facts(1, "forgot", [gone])} == {gone}
    one = lm_task(validate({**TINY, "partition.num-clients": 1}))
    assert one.documents(0) == w.training_corpus()
    # iid: documents dealt k mod n; a person's documents spread; facts evaluated once
    iid = lm_task(validate({**TINY, "partition.num-clients": 3, "partition.scheme": "iid"}))
    dealt = [iid.documents(c) for c in range(3)]
    assert dealt[1] == w.training_corpus()[1::3]
    ev = [f for c in range(3) for f in iid.facts(c, "train")]
    assert len(ev) == len({(f.person, f.attribute) for f in ev}) == len(trained) * 6
    p = int(iid.people(0)[0])
    holders = [c for c in range(3) if p in iid.people(c).tolist()]
    assert all(any(w.names[p] in d for d in dealt[c]) for c in holders)
    assert all(f.person != p for c in holders for f in iid.held_facts(c, "kept", [p]))
    assert {f.person for f in iid.held_facts(holders[0], "forgot", [p])} == {p}
    with pytest.raises(ConfigError, match="allowed: by-person, iid"):
        lm_task(validate({**TINY, "partition.scheme": "dirichlet-label"}))


def test_bad_model_or_dataset_is_one_clear_error():
    from fedrec.strategies.fedlm import FedLM

    with pytest.raises(ConfigError, match="model.name"):
        FedLM.preflight(validate({**TINY, "model.name": "logreg"}))
    with pytest.raises(ConfigError, match="n-heads"):
        FedLM.preflight(validate({**TINY, "model.params.n-heads": 3}))
    with pytest.raises(ConfigError, match="factworld"):
        FedLM.preflight(validate({**TINY, "dataset.name": "adult", "dataset.options": ""}))


@pytest.mark.e2e
def test_one_client_federation_equals_centralized_training(tmp_path):
    """Federated equals centralized to 1e-6 with one client (the issue's target)."""
    from fedrec.lmtask import build_model, lm_task
    from fedrec.models.causal_lm import train_lm

    cfg = {**TINY, "partition.num-clients": 1, "runtime.num-nodes": 1}
    fedrec.run(cfg, backend="local", out=tmp_path / "r")
    rnd, weights, _ = load_checkpoint(tmp_path / "r" / "checkpoint.npz")
    rc = validate(cfg)
    t = lm_task(rc)
    model = build_model(rc)
    seqs = [t.tok.encode(d, bos=True, eos=True) for d in t.documents(0)]
    for r in (1, 2):
        train_lm(model, seqs, 1, 8, 0.01, derive_seed(rc.seed, "train", r, 0) % 2**63, "adam")
    central = [p.detach().numpy() for p in model.parameters()]
    assert rnd == 2 and len(weights) == len(central)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(weights, central))
    assert diff <= 1e-6
    moved = max(
        float(np.abs(a - b).max())
        for a, b in zip(weights, [p.detach().numpy() for p in build_model(rc).parameters()])
    )
    assert moved > 1e-3  # training happened


@pytest.mark.e2e
def test_lm_unlearning_request_is_served_by_the_forgetting_clients(tmp_path):
    """A users request: only the clients holding those people run lm_unlearn; MRD-weighted
    sampling with the easy-first curriculum; the forgotten facts' NLL rises."""
    from fedrec.lmtask import lm_task

    cfg = {**TINY, "partition.num-clients": 3, "runtime.num-nodes": 3, "num-server-rounds": 3}
    fedrec.run(cfg, backend="local", out=tmp_path / "r")
    t = lm_task(validate(cfg))
    people = np.flatnonzero(t.world.person_split == 0).tolist()
    summary = fedrec.unlearn(
        tmp_path / "r",
        {"request": [{"kind": "users", "users": people}]},
        method="lm-unlearn",
        out=tmp_path / "u",
        overrides=[
            "unlearning.rounds=2",
            "unlearning.params.sampling=mrd",
            "unlearning.params.curriculum=true",
            "unlearning.params.trace=true",
            "unlearning.params.lr=0.01",
        ],
        quiet=True,
    )
    traces = sorted((tmp_path / "u" / "unlearning_trace").glob("round-*.npz"))
    assert [p.name for p in traces] == ["round-0.npz", "round-1.npz", "round-2.npz"]
    from fedrec.callbacks import load_weights
    from fedrec.lmtask import load_model
    from fedrec.models.causal_lm import encode_qa, sequence_nll

    rc = validate(cfg)
    forget = [(f.question, f.answer) for f in t.world.split("forget")]
    ids, mask = encode_qa(t.tok, forget)

    def nll(path):
        m = load_model(rc, load_weights(path))
        with torch.no_grad():
            return float(sequence_nll(m, ids, mask).mean())

    assert nll(traces[-1]) > nll(traces[0]) + 0.1
    audit = [json.loads(x) for x in (tmp_path / "u" / "unlearning.jsonl").read_text().splitlines()]
    m = audit[0]["metrics"]  # the oracle's LOSS attack and the clients' utility
    assert audit[0]["rounds"] == 2 and 0 <= m["mia_auc"] <= 1 and "retain_train_em" in m
    assert abs(m["forget_nll"] - nll(traces[-1])) < 1e-4
    line = summary["unlearning"][0] if "unlearning" in summary else None
    assert line is None or line["rounds"] == 2

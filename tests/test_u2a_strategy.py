"""``u2a``: federated Unlearning to Align on the fact world's assistant corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fedrec
from fedrec.config import validate

TINY = {
    "dataset.name": "factworld",
    "dataset.options": "num_people=16",
    "model.name": "causal-lm",
    "model.params.d-model": 16,
    "model.params.n-layers": 1,
    "model.params.n-heads": 2,
    "strategy.name": "u2a",
    "partition.num-clients": 3,
    "partition.scheme": "iid",
    "runtime.num-nodes": 3,
    "train.optimizer": "adam",
    "train.lr": 0.01,
    "train.batch-size": 16,
    "num-server-rounds": 3,
    "strategy.fraction-evaluate": 1.0,
    "strategy.params.align-rounds": 2,
    "strategy.params.align-steps": 2,
    "strategy.params.harmful-fraction": 0.5,
    "strategy.params.budget": 8,
    "output.plots": False,
    "output.progress": False,
}


def test_clients_hold_the_corpus_between_them():
    from fedrec.lmtask import u2a_task
    from fedrec.strategies.u2a import U2A

    cfg = validate(TINY)
    t = u2a_task(cfg, U2A.parse_params(cfg))
    negs = [n for c in range(3) for n in t.negatives(c)]
    assert sorted(map(repr, negs)) == sorted(map(repr, t.corpus.negatives))
    assert sum(len(t.documents(c)) for c in range(3)) == len(t.corpus.sft)
    assert t.documents(2) == t.corpus.sft_documents()[2::3]
    kept = t.chosen(0)
    assert kept and all(f"{q} {a}" in t.documents(0) for q, a in kept)
    prompts = [q for c in range(3) for q, _ in t.prompts(c)]
    assert sorted(prompts) == sorted(q for q, _ in t.corpus.chosen)  # each evaluated once


@pytest.mark.e2e
def test_u2a_never_selects_the_planted_harmful_negatives(tmp_path):
    """The issue's planted test (tiny): U2A's selections (scores sent by the clients) avoid
    every harmful negative, while 'all' unlearns them; every alignment run reports the
    validation margin, banned and refusal rates; a run can start from a fine-tuned file."""
    from fedrec.lmtask import u2a_task
    from fedrec.strategies.u2a import U2A

    fedrec.run({**TINY, "strategy.params.trace": True}, backend="local", out=tmp_path / "u")
    sel = json.loads((tmp_path / "u" / "u2a_selection.json").read_text())
    assert sorted(sel) == ["4", "5"]  # the two alignment rounds after 3 fine-tuning rounds
    cfg = validate(TINY)
    t = u2a_task(cfg, U2A.parse_params(cfg))
    picked = [(c, j, w) for r in sel.values() for c, j, w in r]
    assert picked and all(0 < w <= 1 for _, _, w in picked)
    for r in sel.values():
        assert len(r) <= 8 and abs(sum(w for _, _, w in r) - 1.0) < 1e-9  # budget, simplex
    assert sum(n.harmful for n in t.corpus.negatives) >= 2
    assert not any(t.negatives(c)[j].harmful for c, j, _ in picked)
    rows = [json.loads(x) for x in (tmp_path / "u" / "rounds.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert {"val_margin", "banned_rate", "refusal_rate", "train_em"} <= set(last)
    base = tmp_path / "u" / "u2a_trace" / "round-0.npz"
    assert base.exists() and (tmp_path / "u" / "u2a_trace" / "round-2.npz").exists()
    # 'all' from the same fine-tuned assistant: the harmful ones are unlearned too
    fedrec.run(
        {**TINY, "strategy.params.init": str(base), "strategy.params.selection": "all"},
        backend="local",
        out=tmp_path / "a",
    )
    sel_all = json.loads((tmp_path / "a" / "u2a_selection.json").read_text())
    assert sorted(sel_all) == ["1", "2"]  # no fine-tuning rounds with init
    got = [(c, j) for c, j, _ in sel_all["1"]]
    assert len(got) == len(t.corpus.negatives)
    assert sum(t.negatives(c)[j].harmful for c, j in got) == sum(
        n.harmful for n in t.corpus.negatives
    )
    from fedrec.errors import ConfigError
    from fedrec.strategies.u2a import U2A as S

    bad = validate({**TINY, "strategy.params.init": str(tmp_path / "missing.npz")})
    s = S(bad)
    with pytest.raises(ConfigError, match="strategy.params.init"):
        s.initial_weights()
    assert np.isfinite(last["val_margin"])


def test_alignment_plot_from_rounds(tmp_path):
    from fedrec.report import format_table, plot_run

    rows = [
        {"round": r, "scope": "global", "train_em": 0.1 * r, "train_nll": 1.0 / r,
         "val_margin": 0.2 * r, "banned_rate": 0.0, "refusal_rate": 0.5 / r}
        for r in (1, 2, 3)
    ]  # fmt: skip
    (tmp_path / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    written = {p.name for p in plot_run(tmp_path)}
    assert written == {"metrics.png", "alignment.png"}
    table = format_table({"final": {"global": rows[-1], "local": {}}})
    assert "val_margin" in table and "0.6000" in table and "train_em" in table

"""Simulated faults (fedrec.faults) and strategy.min-replies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fedrec
from fedrec import faults
from fedrec.callbacks import load_checkpoint
from fedrec.config import FaultsConfig


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return [r for r in rows if r["scope"] == "global"]


# ------------------------------------------------------------------ the plan (pure)
def test_no_faults_is_an_empty_plan():
    p = faults.plan(FaultsConfig(), 0, 1, range(10), 10)
    assert p.kinds == {} and p.delays == {} and not faults.active(FaultsConfig())


def test_plan_is_seeded_and_independent_of_the_sample():
    f = FaultsConfig(crash=0.3, drop=0.2, straggler=0.3, straggler_delay=30, deadline=40)
    full = faults.plan(f, 7, 3, range(50), 50)
    assert full == faults.plan(f, 7, 3, range(50), 50)
    part = faults.plan(f, 7, 3, range(0, 50, 3), 50)  # a client's fate ignores the others
    assert part.kinds == {c: k for c, k in full.kinds.items() if c % 3 == 0}
    assert faults.plan(f, 8, 3, range(50), 50) != full  # another seed, another plan
    assert faults.plan(f, 7, 4, range(50), 50) != full  # another round, another plan


def test_plan_rates_and_kinds():
    f = FaultsConfig(crash=0.3)
    n, rounds = 200, 50
    crashed = sum(len(faults.plan(f, 0, r, range(n), n).of("crash")) for r in range(rounds))
    assert abs(crashed / (n * rounds) - 0.3) < 0.02
    f = FaultsConfig(straggler=1.0 - 1e-9, straggler_delay=10.0, deadline=10.0)
    p = faults.plan(f, 0, 1, range(2000), 2000)
    # every client straggles; exactly those slower than the deadline are timed out
    assert set(p.delays) == set(range(2000))
    assert set(p.of("timeout")) == {c for c, d in p.delays.items() if d > 10.0}
    assert abs(len(p.of("timeout")) / 2000 - np.exp(-1.0)) < 0.04  # P(Exp(10) > 10)


def test_node_failure_takes_every_client_of_the_node():
    f = FaultsConfig(node_failure=0.5)
    p = faults.plan(f, 0, 1, range(40), 4)  # client c lives on node c mod 4
    failed = {c % 4 for c in p.of("node")}
    assert failed and set(p.of("node")) == {c for c in range(40) if c % 4 in failed}
    assert faults.node_failed(p, [c for c in range(40) if c % 4 in failed])
    assert not faults.node_failed(p, [])


def test_bad_fault_probabilities_are_config_errors():
    from fedrec.config import validate
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match=r"faults.crash.*\[0, 1\)"):
        validate({"faults.crash": 1.0})
    with pytest.raises(ConfigError, match="faults.deadline"):
        validate({"faults.deadline": 0})


# ------------------------------------------------------------------ runs
@pytest.mark.e2e
def test_faulty_run_accounts_for_every_sampled_client(tmp_path, small_config):
    cfg = {
        **small_config,
        "partition.num-clients": 8,
        "runtime.num-nodes": 4,
        "num-server-rounds": 4,
        "faults.crash": 0.3,
        "faults.drop": 0.2,
        "faults.straggler": 0.3,
        "faults.straggler-delay": 30.0,
        "faults.deadline": 30.0,
        "faults.node-failure": 0.2,
    }
    s = fedrec.run(cfg, backend="local", out=tmp_path / "r", quiet=True)
    assert s["num_rounds"] == 4 and s["failures"] == 0  # simulated faults are not failures
    fc = fedrec.config.validate(cfg).faults
    for row in _rows(tmp_path / "r"):
        p = faults.plan(fc, 0, row["round"], range(8), 4)
        assert row["replies"] == 8 - len(p.kinds)  # the server saw exactly the survivors
        assert row["fault_rate"] == pytest.approx(len(p.kinds) / 8)
        assert {k: row[f"faults_{k}"] for k in faults.KINDS} == p.counts()
    assert sum(r["faults_node"] for r in _rows(tmp_path / "r")) > 0  # the seed exercises it


@pytest.mark.e2e
def test_min_replies_skips_the_round_and_keeps_the_model(tmp_path, small_config):
    cfg = {**small_config, "partition.num-clients": 6, "num-server-rounds": 4}
    cfg |= {"faults.crash": 0.3, "strategy.min-replies": 4}
    fc = fedrec.config.validate(cfg).faults
    plans = {r: faults.plan(fc, 0, r, range(6), 6) for r in (1, 2, 3, 4)}
    skipped = {r for r, p in plans.items() if 6 - len(p.kinds) < 4}
    assert skipped - {1} and len(skipped) < 4, "the seed must give both kinds of round"
    fedrec.run(cfg, backend="local", out=tmp_path / "r", quiet=True)
    rows = {r["round"]: r for r in _rows(tmp_path / "r")}
    assert {r for r, row in rows.items() if row["skipped"]} == skipped
    for r in skipped:  # a skipped round evaluates the unchanged model
        if r > 1:
            assert rows[r]["accuracy"] == rows[r - 1]["accuracy"]


@pytest.mark.e2e
def test_all_clients_crashing_skips_rounds_without_failing(tmp_path, small_config):
    cfg = {**small_config, "faults.crash": 0.999}
    s = fedrec.run(cfg, backend="local", out=tmp_path / "r", quiet=True)
    rows = _rows(tmp_path / "r")
    assert all(r["skipped"] == 1 and r["replies"] == 0 for r in rows)
    _, w, _ = load_checkpoint(tmp_path / "r" / "checkpoint.npz")
    assert s["num_rounds"] == 2 and all(np.isfinite(a).all() for a in w)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.e2e
def test_faults_are_identical_on_ray_and_local(tmp_path, small_config):
    cfg = {
        **small_config,
        "partition.num-clients": 6,
        "runtime.num-nodes": 3,
        "faults.crash": 0.3,
        "faults.drop": 0.2,
        "faults.node-failure": 0.2,
        "runtime.ray-num-cpus": 2,
    }
    local = fedrec.run(cfg, backend="local", out=tmp_path / "local", quiet=True)
    ray = fedrec.run(cfg, backend="ray", out=tmp_path / "ray", quiet=True)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]
    assert strip(_rows(tmp_path / "ray")) == strip(_rows(tmp_path / "local"))
    assert ray["final"] == local["final"]

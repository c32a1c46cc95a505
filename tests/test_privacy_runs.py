"""Differential privacy in runs (privacy.*): the ε fedrec reports is the accountant
library's own figure; local DP and DP-SGD; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_data

import fedrec

dpa = pytest.importorskip("dp_accounting")


def _global(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return [r for r in rows if r["scope"] == "global"]


def _library_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    """dp-accounting called directly (not through fedrec)."""
    event = (
        dpa.GaussianDpEvent(z) if q == 1 else dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))
    )
    acc = dpa.rdp.RdpAccountant()
    acc.compose(event, steps)
    return acc.get_epsilon(delta)


@pytest.mark.e2e
def test_central_dp_epsilon_is_the_libraries_figure(tmp_path, small_config):
    cfg = {
        **small_config,
        "partition.num-clients": 8,
        "strategy.fraction-train": 0.5,
        "num-server-rounds": 3,
        "privacy.mechanism": "central",
        "privacy.noise-multiplier": 1.3,
        "privacy.clip-norm": 0.5,
        "privacy.delta": 1e-4,
    }
    s = fedrec.run(cfg, backend="local", out=tmp_path / "r", quiet=True)
    rows = _global(tmp_path / "r")
    for r in rows:
        assert r["epsilon"] == _library_epsilon(1.3, 4 / 8, r["round"], 1e-4)
        assert r["train_dp_clip_norm"] == 0.5 and 0 <= r["train_dp_clipped"] <= 4
    assert s["privacy"] == {
        "mechanism": "central",
        "epsilon": rows[-1]["epsilon"],
        "delta": 1e-4,
        "noise_multiplier": 1.3,
        "accountant": "rdp",
        "clip_norm": 0.5,
    }
    # the noise is seeded by (seed, round): the same run twice is the same run
    again = fedrec.run(cfg, backend="local", out=tmp_path / "again", quiet=True)
    assert again["final"] == s["final"]


@pytest.mark.e2e
def test_central_dp_noise_changes_the_model_and_adaptive_clipping_moves(tmp_path, small_config):
    base = {**small_config, "num-server-rounds": 3}
    plain = fedrec.run(base, backend="local", out=tmp_path / "plain", quiet=True)
    cfg = {**base, "privacy.mechanism": "central", "privacy.clip-norm": 0.0}
    cfg |= {"privacy.noise-multiplier": 0.3, "privacy.initial-clip-norm": 0.05}
    s = fedrec.run(cfg, backend="local", out=tmp_path / "dp", quiet=True)
    assert s["final"]["global"]["accuracy"] != plain["final"]["global"]["accuracy"]
    clips = [r["train_dp_clip_norm"] for r in _global(tmp_path / "dp")]
    assert clips[0] == pytest.approx(0.05) and len(set(clips)) == 3  # C moves every round
    assert s["privacy"]["adaptive_clipping"] is True


@pytest.mark.e2e
@pytest.mark.parametrize("mechanism", ["local", "dpsgd"])
def test_client_side_dp_reports_each_clients_composed_epsilon(tmp_path, small_config, mechanism):
    from fedrec.privacy.accountant import gaussian_ldp_epsilon

    cfg = {**small_config, "num-server-rounds": 2, "privacy.mechanism": mechanism}
    cfg |= {"privacy.noise-multiplier": 1.0, "privacy.clip-norm": 1.0}
    s = fedrec.run(cfg, backend="local", out=tmp_path / "r", quiet=True)
    eps = [r["epsilon"] for r in _global(tmp_path / "r")]
    assert 0 < eps[0] < eps[1] < float("inf")
    if mechanism == "local":  # every client took part in both rounds
        assert eps == [gaussian_ldp_epsilon(1.0, r, 1e-5) for r in (1, 2)]
    assert s["privacy"]["mechanism"] == mechanism and s["privacy"]["epsilon"] == eps[-1]


@pytest.mark.e2e
@pytest.mark.slow
def test_fedmf_local_dp_uploads_every_row(tmp_path):
    shared_data("ml-100k")
    from fedrec.privacy.accountant import gaussian_ldp_epsilon

    cfg = {
        "dataset.name": "ml-100k",
        "partition.num-clients": 95,
        "strategy.name": "fedmf",
        "strategy.params.users-per-client": 10,
        "strategy.params.dim": 8,
        "num-server-rounds": 2,
        "runtime.num-nodes": 1,
        "privacy.mechanism": "local",
        "privacy.noise-multiplier": 2.0,
        "privacy.clip-norm": 0.5,
        "output.plots": False,
        "output.client-metrics": False,
    }
    s = fedrec.run(cfg, backend="local", out=tmp_path / "r", quiet=True)
    rows = _global(tmp_path / "r")
    assert all(r["train_rows_touched"] == 1682 for r in rows)  # ids no longer reveal items
    assert s["privacy"]["epsilon"] == gaussian_ldp_epsilon(2.0, 2, 1e-5)


def test_privacy_errors_are_one_line(tmp_path, capsys):
    from fedrec.cli import main

    cases = [
        (["-c", "strategy.name=fairfed", "-c", "privacy.mechanism=central"], "not supported"),
        (["-c", "strategy.name=fairfed", "-c", "privacy.mechanism=local"], "supports: none"),
        (["-c", "privacy.mechanism=central", "-c", "defense.method=median"], "use one of them"),
        (["-c", "privacy.mechanism=local", "-c", "privacy.clip-norm=0"], "clip-norm"),
        (["-c", "privacy.mechanism=laplace"], "allowed values"),
        (["-c", "privacy.delta=1"], "privacy.delta"),
        (["-c", "privacy.mechanism=central", "-c", "privacy.clip-norm=0"], "needs privacy.noise"),
    ]
    for args, text in cases:
        assert main(["run", "--backend", "local", "--out", str(tmp_path / "x"), *args]) == 2
        err = capsys.readouterr().err
        assert text in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.incomplete").exists()

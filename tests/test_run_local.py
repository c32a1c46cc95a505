"""End-to-end runs on the in-process runtime: outputs, determinism, virtual clients,
a third-party plugin found by entry point, and the state/extra-phase hooks."""

import json
import textwrap

import pytest

import fedrec
from fedrec.errors import PluginError
from fedrec.plugins import load_strategy, strategy_names


def _rows(out):
    return [json.loads(l) for l in (out / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.e2e
def test_local_run_writes_all_outputs(tmp_path, small_config):
    out = tmp_path / "run"
    summary = fedrec.run({**small_config, "output.plots": True}, backend="local", out=out)
    for name in (
        "config.json",
        "rounds.jsonl",
        "summary.json",
        "partition.json",
        "checkpoint.npz",
        "metrics.png",
        "clients.png",
        "partition.png",
    ):
        assert (out / name).is_file(), name
    assert not (tmp_path / "run.incomplete").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["partition.num-clients"] == 4 and cfg["runtime.backend"] == "local"
    rows = _rows(out)
    scopes = {(r["round"], r["scope"]) for r in rows}
    assert {(1, "global"), (2, "global"), (2, "client"), (2, "group")} <= scopes
    clients = [r for r in rows if r["scope"] == "client" and r["round"] == 2]
    assert sorted(r["client"] for r in clients) == [0, 1, 2, 3]
    g = summary["final"]["global"]
    assert 0.70 < g["accuracy"] < 0.90 and 0 <= g["dp_gap"] <= 1
    assert (
        summary["final"]["local"]["dp_gap_local_max"] >= max(r["dp_gap"] for r in clients) - 1e-12
    )
    assert summary["backend"] == "local" and summary["seed"] == 0
    assert {"flwr", "torch", "numpy", "python"} <= set(summary["versions"])
    part = json.loads((out / "partition.json").read_text())
    assert part["num_clients"] == 4 and sum(part["sizes"]) == 45222


@pytest.mark.e2e
def test_same_seed_same_metrics_and_virtual_clients_identical(tmp_path, small_config):
    a = fedrec.run(small_config, backend="local", out=tmp_path / "a")
    b = fedrec.run(small_config, backend="local", out=tmp_path / "b")
    # two nodes hosting two logical clients each: same per-client computation
    c = fedrec.run({**small_config, "runtime.num-nodes": 2}, backend="local", out=tmp_path / "c")
    assert a["final"] == b["final"] == c["final"]
    assert c["num_nodes"] == 2 and c["num_clients"] == 4
    d = fedrec.run({**small_config, "seed": 1}, backend="local", out=tmp_path / "d")
    assert d["final"] != a["final"]


@pytest.mark.e2e
def test_partial_sampling_and_dirichlet(tmp_path, small_config):
    cfg = {
        **small_config,
        "partition.scheme": "dirichlet-sensitive",
        "partition.alpha": 0.3,
        "partition.num-clients": 6,
        "strategy.fraction-train": 0.5,
    }
    fedrec.run(cfg, backend="local", out=tmp_path / "r")
    g = [r for r in _rows(tmp_path / "r") if r["scope"] == "global"]
    assert all(r["num_sampled"] == 3 for r in g)


PLUGIN = textwrap.dedent('''
    import numpy as np
    from fedrec.clients import ClassifierClient
    from fedrec.strategies import FedAvg

    class CountingClient(ClassifierClient):
        """Counts its own fits in private state; answers an extra query phase."""
        def fit(self, server_round, weights, config):
            self.state["fits"] = np.array([int(self.state.get("fits", np.zeros(1))[0]) + 1])
            return super().fit(server_round, weights, config)

        def query(self, action, server_round, weights, config):
            if action == "myplug_stats":
                return None, {"fits": int(self.state["fits"][0]),
                              "num-examples": len(self.data.y_train)}
            return super().query(action, server_round, weights, config)

    class Counting(FedAvg):
        name = "myplug"
        client_half = "myplug:CountingClient"

        def after_aggregate(self, server_round, weights, grid):
            replies = self.communicate(grid, "query.myplug_stats", self.client_ids,
                                       server_round)
            self._fits = [r.metrics["fits"] for r in replies]
            return weights

        def on_round_end(self, server_round, record):
            record.extra["min_fits"] = min(self._fits)
            record.extra["max_fits"] = max(self._fits)
''')


@pytest.fixture
def third_party_plugin(tmp_path, monkeypatch):
    """An unpublished package registered by an entry point (a dist-info on sys.path)."""
    root = tmp_path / "site"
    (root / "myplug").mkdir(parents=True)
    (root / "myplug" / "__init__.py").write_text(PLUGIN)
    info = root / "myplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fedrec.strategies]\nmyplug = myplug:Counting\n")
    monkeypatch.syspath_prepend(str(root))
    return "myplug"


@pytest.mark.e2e
def test_third_party_plugin_by_name(tmp_path, small_config, third_party_plugin):
    assert "myplug" in strategy_names() and "fedavg" in strategy_names()
    summary = fedrec.run(
        {**small_config, "strategy.name": "myplug", "num-server-rounds": 3},
        backend="local",
        out=tmp_path / "p",
    )
    assert summary["strategy"] == "myplug"
    g = [r for r in _rows(tmp_path / "p") if r["scope"] == "global"]
    # private client state persisted across rounds on the node: 1, 2, 3 fits
    assert [(r["min_fits"], r["max_fits"]) for r in g] == [(1, 1), (2, 2), (3, 3)]


def test_dotted_path_and_unknown_names(third_party_plugin):
    assert load_strategy("myplug:Counting").name == "myplug"
    with pytest.raises(PluginError, match="unknown strategy 'nope'.*fedavg"):
        load_strategy("nope")
    with pytest.raises(PluginError, match="cannot import module"):
        load_strategy("no_such_pkg.mod:Cls")
    with pytest.raises(PluginError, match="has no attribute"):
        load_strategy("myplug:Missing")


@pytest.mark.e2e
def test_failing_client_is_reported_not_hung(tmp_path, small_config, monkeypatch):
    from fedrec.clients import classification
    from fedrec.errors import FedrecError

    def boom(self, *a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(classification.ClassifierClient, "fit", boom)
    with pytest.raises(FedrecError, match="disk on fire"):
        fedrec.run(small_config, backend="local", out=tmp_path / "f")
    assert not (tmp_path / "f").exists() and not (tmp_path / "f.incomplete").exists()

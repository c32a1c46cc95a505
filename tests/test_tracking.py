"""Tracking callbacks (``output.callbacks``): TensorBoard scalars read back from the event
files of a real run, a third-party callback by entry point and by dotted path, the one-line
errors, and MLflow / W&B when installed (their tests skip otherwise)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import fedrec.tracking as tracking
from fedrec.callbacks import Callback
from fedrec.config import load_config
from fedrec.errors import ConfigError
from fedrec.tracking import (
    TensorBoardCallback,
    available_callbacks,
    build_callbacks,
    check_callbacks,
    global_scalars,
)

PLUGIN = '''
import json
from pathlib import Path

from fedrec.callbacks import Callback


class Recorder(Callback):
    """Writes the hooks it saw to <run dir>/recorder.json at the end of the run."""

    def __init__(self, cfg, run_dir):
        self.run_dir = Path(run_dir)
        self.seen = [("init", self.run_dir.name, cfg.output.callbacks)]

    def on_run_start(self, strategy, info):
        self.seen.append(("start", info["num_rounds"]))

    def on_round_end(self, strategy, record):
        self.seen.append(("round", record.server_round))

    def on_run_end(self, strategy, history):
        self.seen.append(("end", len(history)))
        (self.run_dir / "recorder.json").write_text(json.dumps(self.seen))
'''


class NoArgs(Callback):
    """A callback built with no arguments, selected by its dotted path."""

    rounds: list[int] = []

    def on_round_end(self, strategy, record) -> None:
        NoArgs.rounds.append(record.server_round)


class NeedsThree(Callback):
    def __init__(self, a, b, c):
        pass


SELF = f"{__name__}:NoArgs"


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    """A package registered in the entry-point group fedrec.callbacks (a dist-info on
    sys.path): ``recorder`` works, ``broken`` fails at import."""
    root = tmp_path_factory.mktemp("site")
    (root / "mycb").mkdir()
    (root / "mycb" / "__init__.py").write_text(PLUGIN)
    (root / "mycb_broken.py").write_text("raise RuntimeError('boom at import')\n")
    info = root / "mycb-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mycb\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[fedrec.callbacks]\nrecorder = mycb:Recorder\nbroken = mycb_broken:Thing\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield root
    for name in ("mycb", "mycb_broken"):
        sys.modules.pop(name, None)


def cfg_with(callbacks: str):
    return load_config(None, [f"output.callbacks={callbacks}"])


@pytest.fixture(scope="module")
def tracked_run(plugins, tmp_path_factory) -> Path:
    from fedrec.runner import run

    NoArgs.rounds.clear()
    out = tmp_path_factory.mktemp("tracking") / "run"
    run(
        None,
        backend="local",
        out=out,
        overrides=[
            "num-server-rounds=2",
            "partition.num-clients=3",
            "output.plots=false",
            f"output.callbacks=tensorboard, recorder,{SELF}",
        ],
        quiet=True,
    )
    return out


def _global_rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines()]
    return [r for r in rows if r["scope"] == "global"]


def test_tensorboard_scalars_match_rounds_jsonl(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedrec.report_html import metric_section

    logdir = tracked_run / "tensorboard"
    assert list(logdir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    rows = _global_rows(tracked_run)
    numeric = {
        k
        for r in rows
        for k, v in r.items()
        if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    assert "accuracy" in numeric and "dp_gap" in numeric and "train_train_loss" in numeric
    assert tags == {f"{metric_section(k)}/{k}" for k in numeric}
    for key in ("accuracy", "dp_gap_local_max", "train_train_loss", "wall_s"):
        events = acc.Scalars(f"{metric_section(key)}/{key}")
        assert [e.step for e in events] == [1, 2]
        want = [r[key] for r in rows]
        assert [e.value for e in events] == pytest.approx(want, rel=1e-6)
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| **num-server-rounds** | 2 | 5 |" in text and "| seed | 0 | 0 |" in text
    changed = acc.Tensors("config/non-default/text_summary")[0].tensor_proto.string_val[0]
    assert b"partition.num-clients = 3" in changed and b"seed" not in changed


def test_plugin_callbacks_by_entry_point_and_dotted_path(tracked_run):
    seen = json.loads((tracked_run / "recorder.json").read_text())
    # built with the config and the run's folder (renamed from <out>.incomplete at the end)
    assert seen[0] == ["init", "run.incomplete", f"tensorboard, recorder,{SELF}"]
    assert seen[1:] == [["start", 2], ["round", 1], ["round", 2], ["end", 2]]
    assert NoArgs.rounds == [1, 2]
    assert "recorder" in available_callbacks() and "tensorboard" in available_callbacks()


def test_builtins_are_registered_entry_points():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="fedrec.callbacks")}
    assert {k: eps.get(k) for k in tracking.BUILTINS} == tracking.BUILTINS


@pytest.mark.parametrize(
    "names, message",
    [
        (
            "nope",
            r"unknown output.callbacks name 'nope'; allowed: (broken, )?mlflow, (recorder, )?"
            r"tensorboard, wandb, or a dotted path package.module:Class$",
        ),
        ("tensorboard,tensorboard", "output.callbacks names 'tensorboard' twice"),
        ("no_such_pkg.mod:Cls", r"output.callbacks 'no_such_pkg.mod:Cls': cannot import module"),
        ("json:dumps", r"'json:dumps' \(json:dumps\) is not a subclass of fedrec.callbacks"),
        (f"{__name__}:Missing", "has no attribute 'Missing'"),
    ],
)
def test_bad_names(names, message):
    with pytest.raises(ConfigError, match=message):
        check_callbacks(cfg_with(names))


def test_broken_plugin_names_plugin_and_error(plugins):
    with pytest.raises(
        ConfigError,
        match=r"output.callbacks 'broken' \(mycb_broken:Thing\) failed to load: "
        r"RuntimeError: boom at import",
    ):
        check_callbacks(cfg_with("recorder,broken"))


def test_bad_constructor(tmp_path):
    with pytest.raises(ConfigError, match="must take \\(cfg, run_dir\\) or no arguments"):
        build_callbacks(cfg_with(f"{__name__}:NeedsThree"), tmp_path)


@pytest.mark.parametrize("name", ["mlflow", "wandb", "tensorboard"])
def test_missing_optional_package(name, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(tracking, "_installed", lambda module: module != name)
    with pytest.raises(ConfigError, match=f"^output.callbacks '{name}' needs {name}: pip install"):
        build_callbacks(cfg_with(f"{name}"), tmp_path)
    # fedrec run fails in preflight, before anything is written
    from fedrec.cli import main

    out = tmp_path / "never"
    code = main(["run", "--backend", "local", "--out", str(out), "-c", f"output.callbacks={name}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"fedrec: error: output.callbacks '{name}' needs {name}: " + (
        f"pip install {name}"
    )
    assert not out.exists() and not Path(f"{out}.incomplete").exists()


def test_no_callbacks(tmp_path):
    assert build_callbacks(cfg_with(""), tmp_path) == []
    assert build_callbacks(cfg_with(" , "), tmp_path) == []


# ------------------------------------------------------------ hooks on a fake record
def fake_record(r: int):
    ev = SimpleNamespace(
        overall={"accuracy": 0.5 + 0.1 * r, "ndcg@10": 0.01 * r, "nan_key": float("nan")},
        local={"accuracy_local_min": 0.4},
        by_client={},
        by_group=[],
    )
    return SimpleNamespace(
        server_round=r,
        wall_s=0.25,
        sampled=[0, 1],
        failures=[],
        train={"train-loss": 1.0 / r},
        train_by_client={},
        evaluation=ev,
        extra={"stage": "train", "flag": True},
    )


def test_global_scalars_of_a_record():
    got = global_scalars(fake_record(2))
    assert got == {
        "accuracy": pytest.approx(0.7),
        "ndcg@10": pytest.approx(0.02),
        "accuracy_local_min": 0.4,
        "train_train_loss": 0.5,
        "wall_s": 0.25,
        "num_sampled": 2.0,
        "failures": 0.0,
    }


def _drive(callbacks, rounds=2):
    strategy = SimpleNamespace(name="fake")
    for cb in callbacks:
        cb.on_run_start(strategy, {"num_rounds": rounds, "partition_report": {}})
    history = []
    for r in range(1, rounds + 1):
        history.append(fake_record(r))
        for cb in callbacks:
            cb.on_round_end(strategy, history[-1])
    for cb in callbacks:
        cb.on_run_end(strategy, history)


def test_tensorboard_callback_unit(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (cb,) = build_callbacks(cfg_with("tensorboard"), tmp_path / "x.incomplete")
    assert isinstance(cb, TensorBoardCallback) and cb.run_name == "x"
    _drive([cb])
    acc = EventAccumulator(str(tmp_path / "x.incomplete" / "tensorboard"))
    acc.Reload()
    assert "performance/ndcg@10" in acc.Tags()["scalars"]
    assert [e.value for e in acc.Scalars("train/train_train_loss")] == [1.0, 0.5]


def test_mlflow_local_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run.incomplete"
    run_dir.mkdir()
    (cb,) = build_callbacks(cfg_with("mlflow"), run_dir)
    _drive([cb])
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("fedrec")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["num-server-rounds"] == "5"
    hist = client.get_metric_history(run.info.run_id, "accuracy")
    assert [(m.step, round(m.value, 6)) for m in hist] == [(1, 0.6), (2, 0.7)]
    assert client.get_metric_history(run.info.run_id, "ndcg_at_10")


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    (cb,) = build_callbacks(cfg_with("wandb"), run_dir)
    _drive([cb])
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))

"""Exact resume: `kill -9` the server process between two rounds, `fedrec run --resume DIR`,
and the run ends as an uninterrupted one does (tests/resume_plugin.py kills on cue)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# what differs between two runs of the same config by nature: clocks and the command line
VOLATILE = {"wall_s", "round_wall_s", "command"}


def _fedrec(args: list[str], cwd: Path, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    env.pop("FEDREC_TEST_KILL_AT", None)
    if kill_at is not None:
        env["FEDREC_TEST_KILL_AT"] = str(kill_at)
    p = subprocess.Popen(
        [str(BIN / "fedrec"), *args, "--quiet"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: Ray's helpers go down with it
    )
    try:
        out, err = p.communicate(timeout=600)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # whatever the killed driver left behind
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _same_run(a: Path, b: Path) -> None:
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert {k: v for k, v in sa.items() if k not in VOLATILE} == {
        k: v for k, v in sb.items() if k not in VOLATILE
    }
    rows = lambda d: [
        {k: v for k, v in json.loads(x).items() if k != "wall_s"}
        for x in (d / "rounds.jsonl").read_text().splitlines()
    ]
    assert rows(a) == rows(b)


def _kill_and_resume(tmp_path: Path, config: list[str], kill_at: int, backend: str) -> None:
    args = [*config, "--backend", backend]
    ref = _fedrec(["run", *args, "--out", "ref"], tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _fedrec(["run", *args, "--out", "run"], tmp_path, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    stage = tmp_path / "run.incomplete"
    assert not (tmp_path / "run").exists() and (stage / "checkpoint.npz").is_file()
    done = [json.loads(x)["round"] for x in (stage / "rounds.jsonl").read_text().splitlines()]
    assert max(done) == kill_at - 1
    resumed = _fedrec(["run", "--resume", "run", "--backend", backend], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not stage.exists()
    _same_run(tmp_path / "ref", tmp_path / "run")
    assert not list((tmp_path / "run" / "client_state").glob("*.r*.npz"))  # per-round files gone


ADULT = ["-c", "num-server-rounds=5", "-c", "partition.num-clients=6", "-c", "faults.crash=0.2"]
ADULT += ["-c", "strategy.name=resume_plugin:KillingFedAvg", "-c", "output.plots=false"]
# central DP with adaptive clipping: the accountant and the clip norm are server state too
ADULT += ["-c", "privacy.mechanism=central", "-c", "privacy.clip-norm=0"]
ADULT += ["-c", "privacy.noise-multiplier=0.3"]


def _fedmf() -> list[str]:
    shared_data("ml-100k")
    return [
        str(ROOT / "experiments/fedrec_base/fedmf_ml100k.toml"),
        "-c",
        "num-server-rounds=4",
        "-c",
        "faults.crash=0.2",
        "-c",
        "strategy.name=resume_plugin:KillingFedMF",
        "-c",
        "output.plots=false",
    ]


@pytest.mark.e2e
@pytest.mark.slow
def test_kill9_and_resume_is_exact_local_fedavg(tmp_path):
    _kill_and_resume(tmp_path, ADULT, kill_at=3, backend="local")


@pytest.mark.e2e
@pytest.mark.slow
def test_kill9_and_resume_is_exact_local_fedmf_client_state(tmp_path):
    """FedMF's user embeddings live on the clients: the resume restores them from the
    nodes' own disk (runtime.state-dir)."""
    _kill_and_resume(
        tmp_path, [*_fedmf(), "-c", f"runtime.state-dir={tmp_path / 'nodes'}"], 3, "local"
    )


@pytest.mark.ray
@pytest.mark.e2e
@pytest.mark.slow
def test_kill9_and_resume_is_exact_on_ray(tmp_path):
    _kill_and_resume(tmp_path, [*_fedmf(), "-c", "runtime.ray-num-cpus=2"], 3, "ray")


# ------------------------------------------------------------------ errors (in process)
def _stage(tmp_path: Path, rounds: int = 3) -> Path:
    import fedrec

    fedrec.run(
        {"partition.num-clients": 3, "num-server-rounds": rounds, "output.plots": False},
        backend="local",
        out=tmp_path / "done",
        quiet=True,
    )
    return tmp_path / "done"


def test_resume_errors(tmp_path, capsys):
    from fedrec.cli import main

    done = _stage(tmp_path)
    assert main(["run", "--resume", str(done)]) == 2
    assert "is finished" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nope")]) == 2
    assert "no unfinished run" in capsys.readouterr().err
    stage = tmp_path / "half.incomplete"
    stage.mkdir()
    assert main(["run", "--resume", str(tmp_path / "half")]) == 2
    assert "before its first checkpoint" in capsys.readouterr().err
    # an interrupted run, faked from a finished one: only runtime.* keys may change
    done.rename(stage)
    assert main(["run", "--resume", str(stage), "-c", "train.lr=1"]) == 2
    err = capsys.readouterr().err
    assert "only runtime.*" in err and "train.lr" in err and err.count("\n") == 1
    assert main(["run", "cfg.toml", "--resume", str(stage)]) == 2
    assert "not both" in capsys.readouterr().err


def test_resume_without_the_clients_state_names_the_missing_file(tmp_path, capsys):
    from fedrec.cli import main

    done = _stage(tmp_path)
    stage = tmp_path / "run.incomplete"
    done.rename(stage)  # its checkpoint says round 3; no node kept a round-3 file
    assert main(["run", "--resume", str(tmp_path / "run"), "--backend", "local"]) == 2
    err = capsys.readouterr().err
    assert "no kept state" in err and "r3.npz" in err
    assert stage.is_dir()  # a failed resume keeps the folder to try again

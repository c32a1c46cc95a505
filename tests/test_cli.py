"""The CLI's user-error contract: one line naming the culprit, exit 2, nothing written."""

import os
import subprocess
import sys

import pytest

FEDREC = [sys.executable, "-m", "fedrec.cli"]


def _run(args, tmp_path, env=None):
    return subprocess.run(
        FEDREC + args,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.mark.parametrize(
    "override, culprit",
    [
        ("bogus.key=1", "unknown config key 'bogus.key'"),
        ("strategy.name=nope", "unknown strategy 'nope'"),
        ("runtime.backend=k8s", "allowed values: ray, local, deployment"),
        ("dataset.name=imagenet", "imagenet"),
        ("dataset.sensitive=height", "height"),
        pytest.param("model.name=gpt", "gpt", marks=pytest.mark.slow),  # loads Adult: > 3 s
        ("strategy.params.q=1", "strategy.params.q"),
    ],
)
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, override, culprit):
    out = tmp_path / "out"
    p = _run(["run", "--backend", "local", "--out", str(out), "-c", override], tmp_path)
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedrec: error:"), p.stderr
    assert culprit in lines[0]
    assert not out.exists() and not list(tmp_path.glob("out*"))
    assert not (tmp_path / "runs").exists()


def test_checksum_mismatch_names_the_file(tmp_path):
    data = tmp_path / "data" / "adult"
    data.mkdir(parents=True)
    (data / "adult.data").write_text("39, State-gov, 77516, Bachelors\n")
    (data / "adult.test").write_text("|1x3 Cross validator\n")
    out = tmp_path / "out"
    p = _run(
        ["run", "--backend", "local", "--out", str(out)],
        tmp_path,
        env={"FEDREC_DATA_DIR": str(tmp_path / "data")},
    )
    assert p.returncode == 2
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "sha256" in lines[0] and "adult.data" in lines[0], p.stderr
    assert not out.exists()


def test_bad_config_file(tmp_path):
    (tmp_path / "e.toml").write_text("[train]\nlrr = 0.1\n")
    p = _run(["run", str(tmp_path / "e.toml"), "--backend", "local"], tmp_path)
    assert p.returncode == 2 and "train.lrr" in p.stderr and "train.lr" in p.stderr


@pytest.mark.e2e
def test_run_prints_table_and_list(tmp_path):
    p = _run(
        [
            "run",
            "--backend",
            "local",
            "--out",
            "o",
            "--quiet",
            "-c",
            "num-server-rounds=1",
            "-c",
            "partition.num-clients=3",
            "-c",
            "output.plots=false",
        ],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert "global" in p.stdout and "dp_gap" in p.stdout and "local (max)" in p.stdout
    assert (tmp_path / "o" / "summary.json").exists()
    p = _run(["list"], tmp_path)
    assert p.returncode == 0 and "fedavg" in p.stdout and "adult" in p.stdout
    p = _run(["list", "--keys"], tmp_path)
    assert "partition.alpha" in p.stdout and "Dirichlet" in p.stdout


def test_existing_output_dir_is_refused(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    p = _run(["run", "--backend", "local", "--out", "o"], tmp_path)
    assert p.returncode == 2 and "'o'" in p.stderr
    assert (tmp_path / "o" / "keep.txt").read_text() == "x"


@pytest.mark.e2e
def test_compare_prints_one_table(tmp_path):
    p = _run(
        [
            "compare",
            "--backend",
            "local",
            "--quiet",
            "--out",
            "cmp",
            "-c",
            "num-server-rounds=1",
            "-c",
            "partition.num-clients=3",
            "-c",
            "output.plots=false",
            "-c",
            "strategy.params.post-rounds=2",
        ],
        tmp_path,
    )
    # strategy.params.* are validated per strategy: fedavg has none -> a clear error
    assert p.returncode == 2 and "strategy.params.post-rounds" in p.stderr
    p = _run(
        [
            "compare",
            "--backend",
            "local",
            "--quiet",
            "--out",
            "cmp",
            "-c",
            "num-server-rounds=1",
            "-c",
            "partition.num-clients=3",
            "-c",
            "output.plots=false",
        ],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any(l.startswith("fedavg ") for l in lines)
    assert any(l.startswith("fedfact-post ") for l in lines)
    assert (tmp_path / "cmp" / "fedfact-post" / "summary.json").exists()

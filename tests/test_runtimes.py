"""The ray and deployment runtimes (marked: they start Ray / Flower servers)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fedrec

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.e2e
def test_ray_matches_local_bit_for_bit(tmp_path, small_config):
    cfg = {**small_config, "partition.num-clients": 3, "partition.scheme": "dirichlet-sensitive"}
    local = fedrec.run(cfg, backend="local", out=tmp_path / "local")
    ray = fedrec.run({**cfg, "runtime.ray-num-cpus": 2}, backend="ray", out=tmp_path / "ray")
    assert ray["backend"] == "ray" and local["backend"] == "local"
    assert ray["final"] == local["final"]
    assert ray["final_by_client"] == local["final_by_client"]
    rows = lambda d: [json.loads(l) for l in (d / "rounds.jsonl").read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]
    assert strip(rows(tmp_path / "ray")) == strip(rows(tmp_path / "local"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def federation(tmp_path):
    """A SuperLink and two SuperNodes on 127.0.0.1, stopped by PID afterwards."""
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    link_port = _free_port()
    procs = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name, cmd):
        fh = open(logs / f"{name}.log", "w")
        procs.append(
            subprocess.Popen(
                cmd,
                env={**env, "FLWR_HOME": str(tmp_path / name)},
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                start_new_session=True,
            )
        )

    start(
        "superlink",
        [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(link_port),
            "--disable-runtime-dependency-installation",
        ],
    )
    _wait_port(link_port)
    for i in range(2):
        start(
            f"supernode{i}",
            [
                str(BIN / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link_port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(_free_port()),
                "--node-config",
                f"partition-id={i} num-partitions=2",
            ],
        )
    try:
        yield f"127.0.0.1:{link_port}", env
    finally:
        for p in procs:  # only the processes this fixture started (and their groups)
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


@pytest.mark.deployment
@pytest.mark.slow
@pytest.mark.e2e
def test_deployment_superlink_two_supernodes(tmp_path, small_config, federation):
    address, env = federation
    cfg = {
        **small_config,
        "num-server-rounds": 1,
        "runtime.num-nodes": 2,
        "runtime.superlink": address,
        "runtime.timeout": 240,
    }
    summary = fedrec.run(cfg, backend="deployment", out=tmp_path / "dep")
    assert summary["num_rounds"] == 1 and summary["num_nodes"] == 2
    assert summary["num_clients"] == 4
    local = fedrec.run({**cfg}, backend="local", out=tmp_path / "local")
    assert summary["final"] == local["final"]

    # the repository itself is a Flower app: `flwr run .` with run-config overrides
    home = tmp_path / "cli-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "t"\n[superlink.t]\naddress = "{address}"\ninsecure = true\n'
    )
    out = tmp_path / "flwr-run-out"
    rc = f"runtime.num-nodes=2 num-server-rounds=1 partition.num-clients=2 output.dir='{out}'"
    p = subprocess.run(
        [str(BIN / "flwr"), "run", str(ROOT), "t", "--run-config", rc, "--stream"],
        env={**env, "FLWR_HOME": str(home)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["num_rounds"] == 1


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.e2e
def test_flwr_run_dot_against_local_simulation(tmp_path):
    """`flwr run .` submits the repository app to a simulation SuperLink."""
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    port = _free_port()
    log = open(tmp_path / "superlink.log", "w")
    link = subprocess.Popen(
        [
            str(BIN / "flower-superlink"),
            "--simulation",
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        ],
        env={**env, "FLWR_HOME": str(tmp_path / "link")},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        _wait_port(port)
        home = tmp_path / "home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "sim"\n[superlink.sim]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        out = tmp_path / "out"
        p = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(ROOT),
                "sim",
                "--federation-config",
                "num-supernodes=3 client-resources-num-cpus=1",
                "--run-config",
                f"partition.num-clients=3 num-server-rounds=1 output.dir='{out}'",
                "--stream",
            ],
            env={**env, "FLWR_HOME": str(home)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["num_clients"] == 3 and summary["num_rounds"] == 1
    finally:
        os.killpg(link.pid, signal.SIGTERM)
        try:
            link.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(link.pid, signal.SIGKILL)

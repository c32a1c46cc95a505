"""``runtime.ray-address``: the ray runtime joins a running two-node Ray cluster on 127.0.0.1.

The cluster is two ``ray start --block`` processes (a head and a worker node, each with its own
``--temp-dir``, so nothing but the host is shared), each in a new session; they are stopped by
signalling those two process groups only. ``ray stop`` is never used: it kills every Ray process
of this user on the machine, other sessions' included.

A worker node bound to 127.0.0.1 needs one workaround: ``ray start --address`` refuses to start a
non-head node when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, and with it on, Ray rewrites the
addresses 127.0.0.1 (``--address`` and ``--node-ip-address``) to this machine's outward IP,
where the loopback-bound head does not listen (and the node itself would listen on every
interface). ``_WORKER`` runs the same ``ray start`` with that variable 0 (loopback addresses
stay 127.0.0.1) and only the CLI's multi-node refusal switched off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import fedrec
from fedrec.errors import FedrecError

BIN = Path(sys.executable).parent
_WORKER = (
    "import sys, types; from ray.scripts import scripts as s; "
    "s.ray_constants = types.SimpleNamespace("
    "**{**vars(s.ray_constants), 'ENABLE_RAY_CLUSTER': True}); sys.exit(s.main())"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the Ray head exited; see its log"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"no Ray head listens on 127.0.0.1:{port}")


def _alive_nodes(address: str, env: dict) -> int:
    p = subprocess.run(
        [str(BIN / "ray"), "status", "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    active = p.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(" node_" in line for line in active.splitlines()) if "Active:" in p.stdout else 0


@pytest.fixture
def ray_cluster(tmp_path):
    """A head and a worker node (1 CPU each) on 127.0.0.1; yields (address, temp dirs, env)."""
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # short: Ray's unix sockets live under the temp dir (at most 107 bytes)
    root = Path(tempfile.mkdtemp(prefix="fr-ray-", dir="/tmp"))
    dirs = {"head": root / "h", "worker": root / "w"}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--block"]
    cmds = {
        "head": [str(BIN / "ray"), "start", "--head", "--port", str(port)]
        + ["--ray-client-server-port", str(_free_port()), "--include-dashboard", "false"],
        "worker": [sys.executable, "-c", _WORKER, "start", "--address", address],
    }
    procs: list[subprocess.Popen] = []

    def start(name: str) -> subprocess.Popen:
        log = open(tmp_path / f"ray-{name}.log", "w")
        p = subprocess.Popen(
            [*cmds[name], *common, "--temp-dir", str(dirs[name])],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )
        procs.append(p)
        return p

    try:
        _wait_port(port, start("head"))
        start("worker")
        deadline = time.monotonic() + 120
        while _alive_nodes(address, env) < 2:
            assert procs[1].poll() is None, (tmp_path / "ray-worker.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the worker node did not join the head"
            time.sleep(1)
        yield address, dirs, env
    finally:
        for p in reversed(procs):  # worker first, then the head (and GCS) last
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _rounds(d: Path) -> list[dict]:
    rows = [json.loads(line) for line in (d / "rounds.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def _ran_client_apps(temp_dir: Path) -> bool:
    logs = temp_dir / "session_latest" / "logs"
    return any("ClientAppActor" in f.read_text(errors="ignore") for f in logs.glob("worker-*"))


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.e2e
def test_ray_address_joins_two_node_cluster(tmp_path, small_config, ray_cluster):
    address, dirs, env = ray_cluster
    local = fedrec.run(small_config, backend="local", out=tmp_path / "local")
    joined = fedrec.run(
        small_config,
        backend="ray",
        out=tmp_path / "ray",
        overrides=[f"runtime.ray-address={address}", "runtime.ray-num-cpus=7"],  # ignored
    )
    assert joined["backend"] == "ray" and joined["num_rounds"] == 2
    assert joined["final"] == local["final"]
    assert joined["final_by_client"] == local["final_by_client"]
    assert _rounds(tmp_path / "ray") == _rounds(tmp_path / "local")
    # both nodes ran ClientApps (one 1-CPU actor each), and leaving only disconnected
    assert _ran_client_apps(dirs["head"]) and _ran_client_apps(dirs["worker"])
    import ray

    assert not ray.is_initialized()
    assert _alive_nodes(address, env) == 2  # the cluster keeps running


@pytest.mark.ray
@pytest.mark.e2e
def test_ray_address_unreachable_is_one_line(tmp_path, small_config):
    port = _free_port()  # nothing listens there
    with pytest.raises(FedrecError) as e:
        fedrec.run(
            {**small_config, "runtime.ray-address": f"127.0.0.1:{port}"},
            backend="ray",
            out=tmp_path / "out",
        )
    msg = str(e.value)
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg and "ray start --head" in msg
    assert not (tmp_path / "out" / "summary.json").exists()

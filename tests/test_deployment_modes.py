"""Long-lived ClientApps in deployment: ``flower-supernode --isolation process`` plus one
``python -m fedrec.runtime.deployment`` executor per SuperNode (marked: starts Flower
servers on 127.0.0.1)."""

import json
import re

import pytest

import fedrec
from fedrec.runtime.deployment import LoopbackFederation


@pytest.mark.deployment
@pytest.mark.slow
@pytest.mark.e2e
def test_long_lived_clientapps_match_local(tmp_path, small_config):
    cfg = {**small_config, "runtime.num-nodes": 2, "runtime.timeout": 240}  # 2 rounds
    with LoopbackFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        for i in range(2):
            fed.start_supernode(i, 2, long_lived=True)
        summary = fedrec.run(
            cfg, backend="deployment", out=tmp_path / "dep", overrides=fed.overrides()
        )
        alive = {n: p.poll() is None for n, p in fed.procs.items()}
        logs = {n: fed.log(n) for n in fed.procs}
        # a second run on the same executors, in which a ClientApp raises (a simulated
        # node failure): the error goes back as the reply, the executor serves on
        faulty = {
            **cfg,
            "faults.node-failure": 0.5,
            "output.checkpoint": False,
            "output.keep-client-state": False,
        }
        summary2 = fedrec.run(
            faulty, backend="deployment", out=tmp_path / "dep2", overrides=fed.overrides()
        )
        raised = [
            fed.log(f"supernode{i}-clientapp").count("simulated node failure") for i in (0, 1)
        ]
    local = fedrec.run(cfg, backend="local", out=tmp_path / "local")
    local2 = fedrec.run(faulty, backend="local", out=tmp_path / "local2")
    assert sum(raised) > 0
    assert summary2["final"] == local2["final"] and summary2["num_rounds"] == 2
    assert summary["num_rounds"] == 2 and summary["num_nodes"] == 2
    assert summary["final"] == local["final"]
    assert summary["final_by_client"] == local["final_by_client"]
    rows = lambda d: [json.loads(l) for l in (d / "rounds.jsonl").read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]
    assert strip(rows(tmp_path / "dep")) == strip(rows(tmp_path / "local"))
    # every message a SuperNode received ran in its one executor process, which outlives
    # the run: handshake, 2 x (train, evaluate, state save), final state save
    for i in range(2):
        received = re.findall(r"Receiving: (\S+) message", logs[f"supernode{i}"])
        served = re.findall(r"run \d+: (\S+) message", logs[f"supernode{i}-clientapp"])
        assert served == received and len(served) == 8, (received, served)
        assert alive[f"supernode{i}-clientapp"]

#!/usr/bin/env python
"""Deployment latency: a fresh ``flwr-clientapp`` per message vs. long-lived ClientApps.

For each mode, a SuperLink and ``--nodes`` SuperNodes start on free 127.0.0.1 ports (a
temporary ``FLWR_HOME`` each, :class:`fedrec.runtime.deployment.LoopbackFederation`) and
the default Adult experiment (FedAvg, 10 clients, 5 rounds; ``runtime.num-nodes`` =
``--nodes``) runs through ``fedrec.run(..., backend="deployment")``:

* ``subprocess``  -- ``flower-supernode --isolation subprocess`` (Flower's default): the
  SuperNode's ``flower-superexec`` starts one ``flwr-clientapp`` process per message, which
  imports torch and fedrec and reloads its client data;
* ``long-lived``  -- ``flower-supernode --isolation process`` plus one
  ``python -m fedrec.runtime.deployment --runtime-api-address ...`` per SuperNode, started
  once: it runs every message of its node in its own process (fedrec's caches survive).

Reported per mode: the start-up of the federation (until every SuperNode and executor is
up, not timed in the run), the run's wall time (``fedrec.run`` call: ``flwr run``, the
ServerApp process, the run itself), the strategy's own time (``summary["wall_s"]``), the
number of message phases (messages received by SuperNode 0: handshake, then per round
train + evaluate + client-state save, then the final state save), seconds per phase
(wall / phases, and strategy time / phases), whether the final metrics equal those of
``backend="local"`` (same config), and the CPU (in cores) that processes outside this
benchmark used meanwhile (the machine may be shared). Everything started is stopped
(process groups).

Why a phase still takes about 3 s more than its work: an idle SuperNode polls the
SuperLink every 3 s (``time.sleep(3)`` in ``flwr/supernode/start_client_internal.py``),
and the SuperNode whose reply completes a phase always finds the next message only at its
next poll. ``--repeat N`` runs every mode N times (interleaved).

Usage::

    python benchmarks/deployment_latency.py [--modes subprocess long-lived] [--rounds 5]
        [--clients 10] [--nodes 2] [--repeat 1] [--json OUT.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

for _k, _v in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}.items():
    os.environ[_k] = _v

import fedrec  # noqa: E402
from fedrec.runtime.deployment import LoopbackFederation  # noqa: E402

MODES = ("subprocess", "long-lived")


class OtherLoad(threading.Thread):
    """The mean CPU (cores) used by processes outside this one and its descendants."""

    def __init__(self, interval: float = 2.0):
        super().__init__(daemon=True)
        self.interval, self.samples = interval, []
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        me = psutil.Process()
        cache: dict = {}
        while not self._halt.wait(self.interval):
            mine = {me.pid} | {c.pid for c in me.children(recursive=True)}
            busy = 0.0
            for p in psutil.process_iter():
                if p.pid in mine:
                    continue
                proc = cache.get(p.pid)
                try:
                    if proc is None or proc.create_time() != p.create_time():
                        cache[p.pid] = proc = p
                        proc.cpu_percent(None)  # (primes it)
                        continue
                    busy += proc.cpu_percent(None) / 100.0
                except psutil.Error:
                    pass
            self.samples.append(busy)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        samples = self.samples[1:]  # (the first only primes new processes' counters)
        return sum(samples) / len(samples) if samples else float("nan")


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:g}s")


def start_federation(folder: Path, mode: str, nodes: int) -> tuple[LoopbackFederation, float]:
    """The federation of ``mode``, with every SuperNode connected (and every executor
    serving); returns it and its start-up seconds."""
    t0 = time.perf_counter()
    fed = LoopbackFederation(folder)
    try:
        fed.start_superlink()
        for i in range(nodes):
            fed.start_supernode(i, nodes, long_lived=mode == "long-lived")
        for i in range(nodes):
            name = f"supernode{i}"
            _wait_for(lambda n=name: "SuperNode ID" in fed.log(n), 120, f"{name}")
            if mode == "long-lived":
                worker = f"{name}-clientapp"
                _wait_for(lambda w=worker: "serving the ClientApp" in fed.log(w), 120, worker)
    except BaseException:
        fed.stop()
        raise
    return fed, time.perf_counter() - t0


def run_mode(folder: Path, mode: str, args, local: dict) -> dict:
    fed, startup = start_federation(folder / "federation", mode, args.nodes)
    load = OtherLoad()
    load.start()
    try:
        with fed:
            t0 = time.perf_counter()
            summary = fedrec.run(
                None,
                backend="deployment",
                out=folder / "run",
                overrides=[*args.overrides, *fed.overrides()],
                quiet=True,
            )
            wall = time.perf_counter() - t0
            received = re.findall(r"Receiving: (\S+) message", fed.log("supernode0"))
    finally:
        other = load.stop()
    phases = len(received)
    return {
        "mode": mode,
        "other_cpu_cores": other,
        "startup_s": startup,
        "wall_s": wall,
        "strategy_s": summary["wall_s"],
        "round_wall_s": summary["round_wall_s"],
        "phases": phases,
        "phase_types": dict(Counter(received)),
        "s_per_phase": wall / phases if phases else float("nan"),
        "strategy_s_per_phase": summary["wall_s"] / phases if phases else float("nan"),
        "final_equal_local": summary["final"] == local["final"]
        and summary["final_by_client"] == local["final_by_client"],
        "final": summary["final"]["global"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--keep", help="keep the logs and run folders in DIR")
    args = p.parse_args(argv)
    args.overrides = [
        f"num-server-rounds={args.rounds}",
        f"partition.num-clients={args.clients}",
        f"runtime.num-nodes={args.nodes}",
        "runtime.timeout=600",
    ]
    root = Path(args.keep or tempfile.mkdtemp(prefix="fedrec-deploy-bench-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLWR_HOME", str(root / "flwr-home"))  # (the local run's)
    results = []
    try:
        t0 = time.perf_counter()
        local = fedrec.run(
            None, backend="local", out=root / "local", overrides=args.overrides, quiet=True
        )
        print(f"local: {time.perf_counter() - t0:.1f} s, final {local['final']['global']}")
        for rep in range(args.repeat):
            for mode in args.modes:
                r = run_mode(root / f"{mode}-{rep}", mode, args, local)
                r["repeat"] = rep
                results.append(r)
                report(r)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(
        "| mode | start-up s | run wall s | strategy s | phases | s/phase (wall) "
        "| s/phase (strategy) | = local | other CPU (cores) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['mode']} | {r['startup_s']:.1f} | {r['wall_s']:.1f} "
            f"| {r['strategy_s']:.1f} | {r['phases']} | {r['s_per_phase']:.2f} "
            f"| {r['strategy_s_per_phase']:.2f} | {r['final_equal_local']} "
            f"| {r['other_cpu_cores']:.2f} |"
        )
    print(f"({os.cpu_count()} cores)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if results and all(r["final_equal_local"] for r in results) else 1


def report(r: dict) -> None:
    print(
        f"{r['mode']}: startup {r['startup_s']:.1f} s, run "
        f"{r['wall_s']:.1f} s "
        f"(strategy {r['strategy_s']:.1f} s), {r['phases']} phases "
        f"{r['phase_types']}, {r['s_per_phase']:.2f} s/phase "
        f"(strategy {r['strategy_s_per_phase']:.2f}), rounds "
        f"{[round(x, 1) for x in r['round_wall_s']]} s, "
        f"metrics equal local: {r['final_equal_local']}, other processes "
        f"{r['other_cpu_cores']:.2f} cores",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

"""The measuring harness shared by the benchmarks (``bench_scale.py``, ``bench_fedmf.py``).

Each benchmark configuration runs in its own subprocess; this module starts it, samples
the summed RSS of its whole process tree (Ray's GCS, raylet, workers, ...) every 0.2 s,
kills the tree when it runs past its timeout, reads a failure reason from its log and
its JSON result, and measures how much CPU other processes used meanwhile (the machine
is shared).

- :func:`quiet_flower_env`: offline, quiet Flower/Ray (call before flwr or ray is imported);
- :func:`subprocess_env`: the environment of a configuration's subprocess;
- :func:`run_measured`: run one subprocess under a :class:`TreeSampler` and a timeout;
- :func:`wait_idle`, :func:`other_cpu_cores`: the other processes' CPU use;
- :func:`fmt`: a number for the tables.

Imports nothing heavy (psutil on first use), so the scripts import it before flwr.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


def quiet_flower_env() -> None:
    """Quiet, offline Flower/Ray; set before flwr or ray is imported anywhere (the
    subprocesses and Ray workers inherit them)."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def subprocess_env(**extra: str) -> dict:
    """This process's environment, unbuffered output and this folder on ``PYTHONPATH``
    (so the subprocess and its Ray workers import the benchmark modules by name)."""
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        **extra,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }


# =========================================================================== other load
def other_cpu_cores(exclude: set[int], cache: dict) -> float:
    """CPU (in cores) used by processes outside ``exclude`` since the previous call with
    the same ``cache`` (the first call primes it and returns 0). Used to flag runs that
    shared the machine with other work."""
    import psutil

    total = 0.0
    alive = set()
    for p in psutil.process_iter():
        if p.pid in exclude:
            continue
        alive.add(p.pid)
        proc = cache.get(p.pid)
        if proc is None or proc.create_time() != p.create_time():
            cache[p.pid] = proc = p
        try:
            total += proc.cpu_percent(None)
        except psutil.Error:
            pass
    for pid in set(cache) - alive:
        del cache[pid]
    return total / 100.0


def wait_idle(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` cores;
    returns their last measured use."""
    cache: dict = {}
    me = {os.getpid()}
    other_cpu_cores(me, cache)
    deadline = time.monotonic() + max_wait
    for i in itertools.count():
        time.sleep(3.0)
        busy = other_cpu_cores(me, cache)
        if busy < threshold or time.monotonic() > deadline:
            return busy
        if i % 10 == 0:
            print(
                f"[bench]   waiting: other processes use {busy:.1f} cores",
                file=sys.stderr,
                flush=True,
            )
    return busy


# =========================================================================== process tree
class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants every ``interval`` s
    (and, every 5th sample, the CPU used by processes outside the tree)."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.max_procs = 0
        self.seen: dict[int, object] = {}  # pid -> psutil.Process, for cleanup
        self._halt = threading.Event()
        self._cpu_cache: dict = {}
        self._tree: set[int] = {os.getpid(), pid}
        self.other_cores: list[float] = []
        self._n = 0

    def sample(self) -> None:
        ps = self.psutil
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except ps.Error:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
                self.seen.setdefault(p.pid, p)
            except ps.Error:
                pass
        self.peak = max(self.peak, total)
        self.max_procs = max(self.max_procs, len(procs))
        self._tree |= {p.pid for p in procs}
        if self._n % 5 == 0:
            busy = other_cpu_cores(self._tree, self._cpu_cache)
            if self._n:
                self.other_cores.append(busy)
        self._n += 1

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def kill_all(self) -> None:
        """Kill every process of the tree this sampler has seen (by pid)."""
        self.sample()
        for p in list(self.seen.values()):
            try:
                p.kill()
            except self.psutil.Error:
                pass


def reap(sampler: TreeSampler, wait_s: float = 30.0) -> None:
    """Wait for the processes the run started to exit; kill what is left (by pid)."""
    ps = sampler.psutil
    alive = [p for p in sampler.seen.values() if p.is_running()]
    if not alive:
        return
    _, alive = ps.wait_procs(alive, timeout=wait_s)
    for p in alive:
        try:
            p.kill()
        except ps.Error:
            pass
    ps.wait_procs(alive, timeout=5)


def failure_reason(log_path: Path) -> str:
    """The last line of the log that names an error or exception (else its last line)."""
    try:
        lines = [
            ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()
        ]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln[:160]
    return lines[-1][:160] if lines else "no output"


# =========================================================================== one run
@dataclass
class Run:
    """What :func:`run_measured` measured. :meth:`measures` are the fields every
    benchmark row carries; ``error`` is ``None`` when the run wrote its result."""

    total_s: float
    peak_rss_gib: float
    max_procs: int
    other_cores_mean: float | None
    loadavg_1m_after: float
    log: str
    t0_wall: float  # time.time() at the spawn
    error: str | None
    result: dict | None

    def measures(self) -> dict:
        return {
            "total_s": self.total_s,
            "peak_rss_gib": self.peak_rss_gib,
            "max_procs": self.max_procs,
            "other_cores_mean": self.other_cores_mean,
            "loadavg_1m_after": self.loadavg_1m_after,
            "log": self.log,
        }


def run_measured(
    cmd: list[str], *, env: dict, cwd: Path, log_path: Path, result_path: Path, timeout: float
) -> Run:
    """Run ``cmd`` (stdout and stderr to ``log_path``, its own session) while a
    :class:`TreeSampler` samples its process tree; past ``timeout`` s kill the tree.
    Then wait for (or kill) what is left of the tree and read the JSON the run wrote to
    ``result_path``. ``error``: ``exit RC: reason``, ``timeout after T s`` or
    ``no result: reason``."""
    t0 = time.perf_counter()
    t0_wall = time.time()
    error = None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(cwd), start_new_session=True
        )
        sampler = TreeSampler(proc.pid)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout)
            if rc != 0:
                error = f"exit {rc}: {failure_reason(log_path)}"
        except subprocess.TimeoutExpired:
            sampler.kill_all()
            sampler.psutil.wait_procs(list(sampler.seen.values()), timeout=10)
            proc.wait()
            error = (
                f"timeout after {timeout:.0f} s"
                if timeout >= 10
                else f"timeout after {timeout:g} s"
            )
        total = time.perf_counter() - t0
        sampler.stop()
    reap(sampler)
    result = None
    if error is None:
        if result_path.exists():
            result = json.loads(result_path.read_text())
        else:
            error = f"no result: {failure_reason(log_path)}"
    return Run(
        total_s=total,
        peak_rss_gib=sampler.peak / 2**30,
        max_procs=sampler.max_procs,
        other_cores_mean=(statistics.fmean(sampler.other_cores) if sampler.other_cores else None),
        loadavg_1m_after=os.getloadavg()[0],
        log=str(log_path),
        t0_wall=t0_wall,
        error=error,
        result=result,
    )


def fmt(v: float | None, digits: int = 2) -> str:
    """A table cell: ``-`` for missing/NaN, ``digits`` decimals below 100, else none."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if v < 100 else f"{v:.0f}"

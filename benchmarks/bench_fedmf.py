#!/usr/bin/env python
"""Federated MF-BPR benchmark: 943 ML-100K users per round, round time and peak memory.

Every configuration trains all 943 ML-100K users (one logical client per user,
``partition.num-clients=943``, ``strategy.params.users-per-client=1``) for ``--rounds``
rounds with ``dim=64``, 1 local epoch, 1 sampled negative per positive, batch 8,
``train.lr=0.5``, ``strategy.params.server-lr=20``. Each runs in its own subprocess
(``--single KEY``) while this process samples the summed RSS of that subprocess and all
its descendants (Ray's GCS, raylet, workers, ...) every 0.2 s (``harness.py``, shared
with ``bench_scale.py``).

Configurations (``--only`` picks a subset, by key):

* ``local-1`` / ``local-8``: ``fedrec.run(cfg, backend="local")`` with
  ``runtime.num-nodes`` 1 (one batched cohort of 943 users) / 8 nodes.
* ``ray-2`` / ``ray-8`` / ``ray-0``: ``fedrec.run(cfg, backend="ray")``,
  ``runtime.client-num-cpus=1``, ``runtime.num-nodes`` 2 / 8 / 0 (one SuperNode per user,
  943 nodes).
* ``flower``: plain Flower written here: a Message-API ``ClientApp`` (``@app.train()``)
  on 943 SuperNodes (``run_simulation``, ``num_cpus=1`` per ClientApp); each node keeps
  its user's embedding in ``context.state`` (:func:`fedrec.algorithms.fedmf.init_users`),
  runs :func:`fedrec.algorithms.fedmf.local_step` for its one user (same seeds, negatives
  and initialisation as fedrec) and returns the **dense** updated item matrix; the server is
  Flower's built-in ``flwr.serverapp.strategy.FedAvg`` (``fraction_evaluate=0``:
  **no evaluation phase**).
* ``raw``: the same round in one process without Flower, calling the functions fedrec's
  two halves call (:mod:`fedrec.algorithms.fedmf`): one ``local_step`` for all 943 users
  (negatives and local BPR, the cohort), ``client_uploads`` with one client per user and
  ``sparse_server_step``, the per-row aggregation ``Q[i] += server_lr * sum(delta_i) /
  count_i``. No evaluation.
* ``raw-synth10k``: ``raw`` for 10,000 ``synthetic-rec`` users (``user_data(
  "synthetic-rec", "num_users=10000")``, 500 items, 30 interactions per user): its peak RSS.
* ``local-synth10k`` (only with ``--only``): ``fedrec.run`` local, one cohort node, on
  10,000 synthetic users (``dataset.options = "num_users=10000"``), evaluation included.

fedrec rounds include fedmf's evaluation phase (full ranking of all items for every
user); plain Flower and raw have none. So the table also gives the **train phase**:
for fedrec from the start of the round to the end of ``FedMF.aggregate`` (what the
plain-Flower round and the raw round do).

Reported per configuration: median round time of rounds 2..R, the first round, the
median train phase (rounds 2..R), the subprocess's total wall time (interpreter start
to exit: imports, Ray start-up, fedrec's handshake included) and the peak summed RSS
(GiB; pages shared between processes, e.g. Ray's object store, count once per process,
so an upper bound). The first-round train loss of every 943-user configuration is
recorded as a check that they compute the same thing (same initial P and Q, same
negatives and mini-batch orders: they agree in round 1; later rounds differ for plain
Flower, whose dense FedAvg is a different aggregation).

A configuration that runs past its timeout is killed; the rounds it finished (each
subprocess logs round events to a file as it goes) are reported, or, when it did not
finish round 1, how long round 1 had been running. ``--budget`` caps the whole sweep:
each configuration's timeout is cut to what is left of it.

Usage::

    python benchmarks/bench_fedmf.py [--rounds 3] [--json OUT.json] [--only KEY ...]
"""

from __future__ import annotations

import os
import tempfile

# the measuring harness (this folder is sys.path[0], or on PYTHONPATH in the subprocesses)
from harness import fmt as _f
from harness import quiet_flower_env, run_measured, subprocess_env

quiet_flower_env()  # before flwr or ray is imported anywhere
if "FLWR_HOME" not in os.environ or "fedrec-bench-flwr-home" not in os.environ["FLWR_HOME"]:
    os.environ["FLWR_HOME"] = tempfile.mkdtemp(prefix="fedrec-bench-flwr-home-")
# the development layout: ../shared/data beside the checkout
_SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
if "FEDREC_DATA_DIR" not in os.environ and os.path.isdir(_SHARED):
    os.environ["FEDREC_DATA_DIR"] = os.path.normpath(_SHARED)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

NUM_USERS = 943
SEED = 0
DIM = 64
LR = 0.5
BATCH = 8
SERVER_LR = 20.0
INIT_STD = 0.1
# fedmf's local training (MFClient._train with these settings)
LOCAL = {"seed": SEED, "lr": LR, "epochs": 1, "batch_size": BATCH, "negatives": 1, "reg": 0.0}

# key: (label, nodes column, default timeout s)
CONFIGS = {
    "local-1": ("fedrec local", "1 (cohort)", 600),
    "local-8": ("fedrec local", "8", 600),
    "raw": ("raw compute (no Flower)", "1 process", 600),
    "raw-synth10k": ("raw compute, 10,000 synthetic users", "1 process", 600),
    "ray-2": ("fedrec ray", "2", 600),
    "ray-8": ("fedrec ray", "8", 600),
    "flower": ("plain Flower (ray), dense FedAvg", "943 (1 per user)", 720),
    "ray-0": ("fedrec ray", "943 (1 per user)", 660),
    "local-synth10k": ("fedrec local, 10,000 synthetic users", "1 (cohort)", 600),
}
DEFAULT_KEYS = ["local-1", "local-8", "raw", "raw-synth10k", "ray-2", "ray-8", "flower", "ray-0"]


# =========================================================================== progress log
_PROGRESS: Path | None = None


def event(ev: str, **kw) -> None:
    """Append one timestamped event to the progress file (read back after a timeout)."""
    if _PROGRESS is None:
        return
    with open(_PROGRESS, "a") as f:
        f.write(json.dumps({"ev": ev, "t": time.time(), **kw}) + "\n")


# =========================================================================== fedrec
def fedrec_config(rounds: int, nodes: int) -> dict:
    return {
        "seed": SEED,
        "dataset.name": "ml-100k",
        "num-server-rounds": int(rounds),
        "partition.num-clients": NUM_USERS,
        "strategy.name": "fedmf",
        "strategy.params.users-per-client": 1,
        "strategy.params.dim": DIM,
        "strategy.params.server-lr": SERVER_LR,
        "train.lr": LR,
        "train.batch-size": BATCH,
        "train.local-epochs": 1,
        "runtime.num-nodes": int(nodes),
        "output.plots": False,
        "output.checkpoint": False,
        "output.client-metrics": False,
        "output.progress": False,
    }


def _instrument_fedmf() -> None:
    """Log round start, end of the train phase (after aggregate) and round end.

    fedrec's ServerApp runs in this process for both backends (local, and Ray via
    run_simulation), so patching the strategy class here sees every round."""
    from fedrec.strategies.fedmf import FedMF

    on_start, aggregate, on_end = FedMF.on_round_start, FedMF.aggregate, FedMF.on_round_end

    def on_round_start(self, server_round):
        event("round-start", round=server_round)
        return on_start(self, server_round)

    def agg(self, server_round, replies):
        out = aggregate(self, server_round, replies)
        event("train-end", round=server_round, loss=float(out[1]["train-loss"]))
        return out

    def on_round_end(self, server_round, record):
        event("round-end", round=server_round, wall_s=record.wall_s)
        return on_end(self, server_round, record)

    FedMF.on_round_start, FedMF.aggregate, FedMF.on_round_end = on_round_start, agg, on_round_end


def run_fedrec(
    backend: str,
    nodes: int,
    rounds: int,
    timeout: float,
    workdir: Path,
    synthetic_users: int | None = None,
) -> dict:
    import fedrec

    _instrument_fedmf()
    cfg = fedrec_config(rounds, nodes)
    cfg["runtime.timeout"] = float(timeout)
    if backend == "ray":
        cfg["runtime.client-num-cpus"] = 1.0
    if synthetic_users:
        cfg.update(
            {
                "dataset.name": "synthetic-rec",
                "partition.num-clients": synthetic_users,
                "dataset.options": f"num_users={synthetic_users}",
            }
        )
    out = workdir / f"fedrec-{backend}-{nodes}-{synthetic_users or 0}"
    try:
        s = fedrec.run(cfg, backend=backend, out=str(out), quiet=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "round_wall_s": list(s["round_wall_s"]),
        "fedrec_wall_s": s["wall_s"],
        "final_train_loss": s.get("final_train", {}).get("train-loss"),
        "ndcg@10": (s.get("final") or {}).get("global", s.get("final") or {}).get("ndcg@10"),
        "num_nodes": s.get("num_nodes"),
        "failures": s.get("failures"),
    }


# =========================================================================== raw compute
def run_raw(rounds: int, dataset: str = "ml-100k", options: str = "") -> dict:
    """fedrec's fedmf round without Flower: every user its own client (``client_id`` =
    user id), the client half's :func:`~fedrec.algorithms.fedmf.local_step` for all users
    in one call and the server half's :func:`~fedrec.algorithms.fedmf.sparse_server_step`
    over the per-client uploads."""
    import numpy as np

    from fedrec.algorithms import fedmf
    from fedrec.recsys.data import user_data

    _, ud = user_data(dataset, options)
    users = np.arange(ud.num_users)
    bounds = np.arange(ud.num_users + 1)  # client i owns user i
    P = np.concatenate([fedmf.init_users(SEED, int(u), 1, DIM, INIT_STD) for u in users])
    Q = fedmf.init_items(ud.num_items, DIM, INIT_STD, SEED)
    rounds_s, losses = [], []
    for rnd in range(1, rounds + 1):
        event("round-start", round=rnd)
        t0 = time.perf_counter()
        res = fedmf.local_step(ud, users, P, Q, rnd, **LOCAL)
        Q, _ = fedmf.sparse_server_step(Q, fedmf.client_uploads(res, bounds), SERVER_LR)
        P = res.P
        rounds_s.append(time.perf_counter() - t0)
        loss = float(np.nansum(res.losses[:, 0] * res.num_pos) / res.num_pos.sum())
        losses.append(loss)
        event("train-end", round=rnd, loss=loss)
        event("round-end", round=rnd, wall_s=rounds_s[-1])
    return {"round_wall_s": rounds_s, "train_loss": losses, "num_users": int(ud.num_users)}


# =========================================================================== plain Flower
# Module-level handler of an importable module (``bench_fedmf``), so Ray workers unpickle
# it by reference and their per-process data cache persists across messages.
def _train_handler(msg, context):
    """@app.train(): one user's local BPR epoch; replies with the dense item matrix."""
    import numpy as np
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from fedrec.algorithms import fedmf
    from fedrec.recsys.data import user_data

    u = int(context.node_config["partition-id"])
    rnd = int(msg.content["config"]["server-round"])
    Q = msg.content["arrays"].to_numpy_ndarrays()[0]
    if "P" not in context.state:  # private init, seeded like fedrec's MFClient (client u)
        context.state["P"] = ArrayRecord([fedmf.init_users(SEED, u, 1, DIM, INIT_STD)])
    P = context.state["P"].to_numpy_ndarrays()[0]
    _, ud = user_data("ml-100k")
    res = fedmf.local_step(ud, np.array([u]), P, Q, rnd, **LOCAL)
    context.state["P"] = ArrayRecord([res.P])
    rows = slice(int(res.indptr[0]), int(res.indptr[1]))  # this user's touched rows
    ids, deltas = res.item_ids[rows], res.item_deltas[rows]
    full = Q.copy()  # dense: the global rows plus this user's new copies of its rows
    full[ids] = Q[ids] + deltas
    loss = float(np.nan_to_num(res.losses[0, 0]))
    content = RecordDict(
        {
            "arrays": ArrayRecord([full]),
            "metrics": MetricRecord({"num-examples": int(res.num_pos[0]), "train-loss": loss}),
        }
    )
    return Message(content=content, reply_to=msg)


def _make_client_app():
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.train()(_train_handler)
    return app


def _make_server_app(rounds: int, timeout: float, result: dict):
    from flwr.app import ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from fedrec.algorithms import fedmf
    from fedrec.recsys.data import user_data

    class TimedFedAvg(FedAvg):
        """Flower's FedAvg; a round runs from configure_train to the end of aggregate_train."""

        def configure_train(self, server_round, arrays, config, grid):
            result.setdefault("t0", {})[server_round] = time.perf_counter()
            event("round-start", round=server_round)
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            out = super().aggregate_train(server_round, replies)
            t1 = time.perf_counter()
            result.setdefault("t1", {})[server_round] = t1
            loss = out[1]["train-loss"] if out[1] is not None else None
            result.setdefault("loss", {})[server_round] = loss
            event("train-end", round=server_round, loss=loss)
            event("round-end", round=server_round, wall_s=t1 - result["t0"][server_round])
            return out

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        _, ud = user_data("ml-100k")
        strategy = TimedFedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_available_nodes=NUM_USERS,
            min_train_nodes=NUM_USERS,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord([fedmf.init_items(ud.num_items, DIM, INIT_STD, SEED)]),
            num_rounds=rounds,
            timeout=timeout,
        )

    return app


def run_flower(rounds: int, timeout: float) -> dict:
    import warnings

    from flwr.simulation import run_simulation

    result: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(
            server_app=_make_server_app(rounds, timeout, result),
            client_app=_make_client_app(),
            num_supernodes=NUM_USERS,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
            },
            verbose_logging=False,
        )
    t0, t1 = result.get("t0", {}), result.get("t1", {})
    rs = [t1[r] - t0[r] for r in sorted(t1) if r in t0]
    if len(rs) != rounds:
        raise RuntimeError(f"only {len(rs)} of {rounds} rounds completed (see the log)")
    return {"round_wall_s": rs, "train_loss": [result["loss"][r] for r in sorted(t1)]}


# =========================================================================== single run
def single(key: str, rounds: int, timeout: float, result_path: Path) -> None:
    event("process-start")
    workdir = result_path.parent
    if key.startswith("local-") or key.startswith("ray-"):
        backend, nodes = key.split("-", 1)
        if nodes == "synth10k":
            res = run_fedrec(backend, 1, rounds, timeout, workdir, synthetic_users=10_000)
        else:
            res = run_fedrec(backend, int(nodes), rounds, timeout, workdir)
    elif key == "raw":
        res = run_raw(rounds)
    elif key == "raw-synth10k":
        res = run_raw(rounds, "synthetic-rec", "num_users=10000")
    elif key == "flower":
        res = run_flower(rounds, timeout)
    else:
        raise SystemExit(f"unknown configuration {key!r}")
    result_path.write_text(json.dumps(res))


# =========================================================================== driver
def _read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _rounds_from_events(evs: list[dict]) -> dict:
    """Per-round wall, train phase and loss from the progress events."""
    start = {e["round"]: e["t"] for e in evs if e["ev"] == "round-start"}
    train = {e["round"]: e["t"] for e in evs if e["ev"] == "train-end"}
    loss = {e["round"]: e.get("loss") for e in evs if e["ev"] == "train-end"}
    end = {e["round"]: e["wall_s"] for e in evs if e["ev"] == "round-end"}
    done = sorted(end)
    return {
        "round_wall_s": [end[r] for r in done],
        "train_phase_s": [train[r] - start[r] for r in done if r in train and r in start],
        "train_loss": [loss[r] for r in done if r in loss],
        "started": start,
        "t_process": next((e["t"] for e in evs if e["ev"] == "process-start"), None),
    }


def measure(key: str, rounds: int, timeout: float, workdir: Path) -> dict:
    result_path = workdir / f"{key}.json"
    log_path = workdir / f"{key}.log"
    prog_path = workdir / f"{key}.events"
    env = subprocess_env(FEDREC_BENCH_PROGRESS=str(prog_path))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--single",
        key,
        "--rounds",
        str(rounds),
        "--timeout",
        str(timeout),
        "--result",
        str(result_path),
    ]
    label, nodes, _ = CONFIGS[key]
    row: dict = {
        "key": key,
        "runtime": label,
        "nodes": nodes,
        "rounds": rounds,
        "timeout_s": timeout,
        "loadavg_1m_before": os.getloadavg()[0],
    }
    run = run_measured(
        cmd, env=env, cwd=workdir, log_path=log_path, result_path=result_path, timeout=timeout
    )
    row.update(run.measures())
    ev = _rounds_from_events(_read_events(prog_path))
    row["train_phase_s"] = ev["train_phase_s"]
    row["train_loss"] = ev["train_loss"]
    first_start = ev["started"].get(1)
    row["startup_s"] = None if first_start is None else first_start - run.t0_wall
    if run.result is not None:
        row.update({k: v for k, v in run.result.items() if k != "train_loss"})
    else:
        row["error"] = run.error
        row["round_wall_s"] = ev["round_wall_s"]  # the rounds it finished
        unfinished = [r for r in ev["started"] if r > len(ev["round_wall_s"])]
        if unfinished:
            r = min(unfinished)
            row["unfinished_round"] = r
            row["unfinished_round_running_s"] = (run.t0_wall + run.total_s) - ev["started"][r]
    rs = row.get("round_wall_s") or []
    tp = row["train_phase_s"]
    row["round1_s"] = rs[0] if rs else None
    row["later_median_s"] = statistics.median(rs[1:]) if len(rs) > 1 else None
    row["train_phase_median_s"] = statistics.median(tp[1:]) if len(tp) > 1 else None
    return row


def table(rows: list[dict]) -> str:
    out = [
        "| runtime | nodes | round s (median) | first round s | train phase s (median) "
        "| total s | peak RSS GiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        first = _f(r.get("round1_s"))
        if r.get("round1_s") is None and r.get("unfinished_round") == 1:
            first = f"> {_f(r['unfinished_round_running_s'], 0)} (unfinished)"
        med = _f(r.get("later_median_s"))
        if "error" in r:
            done = len(r.get("round_wall_s") or [])
            med = f"{med} ({r['error']}; {done} of {r['rounds']} rounds done)"
        out.append(
            f"| {r['runtime']} | {r['nodes']} | {med} | {first} | "
            f"{_f(r.get('train_phase_median_s'))} | {_f(r['total_s'], 1)} | "
            f"{_f(r['peak_rss_gib'])} |"
        )
    return "\n".join(out)


def ratios(rows: list[dict]) -> list[str]:
    by = {r["key"]: r for r in rows}

    def val(k, field):
        return (by.get(k) or {}).get(field)

    lines = []
    fl = val("flower", "later_median_s")
    for k in ("ray-0", "ray-8", "ray-2"):
        for field, what in (("later_median_s", "round"), ("train_phase_median_s", "train phase")):
            v = val(k, field)
            if v and fl:
                lines.append(
                    f"fedrec {k} / plain Flower ({what} vs Flower round): "
                    f"{v / fl:.3f} (goal <= 0.25)"
                )
    raw = val("raw", "later_median_s")
    for k in ("local-1", "local-8"):
        for field, what in (("later_median_s", "round"), ("train_phase_median_s", "train phase")):
            v = val(k, field)
            if v and raw:
                lines.append(f"fedrec {k} / raw ({what} vs raw round): {v / raw:.2f} (goal <= 2)")
    losses = {
        k: (r.get("train_loss") or [None])[0]
        for k, r in by.items()
        if k not in ("raw-synth10k", "local-synth10k")
    }
    if losses:
        lines.append(
            "round-1 train loss: "
            + ", ".join(f"{k} {v:.6f}" if v is not None else f"{k} -" for k, v in losses.items())
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write all measurements to this JSON file")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=list(CONFIGS),
        metavar="KEY",
        help=f"configurations to run, in this order (default: {' '.join(DEFAULT_KEYS)};"
        " also local-synth10k)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=1500.0,
        help="seconds for the whole sweep; each configuration's timeout is cut to "
        "what is left (default 1500)",
    )
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--single", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.single:
        # Run from the importable module (not __main__) so Ray workers unpickle the
        # plain-Flower handler by reference.
        import bench_fedmf

        if os.environ.get("FEDREC_BENCH_PROGRESS"):
            bench_fedmf._PROGRESS = Path(os.environ["FEDREC_BENCH_PROGRESS"])
        bench_fedmf.single(args.single, args.rounds, args.timeout, Path(args.result))
        return 0

    keys = args.only or DEFAULT_KEYS
    workdir = Path(tempfile.mkdtemp(prefix="fedrec-bench-fedmf-"))
    deadline = time.monotonic() + args.budget
    rows = []
    for key in keys:
        left = deadline - time.monotonic()
        timeout = min(CONFIGS[key][2], left)
        if timeout < 30:
            print(f"[bench] {key}: skipped (budget spent)", file=sys.stderr, flush=True)
            continue
        print(
            f"[bench] {key} ({CONFIGS[key][0]}, nodes {CONFIGS[key][1]}), timeout "
            f"{timeout:.0f} s ...",
            file=sys.stderr,
            flush=True,
        )
        row = measure(key, args.rounds, timeout, workdir)
        rows.append(row)
        rs = [round(x, 2) for x in row.get("round_wall_s") or []]
        print(
            f"[bench]   {row.get('error', 'ok')}: rounds {rs}, "
            f"train phase {[round(x, 2) for x in row['train_phase_s']]}, total "
            f"{row['total_s']:.1f} s, peak {row['peak_rss_gib']:.2f} GiB, loss "
            f"{row['train_loss']}, others used {_f(row['other_cores_mean'])} cores",
            file=sys.stderr,
            flush=True,
        )
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    print()
    for line in ratios(rows):
        print("* " + line)
    busy = [r for r in rows if (r.get("other_cores_mean") or 0) > 0.25]
    if busy:
        print(
            "\nshared machine: other processes used on average "
            + ", ".join(f"{r['other_cores_mean']:.1f} cores during {r['key']}" for r in busy)
            + " (of 2 cores); those timings are inflated."
        )
    failed = any("error" in r for r in rows)
    if failed or args.keep_logs:
        print(f"\nlogs: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(os.environ["FLWR_HOME"], ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

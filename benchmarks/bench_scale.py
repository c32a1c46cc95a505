#!/usr/bin/env python
"""Scaling benchmark: per-round time and peak memory vs. number of clients.

For each number of clients N and each runtime, one FedAvg experiment (Adult, iid
partition, logreg, 1 local epoch, batch 64, fraction 1.0, ``--rounds`` rounds) runs in
its own subprocess (``--single``) while this process samples the resident memory of
that subprocess and all its descendants (Ray's GCS, raylet, workers...) every 0.2 s
(``harness.py``, shared with ``bench_fedmf.py``).

Runtimes:

* ``local``  -- ``fedrec.run(..., backend="local")`` (in-process grid, no Ray);
* ``ray``    -- ``fedrec.run(..., backend="ray")``, one SuperNode per client,
  ``runtime.client-num-cpus=1`` (so 2 Ray actors on a 2-core machine);
* ``flower`` -- a plain-Flower reference written here: a Message-API ClientApp and
  Flower's built-in ``FedAvg`` run with ``flwr.simulation.run_simulation`` (same Ray
  resources), doing the same compute with fedrec's pure data/model/training functions;
* ``raw``    -- the same per-round work (train every client, FedAvg, evaluate every
  client) in one Python loop, no Flower: the compute floor.

Reported: round 1 (s), median of rounds 2..R (s), total wall time of the subprocess
(s, interpreter start to exit, so imports, Ray start-up and shutdown included) and the
peak summed RSS of the process tree (GiB; shared pages, e.g. Ray's object store, are
counted once per process that maps them, so this is an upper bound).

Usage::

    python benchmarks/bench_scale.py [--clients 10 100 1000] \
        [--backends local ray flower raw] [--rounds 3] [--json OUT.json]
"""

from __future__ import annotations

import os
import sys
import tempfile

# the measuring harness (this folder is sys.path[0], or on PYTHONPATH in the subprocesses)
from harness import fmt as _fmt
from harness import quiet_flower_env, run_measured, subprocess_env, wait_idle

quiet_flower_env()  # before flwr or ray is imported anywhere
# A private, temporary FLWR_HOME, made by the top-level run (its --single subprocesses
# and their Ray workers inherit it; importing this module creates nothing).
_OWN_FLWR_HOME = __name__ == "__main__" and "--single" not in sys.argv
if _OWN_FLWR_HOME:
    os.environ["FLWR_HOME"] = tempfile.mkdtemp(prefix="fedrec-bench-flwr-home-")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

RUNTIME_LABELS = {
    "local": "fedrec local",
    "ray": "fedrec ray",
    "flower": "plain Flower (ray)",
    "raw": "raw loop (no Flower)",
}


# =========================================================================== config
def base_config(num_clients: int, rounds: int) -> dict:
    """The flat fedrec config shared by every runtime (defaults for the rest)."""
    return {
        "dataset.name": "adult",
        "partition.scheme": "iid",
        "partition.num-clients": int(num_clients),
        "model.name": "logreg",
        "train.local-epochs": 1,
        "train.batch-size": 64,
        "num-server-rounds": int(rounds),
        "strategy.fraction-train": 1.0,
        "strategy.fraction-evaluate": 1.0,
        "output.plots": False,
        "output.checkpoint": False,
        "output.client-metrics": False,
        "output.progress": False,
    }


@functools.lru_cache(maxsize=4)
def run_config(num_clients: int, rounds: int = 3):
    from fedrec.config import validate

    return validate(base_config(num_clients, rounds))


# =========================================================================== shared compute
# The per-client work, identical to fedrec.clients.classification.ClassifierClient
# (fit / evaluate), built only from fedrec's pure functions.
_DATA: dict[tuple[int, int], object] = {}


def client_data(num_clients: int, pid: int):
    """Client ``pid``'s data, cached per process (as fedrec does in its actors)."""
    from fedrec.tasks import load_client_data

    key = (num_clients, pid)
    if key not in _DATA:
        _DATA[key] = load_client_data(run_config(num_clients), pid)
    return _DATA[key]


def _model(cfg, data, weights):
    from fedrec.clients.classification import initial_model
    from fedrec.models import set_weights

    m = initial_model(cfg, data.num_features, data.num_classes)
    set_weights(m, weights)
    return m


def client_fit(num_clients: int, pid: int, server_round: int, weights):
    """Local training: returns (new weights, num examples, mean train loss)."""
    from fedrec.models import get_weights
    from fedrec.seeding import derive_seed
    from fedrec.training import train_classifier

    cfg, d = run_config(num_clients), client_data(num_clients, pid)
    t = cfg.train
    model = _model(cfg, d, weights)
    res = train_classifier(
        model,
        d.X_train,
        d.y_train,
        epochs=t.local_epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        optimizer=t.optimizer,
        weight_decay=t.weight_decay,
        seed=derive_seed(cfg.seed, "train", server_round, pid),
    )
    return get_weights(model), int(res.num_examples), float(res.loss)


def client_evaluate(num_clients: int, pid: int, weights) -> dict:
    """Confusion counts and summed log loss on the client's test split."""
    import numpy as np

    from fedrec.metrics import confusion_counts
    from fedrec.training import predict_proba

    cfg, d = run_config(num_clients), client_data(num_clients, pid)
    proba = predict_proba(_model(cfg, d, weights), d.X_test)
    pred = proba.argmax(axis=1)
    loss_sum = float(-np.log(np.clip(proba[np.arange(len(d.y_test)), d.y_test], 1e-12, 1.0)).sum())
    counts = confusion_counts(d.y_test, pred, d.a_test, d.num_classes, d.num_groups)
    return {
        "num-examples": int(len(d.y_test)),
        "loss-sum": loss_sum,
        "counts": [int(c) for c in counts.ravel()],
        "num-groups": int(d.num_groups),
        "num-classes": int(d.num_classes),
    }


def initial_weights(num_clients: int):
    from fedrec.clients.classification import initial_model
    from fedrec.models import get_weights
    from fedrec.tasks import load_task_dataset

    cfg = run_config(num_clients)
    ds = load_task_dataset(cfg)
    return get_weights(initial_model(cfg, ds.num_features, ds.num_classes))


# =========================================================================== plain Flower
# Defined at module level of an importable module (``bench_scale``), so Ray workers
# unpickle the handlers by reference and their per-process data cache persists.
def _train_handler(msg, context):
    """@app.train(): FedAvg's train message -> updated arrays + num-examples."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    n = int(msg.content["config"]["num-clients"])
    rnd = int(msg.content["config"]["server-round"])
    pid = int(context.node_config["partition-id"])
    weights = msg.content["arrays"].to_numpy_ndarrays()
    new_w, num_examples, loss = client_fit(n, pid, rnd, weights)
    content = RecordDict(
        {
            "arrays": ArrayRecord(new_w),
            "metrics": MetricRecord({"num-examples": num_examples, "train-loss": loss}),
        }
    )
    return Message(content=content, reply_to=msg)


def _evaluate_handler(msg, context):
    """@app.evaluate(): confusion counts etc., with num-examples for FedAvg's weighting."""
    from flwr.app import Message, MetricRecord, RecordDict

    n = int(msg.content["config"]["num-clients"])
    pid = int(context.node_config["partition-id"])
    weights = msg.content["arrays"].to_numpy_ndarrays()
    metrics = client_evaluate(n, pid, weights)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _make_client_app():
    """A Message-API ClientApp with the two module-level handlers above (module-level
    functions, as in a normal Flower app, so Ray pickles them by reference)."""
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.train()(_train_handler)
    app.evaluate()(_evaluate_handler)
    return app


_ROUND_T0: dict[int, float] = {}
_ROUND_T1: dict[int, float] = {}


def _make_server_app(num_clients: int, rounds: int, timeout: float, result: dict):
    from flwr.app import ArrayRecord, ConfigRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    class TimedFedAvg(FedAvg):
        """Flower's FedAvg; a round runs from configure_train to aggregate_evaluate."""

        def configure_train(self, server_round, arrays, config, grid):
            _ROUND_T0[server_round] = time.perf_counter()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_evaluate(self, server_round, replies):
            out = super().aggregate_evaluate(server_round, replies)
            _ROUND_T1[server_round] = time.perf_counter()
            return out

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        n = num_clients
        strategy = TimedFedAvg(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_available_nodes=n,
            min_train_nodes=n,
            min_evaluate_nodes=n,
        )
        res = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial_weights(n)),
            num_rounds=rounds,
            timeout=timeout,
            train_config=ConfigRecord({"num-clients": n}),
            evaluate_config=ConfigRecord({"num-clients": n}),
        )
        last = res.train_metrics_clientapp.get(rounds)
        result["train_loss"] = float(last["train-loss"]) if last else None
        result["rounds_done"] = len(res.train_metrics_clientapp)

    return app


def run_flower(num_clients: int, rounds: int, timeout: float) -> dict:
    import warnings

    from flwr.simulation import run_simulation

    result: dict = {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(
            server_app=_make_server_app(num_clients, rounds, timeout, result),
            client_app=_make_client_app(),
            num_supernodes=num_clients,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "include_dashboard": False},
            },
            verbose_logging=False,
        )
    wall = time.perf_counter() - t0
    rounds_s = [_ROUND_T1[r] - _ROUND_T0[r] for r in sorted(_ROUND_T1) if r in _ROUND_T0]
    if len(rounds_s) != rounds:
        raise RuntimeError(
            f"only {len(rounds_s)} of {rounds} rounds completed (see the ServerApp log)"
        )
    return {"round_wall_s": rounds_s, "run_s": wall, "train_loss": result.get("train_loss")}


# =========================================================================== raw loop
def run_raw(num_clients: int, rounds: int) -> dict:
    from fedrec.strategies.fedavg import weighted_average

    t0 = time.perf_counter()
    for pid in range(num_clients):  # like fedrec's handshake: data is loaded up front
        client_data(num_clients, pid)
    weights = initial_weights(num_clients)
    rounds_s, loss = [], None
    for rnd in range(1, rounds + 1):
        r0 = time.perf_counter()
        fits = [client_fit(num_clients, pid, rnd, weights) for pid in range(num_clients)]
        n = [f[1] for f in fits]
        weights = weighted_average([f[0] for f in fits], n)
        loss = sum(f[2] * k for f, k in zip(fits, n)) / sum(n)
        evals = [client_evaluate(num_clients, pid, weights) for pid in range(num_clients)]
        assert len(evals) == num_clients
        rounds_s.append(time.perf_counter() - r0)
    return {"round_wall_s": rounds_s, "run_s": time.perf_counter() - t0, "train_loss": loss}


# =========================================================================== fedrec
def run_fedrec(backend: str, num_clients: int, rounds: int, timeout: float, workdir: Path) -> dict:
    import fedrec

    cfg = base_config(num_clients, rounds)
    cfg["runtime.timeout"] = float(timeout)
    if backend == "ray":
        cfg.update({"runtime.num-nodes": 0, "runtime.client-num-cpus": 1.0})
    out = workdir / f"fedrec-{backend}-{num_clients}"
    t0 = time.perf_counter()
    try:
        s = fedrec.run(cfg, backend=backend, out=str(out), quiet=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "round_wall_s": list(s["round_wall_s"]),
        "run_s": time.perf_counter() - t0,
        "fedrec_wall_s": s["wall_s"],
        "train_loss": s.get("final_train", {}).get("train-loss"),
        "accuracy": s.get("final", {}).get("global", {}).get("accuracy"),
        "failures": s.get("failures"),
        "num_clients": s["num_clients"],
    }


def single(backend: str, num_clients: int, rounds: int, timeout: float, result_path: Path) -> None:
    """Run one configuration in this process and write its measurements as JSON."""
    if backend in ("local", "ray"):
        res = run_fedrec(backend, num_clients, rounds, timeout, result_path.parent)
    elif backend == "flower":
        res = run_flower(num_clients, rounds, timeout)
    elif backend == "raw":
        res = run_raw(num_clients, rounds)
    else:
        raise SystemExit(f"unknown backend {backend!r}")
    result_path.write_text(json.dumps(res))


# =========================================================================== driver
def measure(
    backend: str,
    num_clients: int,
    rounds: int,
    timeout: float,
    workdir: Path,
    max_wait: float = 0.0,
) -> dict:
    """Run one configuration in a fresh subprocess; return its row."""
    tag = f"{backend}-{num_clients}"
    result_path = workdir / f"{tag}.json"
    log_path = workdir / f"{tag}.log"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--single",
        backend,
        str(num_clients),
        "--rounds",
        str(rounds),
        "--timeout",
        str(timeout),
        "--result",
        str(result_path),
    ]
    idle = wait_idle(max_wait) if max_wait > 0 else None
    row = {
        "clients": num_clients,
        "runtime": backend,
        "rounds": rounds,
        "other_cores_before": idle,
        "loadavg_1m_before": os.getloadavg()[0],
    }
    run = run_measured(
        cmd,
        env=subprocess_env(),
        cwd=workdir,
        log_path=log_path,
        result_path=result_path,
        timeout=timeout,
    )
    row.update(run.measures())
    if run.error is not None:
        row["error"] = run.error
        return row
    res = run.result
    rs = res["round_wall_s"]
    row.update(
        res,
        round1_s=rs[0] if rs else math.nan,
        later_median_s=statistics.median(rs[1:]) if len(rs) > 1 else math.nan,
    )
    return row


def table(rows: list[dict]) -> str:
    out = [
        "| clients | runtime | round 1 s | median later round s | total s | peak RSS GiB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        label = RUNTIME_LABELS.get(r["runtime"], r["runtime"])
        if "error" in r:
            out.append(
                f"| {r['clients']} | {label} | failed ({r['error']}) | | "
                f"{_fmt(r['total_s'], 1)} | {_fmt(r['peak_rss_gib'])} |"
            )
        else:
            out.append(
                f"| {r['clients']} | {label} | {_fmt(r['round1_s'])} | "
                f"{_fmt(r['later_median_s'])} | {_fmt(r['total_s'], 1)} | "
                f"{_fmt(r['peak_rss_gib'])} |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument(
        "--backends",
        nargs="+",
        default=["local", "ray", "flower", "raw"],
        choices=["local", "ray", "flower", "raw"],
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds per configuration before it is killed (default 900)",
    )
    ap.add_argument("--json", help="also write all measurements to this JSON file")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=300.0,
        metavar="S",
        help="before each configuration wait up to S seconds until other "
        "processes use < 0.3 cores (0 = don't wait; default 300)",
    )
    ap.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the per-run logs (kept anyway when a run fails)",
    )
    ap.add_argument("--single", nargs=2, metavar=("BACKEND", "CLIENTS"), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.single:
        # Run from the importable module (not __main__) so Ray workers unpickle the
        # plain-Flower ClientApp handlers by reference.
        import bench_scale

        bench_scale.single(
            args.single[0], int(args.single[1]), args.rounds, args.timeout, Path(args.result)
        )
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="fedrec-bench-"))
    rows = []
    for n in args.clients:
        for b in args.backends:
            print(f"[bench] {RUNTIME_LABELS[b]}, {n} clients ...", file=sys.stderr, flush=True)
            row = measure(b, n, args.rounds, args.timeout, workdir, args.wait_idle)
            rows.append(row)
            other = row.get("other_cores_mean")
            msg = row.get("error") or (
                f"round1 {row['round1_s']:.2f}s, later "
                f"{row['later_median_s']:.2f}s, total "
                f"{row['total_s']:.1f}s, peak "
                f"{row['peak_rss_gib']:.2f} GiB, train-loss "
                f"{row.get('train_loss')}, others used "
                f"{other if other is None else round(other, 2)} cores"
            )
            print(f"[bench]   {msg}", file=sys.stderr, flush=True)
            if args.json:  # written as we go, so a long sweep leaves partial results
                Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    busy = [r for r in rows if (r.get("other_cores_mean") or 0) > 0.25]
    if busy:
        print(
            "\nshared machine: other processes used on average "
            + ", ".join(
                f"{r['other_cores_mean']:.1f} cores during {r['runtime']}/{r['clients']}"
                for r in busy
            )
            + " (of 2); those timings are inflated."
        )
    failed = any("error" in r for r in rows)
    if failed or args.keep_logs:
        print(f"\nlogs: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if _OWN_FLWR_HOME:
        shutil.rmtree(os.environ["FLWR_HOME"], ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

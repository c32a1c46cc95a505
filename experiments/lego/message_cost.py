"""Framework cost of one LEGO message at 943 per-user clients on one node (ML-100K).

Runs ``lego_ml100k.toml`` (``users-per-client = 1``, ``runtime.num-nodes = 1``) with one
FedMF round and a short LEGO schedule (the per-message cost does not depend on the
schedule's length), and times every ``query.lego_*`` message three ways:

- ``total``: end to end on the server (:meth:`FedrecStrategy.communicate`: build the
  messages, the in-process transport, the ClientApp, unpack the replies);
- ``app``: inside the ClientApp (:func:`fedrec.clients.app.handle`: state load/save,
  config and reply (de)serialisation, the client half);
- ``half``: inside :meth:`LegoClient.handle_cohort` (the client half: the LEGO maths on
  all 943 clients, loading and writing their state columns, building the replies).

The framework cost of a message is ``total - half``. Part of it is proportional to the
reply's size rather than to the number of clients: ``ser`` is the time the ClientApp
spends turning numpy arrays into Flower ``Array`` records (the reply and the node
state), ``unpack`` the server's :meth:`FedrecStrategy.unpack` (``Array`` -> numpy and the
split into per-client replies); ``reply MB`` is the size of the reply's arrays. Usage::

    FEDREC_DATA_DIR=../shared/data python experiments/lego/message_cost.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    import fedrec
    from fedrec.clients import app as client_app
    from fedrec.clients.lego import LegoClient
    from fedrec.config import load_toml
    from fedrec.strategies.base import FedrecStrategy

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the timings here")
    args = ap.parse_args(argv)

    times: dict[str, list[dict[str, float]]] = defaultdict(list)
    current: dict[str, float] = {}
    comm, handle, half = FedrecStrategy.communicate, client_app.handle, LegoClient.handle_cohort
    array_record, unpack = client_app._array_record, FedrecStrategy.unpack

    def add(key: str, t0: float) -> None:
        current[key] = current.get(key, 0.0) + time.perf_counter() - t0

    def timed_array_record(arrays):
        t0 = time.perf_counter()
        out = array_record(arrays)
        add("ser", t0)
        if "clients" in arrays:  # the reply (the state has no client column)
            current["reply_mb"] = sum(np.asarray(v).nbytes for v in arrays.values()) / 1e6
        return out

    def timed_unpack(self, replies):
        t0 = time.perf_counter()
        out = unpack(self, replies)
        add("unpack", t0)
        return out

    def timed_communicate(self, grid, message_type, *a, **kw):
        if not message_type.startswith("query.lego_"):
            return comm(self, grid, message_type, *a, **kw)
        current.clear()
        t0 = time.perf_counter()
        out = comm(self, grid, message_type, *a, **kw)
        times[message_type].append({"total": time.perf_counter() - t0, **current})
        return out

    def timed_handle(message, context):
        t0 = time.perf_counter()
        out = handle(message, context)
        add("app", t0)
        return out

    def timed_half(cls, *a, **kw):
        t0 = time.perf_counter()
        out = half.__func__(cls, *a, **kw)
        add("half", t0)
        return out

    FedrecStrategy.communicate, FedrecStrategy.unpack = timed_communicate, timed_unpack
    client_app.handle, client_app._array_record = timed_handle, timed_array_record
    LegoClient.handle_cohort = classmethod(timed_half)
    overrides = {
        "num-server-rounds": 1,
        "runtime.num-nodes": 1,
        "strategy.params.users-per-client": 1,
        "partition.num-clients": 943,
        "strategy.params.attributes": "gender,age_bucket",
        "strategy.params.add-attributes": "",
        "strategy.params.release-embeddings": False,
        "strategy.params.steps": 6,
        "strategy.params.n-phi": 1,
        "strategy.params.warmup-phi": 2,
        "strategy.params.combine-steps": 2,
    }
    cfg = {**load_toml(HERE / "lego_ml100k.toml"), **overrides}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fedrec.run(cfg, backend="local", out=args.out or Path(tmp) / "run", quiet=True)
        wall = time.perf_counter() - t0
    FedrecStrategy.communicate, FedrecStrategy.unpack = comm, unpack
    client_app.handle, client_app._array_record = handle, array_record
    LegoClient.handle_cohort = half

    rows = {}
    print(
        f"{'message':<22} {'n':>3} {'reply MB':>8} {'total s':>8} {'half s':>7} "
        f"{'framework s':>11} {'ser s':>6} {'unpack s':>8} {'rest s':>7}"
    )
    for mtype, ts in sorted(times.items()):
        col = {
            k: np.array([t.get(k, 0.0) for t in ts])
            for k in ("total", "half", "app", "ser", "unpack", "reply_mb")
        }
        fw = col["total"] - col["half"]
        rows[mtype] = {
            "messages": len(ts),
            "reply_mb": float(np.median(col["reply_mb"])),
            "total_s": float(np.median(col["total"])),
            "half_s": float(np.median(col["half"])),
            "clientapp_overhead_s": float(np.median(col["app"] - col["half"])),
            "framework_s": float(np.median(fw)),
            "framework_max_s": float(fw.max()),
            "serialise_s": float(np.median(col["ser"])),
            "unpack_s": float(np.median(col["unpack"])),
            "rest_s": float(np.median(fw - col["ser"] - col["unpack"])),
        }
        r = rows[mtype]
        print(
            f"{mtype:<22} {len(ts):>3} {r['reply_mb']:>8.1f} {r['total_s']:>8.3f} "
            f"{r['half_s']:>7.3f} {r['framework_s']:>11.3f} {r['serialise_s']:>6.3f} "
            f"{r['unpack_s']:>8.3f} {r['rest_s']:>7.3f}"
        )
    print(f"(medians over the messages; whole run {wall:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"run_s": wall, "messages": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

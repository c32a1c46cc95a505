"""Callbacks: progress display, JSONL reporter, checkpoints (pure, no flwr).

A callback gets the strategy and the round records; it never changes the
training. Write your own by subclassing :class:`Callback` and passing it to the
strategy (``callbacks=[...]``) — no need to copy the round loop.

``rounds.jsonl`` has one JSON object per line and per (round, scope):
``{"round": r, "scope": "global", ...}`` (metrics from pooled counts, plus the
aggregated train metrics and ``local_*`` max/mean over clients),
``{"round": r, "scope": "client", "client": c, ...}`` and
``{"round": r, "scope": "group", "group": a, ...}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np


class Callback:
    """Hooks called by ``FedrecStrategy.start``."""

    def on_run_start(self, strategy: Any, info: dict[str, Any]) -> None: ...

    def on_round_start(self, strategy: Any, server_round: int) -> None: ...

    def on_round_end(self, strategy: Any, record: Any) -> None: ...

    def on_run_end(self, strategy: Any, history: list[Any]) -> None: ...


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.ndarray):
        return _clean(v.tolist())
    return v


def round_rows(record: Any, client_rows: bool = True) -> list[dict[str, Any]]:
    """The rounds.jsonl rows of one round record."""
    rnd = record.server_round
    g: dict[str, Any] = {
        "round": rnd,
        "scope": "global",
        "wall_s": record.wall_s,
        "num_sampled": len(record.sampled),
        "failures": len(record.failures),
    }
    g.update({f"train_{k.replace('-', '_')}": v for k, v in record.train.items()})
    rows = [g]
    ev = record.evaluation
    if ev is not None:
        g.update(ev.overall)
        g.update(ev.local)
        if client_rows:
            for c in sorted(ev.by_client):
                row = {"round": rnd, "scope": "client", "client": int(c), **ev.by_client[c]}
                tr = record.train_by_client.get(c)
                if tr and "train-loss" in tr:
                    row["train_loss"] = tr["train-loss"]
                rows.append(row)
        for a, gm in enumerate(ev.by_group):
            rows.append({"round": rnd, "scope": "group", "group": a, **gm})
    g.update(record.extra)
    return [_clean(r) for r in rows]


class JsonlReporter(Callback):
    """Appends one line per round and scope to ``path`` (flushed every round). With
    ``resume_after = R`` (a resumed run) the rows of rounds up to ``R`` are kept and later
    ones (written after the checkpoint the run resumes from) dropped."""

    def __init__(self, path: str | Path, client_rows: bool = True, resume_after: int = 0):
        self.path = Path(path)
        self.client_rows = client_rows
        kept = ""
        if resume_after and self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)
            kept = "".join(
                x for x in lines if x.endswith("\n") and json.loads(x)["round"] <= resume_after
            )
        self.path.write_text(kept)

    def on_round_end(self, strategy, record) -> None:
        with self.path.open("a") as fh:
            for row in round_rows(record, self.client_rows):
                fh.write(json.dumps(row, sort_keys=True) + "\n")


class PartitionReportWriter(Callback):
    """Writes the handshake's partition report to ``partition.json``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_run_start(self, strategy, info) -> None:
        self.path.write_text(json.dumps(_clean(info["partition_report"]), indent=1))


class Checkpoint(Callback):
    """Saves, after every round, the global weights (``w0, w1, ...``), the round number and
    the strategy's declared server state (``server-state`` skeleton + ``s.*`` arrays, see
    :mod:`fedrec.checkpoint`); :func:`load_checkpoint` reads it back."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_round_end(self, strategy, record) -> None:
        from fedrec.checkpoint import pack_state

        weights = strategy.result.arrays.to_numpy_ndarrays()
        skeleton, arrays = pack_state(strategy.server_state())
        # the round history a resumed run's summary needs: wall time and failures of every
        # round, and the whole last record (its metrics are the run's final ones)
        rounds = [
            {"round": r.server_round, "wall_s": r.wall_s, "failures": list(r.failures)}
            for r in strategy.history
        ]
        last_skeleton, last_arrays = pack_state(record)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            allow_pickle=True,  # numpy's default, spelled out so mypy does not match **arrays to it
            server_round=np.int64(record.server_round),
            **{"server-state": np.asarray(skeleton)},
            **{"history": np.asarray(json.dumps(rounds))},
            **{"last-record": np.asarray(last_skeleton)},
            **{f"w{i}": w for i, w in enumerate(weights)},
            **{f"s.{k}": v for k, v in arrays.items()},
            **{f"h.{k}": v for k, v in last_arrays.items()},
        )
        tmp.replace(self.path)


def load_checkpoint(path: str | Path) -> tuple[int, list[np.ndarray], dict]:
    """``(server_round, weights, server_state)`` of a :class:`Checkpoint` file."""
    from fedrec.checkpoint import unpack_state

    with np.load(Path(path), allow_pickle=False) as z:
        weights = [
            z[f"w{i}"] for i in range(sum(1 for k in z.files if k[1:].isdigit() and k[0] == "w"))
        ]
        state = {}
        if "server-state" in z.files:
            state = unpack_state(
                str(z["server-state"]), {k[2:]: z[k] for k in z.files if k.startswith("s.")}
            )
        return int(z["server_round"]), weights, state


def load_history(path: str | Path) -> list[Any]:
    """The round records of a :class:`Checkpoint` file: the last one whole, the earlier
    ones with their round, wall time and failures (what a run's summary reads)."""
    from fedrec.checkpoint import unpack_state

    with np.load(Path(path), allow_pickle=False) as z:
        if "last-record" not in z.files:
            raise ValueError(f"checkpoint '{path}' has no round history (an older fedrec)")
        last = unpack_state(
            str(z["last-record"]), {k[2:]: z[k] for k in z.files if k.startswith("h.")}
        )
        rounds = json.loads(str(z["history"]))
    out = [
        dataclasses.replace(
            last,
            server_round=r["round"],
            train={},
            train_by_client={},
            evaluation=None,
            sampled=[],
            failures=r["failures"],
            wall_s=r["wall_s"],
            extra={},
        )
        for r in rounds[:-1]
    ]
    return [*out, last]


def load_weights(path: str | Path) -> list[np.ndarray]:
    """The model weights of a :class:`Checkpoint` file or of a plain ``numpy.savez`` of the
    arrays in order (``arr_0, arr_1, ...``: the unlearning and U2A traces)."""
    with np.load(Path(path), allow_pickle=False) as z:
        if "server_round" in z.files:
            return load_checkpoint(path)[1]
        n = sum(1 for k in z.files if k.startswith("arr_"))
        return [z[f"arr_{i}"] for i in range(n)]


class Progress(Callback):
    """A progress bar over rounds showing the latest global metrics."""

    def __init__(self, keys: tuple[str, ...] = ("accuracy", "dp_gap", "dp_gap_local_max")):
        self.keys = keys
        self.bar = None

    def on_run_start(self, strategy, info) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=info["num_rounds"],
            desc=f"{strategy.name} rounds",
            unit="round",
            leave=True,
            dynamic_ncols=True,
        )

    def on_round_end(self, strategy, record) -> None:
        if self.bar is None:
            return
        post = {}
        if record.evaluation is not None:
            merged = {**record.evaluation.overall, **record.evaluation.local}
            post = {k: f"{merged[k]:.4f}" for k in self.keys if k in merged}
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def on_run_end(self, strategy, history) -> None:
        if self.bar is not None:
            self.bar.close()

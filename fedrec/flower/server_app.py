"""The fedrec ServerApp: resolve the strategy, run it, write the run outputs.

``app`` reads the experiment from ``context.run_config`` (``flwr run``: the
``[tool.flwr.app.config]`` keys plus ``--run-config`` overrides). The ``local`` and
``ray`` runtimes call :func:`execute` (or :func:`make_server_app`) with the validated
config directly, because Flower's ``run_simulation`` leaves ``run_config`` empty.

Outputs are written to ``<dir>.incomplete`` and renamed to ``<dir>`` only when the
run succeeds, so a failed run leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.callbacks import Checkpoint, JsonlReporter, PartitionReportWriter, Progress, _clean
from fedrec.config import RunConfig, validate
from fedrec.plugins import load_strategy
from fedrec.tracking import build_callbacks


def default_out_dir(cfg: RunConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.strategy.name.replace(":", "_").replace(".", "_")
    return str(Path("runs") / f"{name}-{cfg.dataset.name}-{stamp}")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("fedrec", "flwr", "torch", "numpy", "scipy", "ray"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def build_summary(cfg: RunConfig, strategy, wall_s: float) -> dict:
    last = strategy.history[-1] if strategy.history else None
    ev = last.evaluation if last else None
    return _clean(
        {
            "strategy": cfg.strategy.name,
            "dataset": cfg.dataset.name,
            "backend": cfg.runtime.backend,
            "seed": cfg.seed,
            "num_rounds": len(strategy.history),
            "num_clients": len(strategy.client_ids),
            "num_nodes": len(set(strategy.node_of.values())),
            "wall_s": wall_s,
            "round_wall_s": [r.wall_s for r in strategy.history],
            "failures": sum(len(r.failures) for r in strategy.history),
            "final": {"global": ev.overall if ev else {}, "local": ev.local if ev else {}},
            "final_by_group": ev.by_group if ev else [],
            "final_by_client": ev.by_client if ev else {},
            "final_train": last.train if last else {},
            "versions": versions(),
            "command": " ".join(sys.argv),
        }
    )


def write_predictions(path: Path, predictions: dict) -> None:
    """predictions.csv: client, row, label, group, prediction (sorted by client)."""
    with path.open("w") as fh:
        fh.write("client,row,label,group,prediction\n")
        for c in sorted(predictions):
            p = predictions[c]
            for i, (y, a, yhat) in enumerate(
                zip(p["pred-label"], p["pred-group"], p["pred-value"])
            ):
                fh.write(f"{c},{i},{int(y)},{int(a)},{int(yhat)}\n")


def execute(grid: Grid, cfg: RunConfig, out_dir: str | None = None) -> dict:
    """Run ``cfg``'s strategy on ``grid`` and write the outputs; returns the summary."""
    strategy_cls = load_strategy(cfg.strategy.name)
    params = strategy_cls.parse_params(cfg)
    final = Path(out_dir or cfg.output.dir or default_out_dir(cfg))
    stage = final.with_name(final.name + ".incomplete")
    resume_after = 0
    if cfg.output.resume:  # `fedrec run --resume`: continue in the kept folder
        from fedrec.callbacks import load_checkpoint

        resume_after = load_checkpoint(stage / "checkpoint.npz")[0]
    else:
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
    try:
        if not cfg.output.resume:
            (stage / "config.json").write_text(cfg.to_json() + "\n")
        callbacks = [
            PartitionReportWriter(stage / "partition.json"),
            JsonlReporter(stage / "rounds.jsonl", cfg.output.client_metrics, resume_after),
        ]
        if cfg.output.checkpoint:
            callbacks.append(Checkpoint(stage / "checkpoint.npz"))
        if cfg.output.progress:
            callbacks.append(Progress(strategy_cls.progress_keys))
        callbacks.extend(build_callbacks(cfg, stage))
        strategy = strategy_cls(cfg, params, callbacks=callbacks)
        strategy.stage_dir = stage
        t0 = time.perf_counter()
        strategy.start(grid)
        summary = build_summary(cfg, strategy, time.perf_counter() - t0)
        strategy.write_outputs(stage)
        if strategy.defense is not None:
            strategy.defense.write(stage)
        if strategy.privacy is not None:
            summary["privacy"] = _clean(strategy.privacy.summary())
        if strategy.unlearning is not None:
            strategy.unlearning.write_outputs(stage)
            summary["unlearning"] = _clean(strategy.unlearning.served)
        if strategy.predictions:
            write_predictions(stage / "predictions.csv", strategy.predictions)
        (stage / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        if cfg.output.plots:
            from fedrec.report import plot_run

            plot_run(stage)
    except BaseException as exc:
        # a run with a checkpoint can be resumed: keep it when interrupted (Ctrl-C) or when
        # it is itself a resumed run; anything else leaves nothing that looks finished
        resumable = (stage / "checkpoint.npz").exists() and (
            isinstance(exc, KeyboardInterrupt) or cfg.output.resume
        )
        if resumable:
            print(
                f"fedrec: the unfinished run is kept in {stage}; continue it with "
                f"`fedrec run --resume {final}`",
                file=sys.stderr,
            )
        else:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    stage.rename(final)
    return summary


def make_server_app(
    cfg: RunConfig | None = None,
    out_dir: str | None = None,
    errors: list[BaseException] | None = None,
) -> ServerApp:
    """A ServerApp bound to ``cfg`` (or reading ``context.run_config`` when None).

    Exceptions are also appended to ``errors`` so an in-process caller can re-raise
    them (Flower's simulation only logs them)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            execute(grid, cfg if cfg is not None else validate(dict(context.run_config)), out_dir)
        except BaseException as exc:
            if errors is not None:
                errors.append(exc)
            raise

    return server


app = make_server_app()

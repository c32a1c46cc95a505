"""Tracking callbacks: TensorBoard, MLflow, Weights & Biases, plugins (pure, no flwr).

``output.callbacks`` (comma-separated) adds callbacks to a run besides the built-in
``rounds.jsonl`` reporter, which stays the source of truth:

* ``tensorboard``: event files in ``<run dir>/tensorboard/``; every numeric global-scope
  key of :func:`fedrec.callbacks.round_rows` as a scalar (tag ``<section>/<key>``, the
  sections of :mod:`fedrec.report_html`) at step = round, the config as text. Needs the
  ``tensorboard`` package (``pip install "fedrec[tracking]"``).
* ``mlflow``: a local file store ``<run dir>/mlruns`` (no server, no database; recent
  MLflow needs ``MLFLOW_ALLOW_FILE_STORE=true`` for it, which the callback sets unless it is
  set already), experiment ``fedrec``, the config as parameters, the metrics per round
  (``@`` in a name becomes ``_at_``: ``ndcg_at_10``). Needs ``mlflow``.
* ``wandb``: an offline Weights & Biases run under ``<run dir>/wandb`` (upload it later
  with ``wandb sync``). Needs ``wandb``.
* a name registered in the entry-point group ``fedrec.callbacks`` (the built-ins register
  there too), or a dotted path ``package.module:Class``.

A callback class subclasses :class:`fedrec.callbacks.Callback`; it is constructed as
``Class(cfg, run_dir)`` (the validated :class:`~fedrec.config.RunConfig` and the run's
output folder) or, when its constructor takes no arguments, ``Class()``. Names are checked
before a run starts (:func:`check_callbacks`, called by ``fedrec.runner.preflight``).

Example (a 2-round run logged to TensorBoard, then viewed)::

    fedrec run --backend local --out /tmp/tb -c num-server-rounds=2 \\
        -c output.callbacks=tensorboard --quiet
    tensorboard --logdir /tmp/tb/tensorboard

A third-party callback (``myco.track:Slack`` in its ``pyproject.toml``)::

    [project.entry-points."fedrec.callbacks"]
    slack = "myco.track:Slack"

then ``-c output.callbacks=tensorboard,slack`` (or ``-c output.callbacks=myco.track:Slack``
without registering it).
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

from fedrec.callbacks import Callback, round_rows
from fedrec.errors import ConfigError, FedrecError

GROUP = "fedrec.callbacks"
# Built-in callbacks: found here even when the package's entry points are not installed.
BUILTINS = {
    "tensorboard": "fedrec.tracking:TensorBoardCallback",
    "mlflow": "fedrec.tracking:MlflowCallback",
    "wandb": "fedrec.tracking:WandbCallback",
}


def _is_number(v: Any) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def global_scalars(record: Any) -> dict[str, float]:
    """The numeric global-scope keys of a round record (``round`` excluded)."""
    row = round_rows(record, client_rows=False)[0]
    return {k: float(v) for k, v in row.items() if k != "round" and _is_number(v)}


def _tag(key: str) -> str:
    from fedrec.report_html import metric_section

    return f"{metric_section(key)}/{key}"


def _default_config() -> dict[str, Any]:
    from fedrec.config import all_keys

    return {k: d["default"] for k, d in all_keys().items()}


class TrackingCallback(Callback):
    """Base of the built-in tracking callbacks: the config, the run folder and the name of
    the run (the output folder's name, without the ``.incomplete`` of a running run)."""

    #: ``(module to import, pip requirement)`` checked before the run starts
    requires: tuple[str, str] | None = None

    def __init__(self, cfg: Any, run_dir: str | Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        name = self.run_dir.name
        self.run_name = name[: -len(".incomplete")] if name.endswith(".incomplete") else name

    def flat_config(self) -> dict[str, Any]:
        return dict(self.cfg.to_flat())


class TensorBoardCallback(TrackingCallback):
    """Scalars per round and the config as text in ``<run dir>/tensorboard/``."""

    requires = ("tensorboard", "tensorboard")

    def __init__(self, cfg: Any, run_dir: str | Path):
        super().__init__(cfg, run_dir)
        self.writer: Any = None

    def _open(self) -> Any:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        return self.writer

    def on_run_start(self, strategy, info) -> None:
        w = self._open()
        flat, defaults = self.flat_config(), _default_config()
        lines = ["| key | value | default |", "|---|---|---|"]
        for k in sorted(flat):
            d = defaults.get(k, "")
            mark = "**" if k not in defaults or flat[k] != d else ""
            lines.append(f"| {mark}{k}{mark} | {flat[k]!r} | {d!r} |")
        w.add_text("config", "\n".join(lines), global_step=0)
        changed = {k: v for k, v in flat.items() if k not in defaults or v != defaults[k]}
        w.add_text(
            "config/non-default",
            "\n".join(f"    {k} = {v!r}" for k, v in sorted(changed.items())) or "(none)",
            global_step=0,
        )
        w.flush()

    def on_round_end(self, strategy, record) -> None:
        w = self._open()
        for key, value in global_scalars(record).items():
            w.add_scalar(_tag(key), value, global_step=int(record.server_round))
        w.flush()

    def on_run_end(self, strategy, history) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MlflowCallback(TrackingCallback):
    """An MLflow run in the local file store ``<run dir>/mlruns`` (no tracking server)."""

    requires = ("mlflow", "mlflow")
    experiment = "fedrec"

    def __init__(self, cfg: Any, run_dir: str | Path):
        super().__init__(cfg, run_dir)
        self.client: Any = None
        self.run_id: str | None = None

    def on_run_start(self, strategy, info) -> None:
        import os

        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        # MLflow >= 3.x keeps the file store in maintenance mode and refuses it unless this
        # is set (a user's own setting wins): it is the store that needs no server or database
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        store = (self.run_dir / "mlruns").resolve()
        store.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=store.as_uri())
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
        run = self.client.create_run(exp_id, run_name=self.run_name)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:500]) for k, v in sorted(self.flat_config().items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def on_round_end(self, strategy, record) -> None:
        if self.client is None or self.run_id is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(record.server_round)
        metrics = [
            Metric(k.replace("@", "_at_"), v, now, step) for k, v in global_scalars(record).items()
        ]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def on_run_end(self, strategy, history) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED")
            self.run_id = None


class WandbCallback(TrackingCallback):
    """An offline Weights & Biases run in ``<run dir>/wandb`` (``wandb sync`` uploads it)."""

    requires = ("wandb", "wandb")
    project = "fedrec"

    def __init__(self, cfg: Any, run_dir: str | Path):
        super().__init__(cfg, run_dir)
        self.run: Any = None

    def on_run_start(self, strategy, info) -> None:
        import wandb

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.project,
            name=self.run_name,
            dir=str(self.run_dir),
            mode="offline",
            config=self.flat_config(),
        )

    def on_round_end(self, strategy, record) -> None:
        if self.run is not None:
            self.run.log(global_scalars(record), step=int(record.server_round))

    def on_run_end(self, strategy, history) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


# --------------------------------------------------------------------------- resolution
def callback_names(cfg: Any) -> list[str]:
    """The names in ``output.callbacks`` (blank entries dropped; a repeat is an error)."""
    names = [n.strip() for n in str(cfg.output.callbacks).split(",") if n.strip()]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"output.callbacks names '{n}' twice")
    return names


def _entry_points() -> dict[str, Any]:
    from fedrec.plugins import registered

    return registered(GROUP, "output.callbacks name", ConfigError)


def available_callbacks() -> list[str]:
    """The registered callback names (entry points and built-ins)."""
    return sorted(set(_entry_points()) | set(BUILTINS))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def load_callback(name: str) -> type[Callback]:
    """Resolve one ``output.callbacks`` name (registered name or ``pkg.mod:Class``) to its
    class and check that its optional package is installed; one-line ConfigError if not."""
    from fedrec.plugins import import_object

    eps = {} if ":" in name else _entry_points()
    if ":" in name:
        target = name
    elif name in eps:
        target = eps[name].value
    elif name in BUILTINS:
        target = BUILTINS[name]
    else:
        raise ConfigError(
            f"unknown output.callbacks name '{name}'; allowed: "
            f"{', '.join(available_callbacks())}, or a dotted path package.module:Class"
        )
    try:
        cls = eps[name].load() if name in eps else import_object(target)
    except FedrecError as exc:
        raise ConfigError(f"output.callbacks '{name}': {exc}") from None
    except Exception as exc:  # a broken plugin must not look like a missing one
        raise ConfigError(
            f"output.callbacks '{name}' ({target}) failed to load: {type(exc).__name__}: {exc}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Callback)):
        raise ConfigError(
            f"output.callbacks '{name}' ({target}) is not a subclass of fedrec.callbacks.Callback"
        )
    req = getattr(cls, "requires", None)
    if req and not _installed(req[0]):
        raise ConfigError(f"output.callbacks '{name}' needs {req[0]}: pip install {req[1]}")
    return cls


def check_callbacks(cfg: Any) -> list[type[Callback]]:
    """Validate ``output.callbacks`` before a run starts; returns the classes."""
    return [load_callback(n) for n in callback_names(cfg)]


def _construct(name: str, cls: type[Callback], cfg: Any, run_dir: Path) -> Callback:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        sig = None
    args: tuple[Any, ...] = (cfg, run_dir)
    if sig is not None:
        try:
            sig.bind(cfg, run_dir)
        except TypeError:
            try:
                sig.bind()
                args = ()
            except TypeError:
                raise ConfigError(
                    f"output.callbacks '{name}': {cls.__module__}.{cls.__qualname__} must "
                    "take (cfg, run_dir) or no arguments"
                ) from None
    return cls(*args)


def build_callbacks(cfg: Any, run_dir: str | Path) -> list[Callback]:
    """The callbacks of ``output.callbacks`` for a run writing to ``run_dir``."""
    run_dir = Path(run_dir)
    return [
        _construct(n, cls, cfg, run_dir)
        for n, cls in zip(callback_names(cfg), check_callbacks(cfg))
    ]


__all__ = [
    "BUILTINS",
    "GROUP",
    "MlflowCallback",
    "TensorBoardCallback",
    "TrackingCallback",
    "WandbCallback",
    "available_callbacks",
    "build_callbacks",
    "callback_names",
    "check_callbacks",
    "global_scalars",
    "load_callback",
]

"""``fedrec.run``: validate, pre-flight, dispatch to a runtime, return the summary.

Everything a user can get wrong is checked before a runtime starts or a file is
written: config keys and values, the strategy name and its ``strategy.params``, the
dataset (files present, sha256 verified, sensitive attribute and target valid), the
partitioning and the model.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedrec.config import RunConfig, load_config, validate
from fedrec.errors import ConfigError

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def as_config(
    config: RunConfig | str | Path | Mapping[str, Any] | None, overrides: list[str] | None = None
) -> RunConfig:
    if isinstance(config, RunConfig):
        return (
            config.replace(**dict(load_config(None, overrides).to_flat())) if overrides else config
        )
    if isinstance(config, Mapping):
        return load_config(None, overrides, extra=config)
    return load_config(config, overrides)


def preflight(cfg: RunConfig) -> None:
    """Fail fast (one-line errors) on anything that would fail later."""
    from fedrec.plugins import load_strategy

    cls = load_strategy(cfg.strategy.name)
    cls.parse_params(cfg)
    cls.preflight(cfg)


def run(
    config: RunConfig | str | Path | Mapping[str, Any] | None = None,
    backend: str | None = None,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
) -> dict:
    """Run one experiment and return its ``summary.json`` as a dict.

    ``config`` is a :class:`RunConfig`, a TOML path, a flat dict or None (defaults);
    ``overrides`` are ``key=value`` strings; ``backend`` overrides ``runtime.backend``.
    """
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    cfg = as_config(config, overrides)
    extra: dict[str, Any] = {}
    if backend is not None:
        extra["runtime.backend"] = backend
    if quiet:
        extra["output.progress"] = False
    if extra:
        cfg = cfg.replace(**extra)
    from fedrec.flower.server_app import default_out_dir

    out_dir = Path(out or cfg.output.dir or default_out_dir(cfg))
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(
            f"output directory '{out_dir}' exists and is not empty; choose another --out"
        )
    preflight(cfg)
    cfg = cfg.replace(**{"output.dir": str(out_dir)})
    if cfg.runtime.backend == "local":
        from fedrec.runtime.local import run_local as runner
    elif cfg.runtime.backend == "ray":
        from fedrec.runtime.ray import run_ray as runner
    else:
        from fedrec.runtime.deployment import run_deployment as runner
    if not quiet:
        nodes = cfg.runtime.num_nodes or cfg.partition.num_clients
        where = {
            "local": "in-process grid",
            "ray": "Flower simulation engine (Ray)",
            "deployment": f"SuperLink at {cfg.runtime.superlink}",
        }[cfg.runtime.backend]
        print(
            f"fedrec: {cfg.strategy.name} on {cfg.dataset.name}, "
            f"{cfg.partition.num_clients} clients on {nodes} nodes, {where}; "
            f"outputs -> {out_dir}",
            file=sys.stderr,
            flush=True,
        )
    runner(cfg, str(out_dir))
    summary = json.loads((out_dir / "summary.json").read_text())
    summary["out_dir"] = str(out_dir)
    return summary


__all__ = ["run", "preflight", "as_config", "validate"]

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

from fedrec.config import RunConfig, load_config, parse_override, validate
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


def preflight(cfg: RunConfig) -> RunConfig:
    """Fail fast (one-line errors) on anything that would fail later; returns the config
    with the unlearning requests resolved (a request file read into JSON, validated)."""
    from fedrec.plugins import load_strategy

    cls = load_strategy(cfg.strategy.name)
    cls.parse_params(cfg)
    preflight_attack(cfg)
    cfg = preflight_unlearning(cfg, cls)  # (attribute requests become LEGO's attributes)
    cls.parse_params(cfg)
    cls.preflight(cfg)
    from fedrec.strategies.privacy import check_privacy

    check_privacy(cfg, cls)  # privacy.*: the extra installed, the strategy supports it
    from fedrec.tracking import check_callbacks  # output.callbacks: names, packages

    check_callbacks(cfg)
    return cfg


def preflight_attack(cfg: RunConfig) -> None:
    """``attack.kind``: a built-in role or an ``Adversary`` class (resolved here, not first
    in the clients), on a recommendation dataset (what the adversarial halves read)."""
    kind = cfg.attack.kind
    if kind == "none":
        return
    from fedrec.clients.attacks import adversary_class
    from fedrec.data import get_dataset_info, list_datasets

    adversary_class(kind)
    if get_dataset_info(cfg.dataset.name).kind != "recsys":
        allowed = ", ".join(d.name for d in list_datasets() if d.kind == "recsys")
        raise ConfigError(
            f"config key 'attack.kind': attack '{kind}' needs a recommendation dataset "
            f"({allowed}); dataset.name is '{cfg.dataset.name}'"
        )


def preflight_unlearning(cfg: RunConfig, cls) -> RunConfig:
    """Validate the ``[unlearning]`` job before anything runs: the requests (ids, kinds,
    forget sets), the method, what the method needs from the strategy and the run."""
    from fedrec.plugins import import_object
    from fedrec.unlearning.methods import build_method
    from fedrec.unlearning.requests import load_requests
    from fedrec.unlearning.session import check_universe_kinds

    u = cfg.unlearning
    method = build_method(cfg)
    if not u.requests and not (u.shards >= 2 or method.needs_history):
        return cfg
    actions = set(getattr(import_object(cls.client_half), "unlearning_actions", ()))
    text = u.requests.strip()
    try:
        source: Any = json.loads(text) if text.startswith("{") else text
    except ValueError as exc:
        raise ConfigError(
            f"config key 'unlearning.requests': not valid JSON ({exc}); give a request TOML "
            "path or its JSON"
        ) from None
    requests = load_requests(source, cls.unlearning_universe(cfg)) if text else []
    attrs = [a for r in requests if r.kind == "attribute" for a in r.ids]
    if attrs and cls.name != "lego":
        raise ConfigError(
            'attribute requests are served by LEGO: set strategy.name = "lego" (the '
            "attributes become strategy.params.attributes)"
        )
    check_universe_kinds(cls, method, requests)
    missing = [a for a in method.actions if a not in actions]
    if missing:
        raise ConfigError(
            f"unlearning method '{method.name}' needs the client action(s) {missing}, which "
            f"strategy '{cls.name}' does not provide"
        )
    if method.needs_history and not cls.history_updates:
        raise ConfigError(
            f"unlearning method '{method.name}' calibrates stored client updates, which "
            f"strategy '{cls.name}' does not support"
        )
    if u.shards >= 2 and u.aggregator == "learned" and "sisa_evidence" not in actions:
        raise ConfigError(
            f"unlearning.aggregator = \"learned\" needs the client action 'sisa_evidence', "
            f"which strategy '{cls.name}' does not provide; use \"average\""
        )
    if method.needs_shards and u.shards < 2:
        raise ConfigError(
            "unlearning method 'sisa' needs a sharded run: set unlearning.shards >= 2"
        )
    if u.shards >= 2 and method.name != "sisa" and requests:
        raise ConfigError(
            f"a run trained as {u.shards} SISA shards is unlearned with method 'sisa', "
            f"not '{method.name}'"
        )
    late = [r.label for r in requests if r.round is not None and r.round > cfg.num_server_rounds]
    if late:
        raise ConfigError(f"{late[0]}: round is after the last round ({cfg.num_server_rounds})")
    if u.shards >= 2 and any(r.round for r in requests):
        raise ConfigError(
            "with unlearning.shards, requests are served after training (or at round 0); "
            "drop their 'round'"
        )
    extra: dict[str, Any] = {}
    if attrs:
        extra["strategy.params.attributes"] = ",".join(sorted(set(map(str, attrs))))
    keep = [r for r in requests if r.kind != "attribute"]
    extra["unlearning.requests"] = (
        json.dumps({"request": [r.to_json() for r in keep]}, sort_keys=True) if keep else ""
    )
    return cfg.replace(**extra)


def check_out_dir(path: str | Path) -> None:
    """Fail before anything runs unless ``path`` can become the run folder: it is absent or
    an empty directory, and the directory that will hold it (and the staging folder
    ``<path>.incomplete`` next to it) exists or can be created, and is writable. Raises
    :class:`ConfigError` naming the path and why."""
    out = Path(path)
    hint = "choose another --out"
    try:
        if "\0" in str(out):
            raise ConfigError(f"output directory {str(out)!r} contains a NUL byte; {hint}")
        if out.name in ("", ".", ".."):
            raise ConfigError(
                f"output directory '{out}' must name a new folder (e.g. runs/my-run); {hint}"
            )
        if out.is_symlink():  # (the finished run replaces the folder; a link would break)
            raise ConfigError(f"output directory '{out}' is a symbolic link; {hint}")
        if os.path.lexists(out):
            if not out.is_dir():
                raise ConfigError(f"output directory '{out}' exists and is not a directory; {hint}")
            if any(out.iterdir()):
                raise ConfigError(f"output directory '{out}' exists and is not empty; {hint}")
        stage = out.with_name(out.name + ".incomplete")
        if os.path.lexists(stage) and not stage.is_dir():
            raise ConfigError(
                f"output directory '{out}': its staging path '{stage}' exists and is not a "
                f"directory; remove it or {hint}"
            )
        holder = out.absolute().parent
        while not os.path.lexists(holder):  # the nearest ancestor that exists
            holder = holder.parent
        if not holder.is_dir():
            raise ConfigError(
                f"output directory '{out}' cannot be created: '{holder}' is not a directory; {hint}"
            )
        if not os.access(holder, os.W_OK | os.X_OK):
            raise ConfigError(
                f"output directory '{out}' cannot be created: '{holder}' is not writable; {hint}"
            )
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:  # an unreadable folder, a NUL byte in the path, ...
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"output directory '{out}' cannot be used ({reason}); {hint}") from None


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The flat config a run wrote to ``run_dir/config.json`` (one-line errors)."""
    try:
        flat = json.loads((run_dir / "config.json").read_bytes())
    except (OSError, ValueError) as exc:  # (a UnicodeDecodeError is a ValueError)
        raise ConfigError(f"run '{run_dir}' has an unreadable config.json ({exc})") from None
    if not isinstance(flat, dict):
        raise ConfigError(f"run '{run_dir}' has a config.json that is not a JSON object")
    return flat


RESUMABLE_PREFIXES = ("runtime.", "output.progress", "output.plots")


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The config of the interrupted run in ``run_dir`` (its ``<dir>.incomplete`` folder),
    set to resume there. Only ``runtime.*`` keys (the backend, the number of CPUs...) and
    ``output.progress`` / ``output.plots`` may be overridden: the rest is the run's own."""
    p = Path(run_dir)
    final = p.with_name(p.name.removesuffix(".incomplete"))
    stage = final.with_name(final.name + ".incomplete")
    if (final / "summary.json").is_file():
        raise ConfigError(f"run '{final}' is finished (it has a summary.json): nothing to resume")
    if not stage.is_dir():
        raise ConfigError(f"no unfinished run at '{final}' (no folder '{stage}')")
    if not (stage / "config.json").is_file() or not (stage / "checkpoint.npz").is_file():
        raise ConfigError(
            f"run '{final}' stopped before its first checkpoint (no config.json / "
            "checkpoint.npz): start it again instead"
        )
    flat = read_run_config(stage)
    for k, v in (parse_override(t) for t in overrides or []):
        if not k.startswith(RESUMABLE_PREFIXES):
            raise ConfigError(
                f"--resume continues the run with its own config; only runtime.*, "
                f"output.progress and output.plots may change, not '{k}'"
            )
        flat[k] = v
    flat.update({"output.resume": True, "output.dir": str(final)})
    cfg = validate(flat)
    u = cfg.unlearning
    if (
        u.requests
        or u.shards >= 2
        or u.never_seen > 0
        or u.record_history
        or u.resume_from
        or (u.method == "federaser")
    ):
        raise ConfigError("a run with an [unlearning] job cannot be resumed yet; start it again")
    if not cfg.output.checkpoint:
        raise ConfigError(f"run '{final}' was not checkpointed (output.checkpoint = false)")
    return cfg


def run(
    config: RunConfig | str | Path | Mapping[str, Any] | None = None,
    backend: str | None = None,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
    resume: str | Path | None = None,
) -> dict:
    """Run one experiment and return its ``summary.json`` as a dict.

    ``config`` is a :class:`RunConfig`, a TOML path, a flat dict or None (defaults);
    ``overrides`` are ``key=value`` strings; ``backend`` overrides ``runtime.backend``.
    ``resume`` (a run folder, instead of ``config``) continues an interrupted run from its
    last checkpoint (:func:`resume_config`).
    """
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if resume is not None:
        if config is not None:
            raise ConfigError("give either a config or --resume DIR, not both")
        cfg = resume_config(resume, overrides)
    else:
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
    check_out_dir(out_dir)
    cfg = preflight(cfg)
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


def unlearn(
    run_dir: str | Path,
    request: str | Path | Mapping[str, Any],
    method: str | None = None,
    out: str | Path | None = None,
    backend: str | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
) -> dict:
    """Serve the requests of ``request`` (a request TOML, or a mapping with a ``request``
    list) on the finished run in ``run_dir``, with ``method`` (default: the run's
    ``unlearning.method``), writing a new run folder ``out`` (default
    ``<run_dir>-unlearn-<method>``); ``run_dir`` is not modified. Returns the new run's
    summary; its ``unlearning`` entries (also in ``unlearning.jsonl``) hold the cost and the
    verification metrics before (``before``) and after the request."""
    src = Path(run_dir)
    if not (src / "config.json").is_file():
        raise ConfigError(f"'{src}' is not a finished fedrec run (no config.json)")
    if not (src / "checkpoint.npz").is_file():
        raise ConfigError(f"run '{src}' has no checkpoint.npz (output.checkpoint was false)")
    if not (src / "client_state").is_dir():
        raise ConfigError(
            f"run '{src}' did not keep its clients' state (output.keep-client-state = false); "
            "run it again with it on"
        )
    flat = read_run_config(src)
    from fedrec.unlearning.requests import load_requests

    # form errors name the request before anything else; ids are checked in preflight
    reqs = load_requests(dict(request) if isinstance(request, Mapping) else request)
    req_text = json.dumps({"request": [r.to_json() for r in reqs]}, sort_keys=True)
    if any(r.round is not None for r in reqs):
        raise ConfigError(
            "fedrec unlearn serves requests after training; drop the requests' 'round' "
            "(a schedule belongs in the run config's unlearning.requests)"
        )
    name = method or flat.get("unlearning.method", "retrain")
    if (src / "sisa.npz").is_file() and name != "sisa":
        raise ConfigError(f"run '{src}' was trained as SISA shards: use --method sisa")
    if name == "sisa" and not (src / "sisa.npz").is_file():
        raise ConfigError(f"run '{src}' was not trained with shards; sisa needs unlearning.shards")
    from fedrec.unlearning.methods import load_method

    if load_method(name).needs_history and not (src / "history.npz").is_file():
        raise ConfigError(
            f"method '{name}' needs the client updates the server stored during the run; "
            f"run '{src}' has no history.npz (set unlearning.record-history = true)"
        )
    flat.update(
        {
            "unlearning.requests": req_text,
            "unlearning.method": name,
            "unlearning.resume-from": str(src.resolve()),
            "output.dir": "",
        }
    )
    target = Path(out) if out else src.with_name(f"{src.name}-unlearn-{name}")
    return run(flat, backend=backend, out=target, overrides=overrides, quiet=quiet)


__all__ = ["run", "unlearn", "preflight", "as_config", "validate"]

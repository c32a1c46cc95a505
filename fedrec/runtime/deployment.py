"""``deployment`` runtime: submit the run with ``flwr run`` to a running SuperLink.

The SuperLink and SuperNodes are started by you (see README, "Deployment"), each
SuperNode with ``--node-config "partition-id=K num-partitions=N data-dir='...'"``.
``fedrec run --backend deployment`` writes a minimal Flower app (a ``pyproject.toml``
whose components point at the installed fedrec and whose ``[tool.flwr.app.config]``
is the whole validated experiment) to a temporary folder and runs
``flwr run <app> fedrec --stream`` with a private ``FLWR_HOME`` that holds one
connection to ``runtime.superlink``. fedrec must be installed on the SuperLink host
and on every SuperNode (runtime dependency installation stays off).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fedrec.errors import FedrecError


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_app(cfg, folder: Path) -> Path:
    """A Flower app folder whose run config is ``cfg`` (all keys, flat)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "fedrec-run"',
        'version = "1.0.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "fedrec"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "fedrec.flower.server_app:app"',
        'clientapp = "fedrec.clients.app:app"',
        "",
        "[tool.flwr.app.config]",
    ]
    lines += [f'"{k}" = {_toml_value(v)}' for k, v in sorted(cfg.to_flat().items())]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return folder


def flwr_home(cfg, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    insecure = "insecure = true\n" if cfg.runtime.insecure else ""
    (folder / "config.toml").write_text(
        '[superlink]\ndefault = "fedrec"\n\n[superlink.fedrec]\n'
        f'address = "{cfg.runtime.superlink}"\n{insecure}'
    )
    return folder


def run_deployment(cfg, out_dir: str) -> None:
    out = Path(out_dir).resolve()
    cfg = cfg.replace(**{"output.dir": str(out), "output.progress": False})
    with tempfile.TemporaryDirectory(prefix="fedrec-deploy-") as tmp:
        app = write_app(cfg, Path(tmp) / "app")
        env = {
            **os.environ,
            "FLWR_HOME": str(flwr_home(cfg, Path(tmp) / "flwr-home")),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        flwr = Path(sys.executable).with_name("flwr")
        cmd = [str(flwr) if flwr.exists() else "flwr", "run", str(app), "fedrec", "--stream"]
        proc = subprocess.run(cmd, env=env, timeout=None)
    if proc.returncode != 0 or not (out / "summary.json").exists():
        raise FedrecError(
            f"`flwr run` against the SuperLink at {cfg.runtime.superlink} did not "
            f"produce a result (exit {proc.returncode}); is the SuperLink running?"
        )

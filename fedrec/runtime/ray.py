"""``ray`` runtime: Flower's simulation engine (Ray) running the fedrec apps.

Uses ``flwr.simulation.run_simulation`` (deprecated in flwr 1.42 in favour of
``flwr run``, but the only in-process entry point; kept behind this one function).
Every simulated SuperNode gets ``partition-id``/``num-partitions`` from Flower.
Ray is bound to 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` and
``_node_ip_address``) and uses ``runtime.ray-num-cpus`` CPUs (0 = all); each
ClientApp reserves ``runtime.client-num-cpus``/``client-num-gpus``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from fedrec.errors import FedrecError


class _HideDeprecation(logging.Filter):
    """Drops Flower's notice that run_simulation is deprecated (we know; see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage()


def run_ray(cfg, out_dir: str) -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    from flwr.simulation import run_simulation

    from fedrec.clients.app import app as client_app
    from fedrec.flower.server_app import make_server_app

    num_nodes = cfg.runtime.num_nodes or cfg.partition.num_clients
    rt = cfg.runtime
    backend_config = {
        "client_resources": {"num_cpus": rt.client_num_cpus, "num_gpus": rt.client_num_gpus},
        "init_args": {
            "num_cpus": rt.ray_num_cpus or os.cpu_count() or 1,
            "include_dashboard": False,
            "_node_ip_address": "127.0.0.1",
            "log_to_driver": True,
        },
    }
    errors: list[BaseException] = []
    flwr_log = logging.getLogger("flwr")
    hide = _HideDeprecation()
    flwr_log.addFilter(hide)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_simulation(
                server_app=make_server_app(cfg, out_dir, errors),
                client_app=client_app,
                num_supernodes=num_nodes,
                backend_config=backend_config,
                verbose_logging=False,
            )
    finally:
        flwr_log.removeFilter(hide)
    if errors:
        if isinstance(errors[0], FedrecError):
            raise errors[0]
        raise FedrecError(f"the ray simulation failed: {type(errors[0]).__name__}: {errors[0]}")
    if not (Path(out_dir) / "summary.json").exists():
        raise FedrecError(
            "the ray simulation ended without a result; see the log above "
            "(a ClientApp or ServerApp exception is printed there)"
        )

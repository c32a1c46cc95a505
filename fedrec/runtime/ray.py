"""``ray`` runtime: Flower's simulation engine (Ray) running the fedrec apps.

Uses ``flwr.simulation.run_simulation`` (deprecated in flwr 1.42 in favour of
``flwr run``, but the only in-process entry point; kept behind this one function).
Every simulated SuperNode gets ``partition-id``/``num-partitions`` from Flower.
Ray is bound to 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` and
``_node_ip_address``) and uses ``runtime.ray-num-cpus`` CPUs (0 = all); each
ClientApp reserves ``runtime.client-num-cpus``/``client-num-gpus``.

With ``runtime.ray-address`` set, the simulation joins that running Ray cluster
instead (``ray.init(address=...)``; no ``num_cpus``/``_node_ip_address``): this
process must run on one of its nodes, the ClientApps run on all of them with the
cluster's resources and the environment each node's ``ray start`` was given
(``FEDREC_DATA_DIR``...), and leaving only disconnects (the cluster keeps running).
"""

from __future__ import annotations

import logging
import os
import socket
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
    if rt.ray_address:
        _check_reachable(rt.ray_address)
        # joining: Ray refuses num_cpus when connecting, and finds this node's raylet itself
        init_args: dict = {"address": rt.ray_address, "log_to_driver": True}
    else:
        init_args = {
            "num_cpus": rt.ray_num_cpus or os.cpu_count() or 1,
            "include_dashboard": False,
            "_node_ip_address": "127.0.0.1",
            "log_to_driver": True,
        }
    backend_config = {
        "client_resources": {"num_cpus": rt.client_num_cpus, "num_gpus": rt.client_num_gpus},
        "init_args": init_args,
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
    except Exception as e:
        if rt.ray_address and _cannot_join(e):
            raise FedrecError(_join_error(rt.ray_address, _root(e))) from e
        raise
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


def _join_error(address: str, why: object) -> str:
    port = address.rpartition(":")[2] if ":" in address else "6379"
    return (
        f"runtime.ray-address: cannot join the Ray cluster at {address} ({why}); start one "
        f"on this machine with `ray start --head --node-ip-address 127.0.0.1 --port {port}`, "
        "or leave runtime.ray-address empty for a private Ray instance"
    )


def _check_reachable(address: str) -> None:
    """Fail fast (one line) when nothing listens at ``host:port`` (Ray would retry ~60 s)."""
    if address == "auto":
        return  # Ray resolves it (RAY_ADDRESS / the latest `ray start` on this machine)
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as e:
        raise FedrecError(_join_error(address, e.strerror or type(e).__name__)) from None


def _root(e: BaseException) -> BaseException:
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def _cannot_join(e: BaseException) -> bool:
    """Whether ``e`` (Flower wraps it twice) is Ray failing to connect to the cluster."""
    root = _root(e)
    msg = str(root)
    return isinstance(root, ConnectionError) or (
        isinstance(root, RuntimeError)
        and ("No node info found" in msg or "Failed to connect" in msg)
    )

"""``deployment`` runtime: submit the run with ``flwr run`` to a running SuperLink.

The SuperLink and SuperNodes are started by you (see README, "Deployment"), each
SuperNode with ``--node-config "partition-id=K num-partitions=N data-dir='...'"``.
``fedrec run --backend deployment`` writes a minimal Flower app (a ``pyproject.toml``
whose components point at the installed fedrec and whose ``[tool.flwr.app.config]``
is the whole validated experiment) to a temporary folder and runs
``flwr run <app> fedrec --stream`` with a private ``FLWR_HOME`` that holds one
connection to ``runtime.superlink``: over TLS, verified with the CA certificate
``runtime.root-certificates``, when that is set, else plain (``runtime.insecure``).
fedrec must be installed on the SuperLink host and on every SuperNode (runtime
dependency installation stays off).

**Long-lived ClientApps.** A SuperNode started with ``--isolation subprocess`` (the
default) runs every message in a fresh ``flwr-clientapp`` process, which imports torch
and fedrec and reloads its data each time. In Flower 1.42 ``flwr-clientapp`` serves
exactly one task (it needs that task's ``--token`` and exits after it), so with
``--isolation process`` fedrec brings its own executor instead:
``python -m fedrec.runtime.deployment --runtime-api-address 127.0.0.1:PORT``
(:func:`serve_clientapp`), started once next to a SuperNode whose Runtime API listens on
``--host 127.0.0.1 --port PORT``, acquires that SuperNode's ClientApp tasks one after
another and runs them in its own process, so fedrec's per-process caches (config, client
halves, client data, models) survive from message to message.

:class:`LoopbackFederation` starts a SuperLink and SuperNodes on 127.0.0.1 (optionally
with TLS, SuperNode authentication and long-lived ClientApps) for tests and benchmarks.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError, FedrecError

log = logging.getLogger(__name__)


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


def root_certificates(cfg) -> Path | None:
    """The readable CA certificate file ``runtime.root-certificates`` (absolute), or None
    when unset; raises a one-line :class:`ConfigError` otherwise."""
    raw = cfg.runtime.root_certificates
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    where = f"config key 'runtime.root-certificates': '{raw}'"
    if not path.exists():
        raise ConfigError(f"{where} does not exist; give the CA certificate (PEM) of the SuperLink")
    if not path.is_file():
        raise ConfigError(f"{where} is not a file; give the CA certificate (PEM) of the SuperLink")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({exc.strerror or exc})") from None
    if b"-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(f"{where} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return path


def flwr_home(cfg, folder: Path) -> Path:
    """A ``FLWR_HOME`` whose one connection ``fedrec`` is ``runtime.superlink``: over TLS
    verified with ``runtime.root-certificates`` when set, else insecure if
    ``runtime.insecure``, else TLS with the system's CA certificates."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = root_certificates(cfg)
    if ca is not None:
        tls = f"root-certificates = {_toml_value(str(ca))}\n"
    else:
        tls = "insecure = true\n" if cfg.runtime.insecure else ""
    (folder / "config.toml").write_text(
        '[superlink]\ndefault = "fedrec"\n\n[superlink.fedrec]\n'
        f"address = {_toml_value(cfg.runtime.superlink)}\n{tls}"
    )
    return folder


def run_deployment(cfg, out_dir: str) -> None:
    root_certificates(cfg)  # fail before anything is written
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


# ------------------------------------------------------------ long-lived ClientApp executor
def _task_retry_invoker():
    """Retries for one task's Runtime API calls: transport errors only, for up to a minute
    (Flower's default invoker signals the whole process on HTTP 401, which would stop a
    long-lived executor over one expired task)."""
    import httpx
    from flwr.supercore.retry import RetryInvoker, exponential

    return RetryInvoker(
        lambda: exponential(base_delay=0.2, max_delay=5),
        (httpx.TransportError,),
        max_tries=None,
        max_time=60.0,
    )


def _runtime_client(address: str, certificates: bytes | None, interceptors: list):
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=certificates is None,
        root_certificates=certificates,
        interceptors=interceptors,
        retry_invoker=_task_retry_invoker(),
    )


def _pull_task_input(client: Any) -> tuple:
    """``flwr.supernode.runtime.run_clientapp.pull_task_input`` with a 50 ms (not 1 s)
    first back-off for the message's objects: the SuperNode offers the task before it has
    pulled them from the SuperLink, so a prompt executor usually asks once too early."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    run, fab = run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        initial_backoff=0.05,
        backoff_cap=1.0,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # (as Flower does)
    return message, context, run, fab


def _serve_task(address: str, token: str, certificates: bytes | None, apps: dict) -> bool:
    """Run one acquired ClientApp task in this process, as ``flwr-clientapp --token``
    would (pull the message, context, run and FAB; call the ClientApp; push the reply and
    the task's final status and context), without exiting. ``apps`` caches the loaded
    ClientApp per FAB hash. Returns whether the ClientApp completed."""
    import httpx
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    client = _runtime_client(
        address,
        certificates,
        [
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
    )

    def heartbeat() -> bool:  # (Flower's own raises SIGINT when the task is gone)
        try:
            return bool(client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
        except httpx.HTTPError:
            return False

    beat = HeartbeatSender(heartbeat)
    message: Any = None
    reply: Any = None
    context: Any = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        beat.start()
        t0 = time.perf_counter()
        message, context, run, fab = _pull_task_input(client)
        t1 = time.perf_counter()
        app = apps.get(fab.hash_str)
        if app is None:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            app = apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        reply = app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
        log.info(
            "run %s: %s message (input %.2fs, ClientApp %.2fs)",
            run.run_id,
            message.metadata.message_type,
            t1 - t0,
            time.perf_counter() - t1,
        )
    except Exception as exc:  # noqa: BLE001 - reported to the SuperLink, the executor goes on
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        details = f"{type(exc)}:<'{exc}'>"
        if isinstance(exc, LoadClientAppError):
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            details = "An exception was raised when attempting to load `ClientApp`"
        log.error("ClientApp raised an exception", exc_info=exc)
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as exc:  # noqa: BLE001 - e.g. the run was stopped meanwhile
            log.error("reply not pushed: %s", exc)
            status = SubStatus.FAILED
        if beat.is_running:
            beat.stop()
        push_task_output(client=client, context=context, sub_status=status, details=details)
        client.close()
    return status == SubStatus.COMPLETED


def serve_clientapp(
    runtime_api_address: str,
    *,
    root_certificates: str | None = None,
    poll_interval: float = 0.05,
    max_tasks: int | None = None,
) -> int:
    """Serve the ClientApp tasks of the SuperNode whose Runtime API is at
    ``runtime_api_address`` (``flower-supernode --isolation process --host H --port P``),
    one after another in this process, until stopped (or ``max_tasks`` were served);
    returns the number served. Replaces ``flower-superexec`` + one ``flwr-clientapp``
    process per message. ``root_certificates``: the CA of a TLS Runtime API (the
    SuperNode's ``--ssl-*``); None = plain HTTP (the SuperNode's default on 127.0.0.1)."""
    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    certificates = Path(root_certificates).expanduser().read_bytes() if root_certificates else None
    acquirer = _runtime_client(
        runtime_api_address,
        certificates,
        [RuntimeVersionHttpInterceptor(component_name="SuperExec")],
    )
    request = AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)])
    apps: dict[str, Any] = {}
    served, waiting = 0, False
    log.info("serving the ClientApp tasks of the SuperNode at %s", runtime_api_address)
    try:
        while max_tasks is None or served < max_tasks:
            try:
                res = acquirer.AcquireTask(request)
            except httpx.HTTPError as exc:  # the SuperNode is not (or no longer) there
                if not waiting:
                    log.warning(
                        "no SuperNode Runtime API at %s (%s); retrying", runtime_api_address, exc
                    )
                    waiting = True
                time.sleep(1.0)
                continue
            waiting = False
            if res.HasField("task") and res.token:
                _serve_task(runtime_api_address, res.token, certificates, apps)
                served += 1
            else:
                time.sleep(poll_interval)
    finally:
        acquirer.close()
    return served


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m fedrec.runtime.deployment --runtime-api-address 127.0.0.1:PORT``."""
    p = argparse.ArgumentParser(
        prog="python -m fedrec.runtime.deployment",
        description="A long-lived ClientApp executor for one SuperNode started with "
        "`flower-supernode --isolation process --host 127.0.0.1 --port PORT`: it runs the "
        "node's messages one after another in this process (fedrec's caches survive).",
    )
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's HOST:PORT")
    p.add_argument(
        "--root-certificates",
        help="CA certificate of a TLS Runtime API (SuperNode --ssl-*); default: plain HTTP",
    )
    p.add_argument(
        "--poll-interval", type=float, default=0.05, help="seconds between task polls when idle"
    )
    p.add_argument(
        "--preload",
        action="append",
        default=None,
        metavar="MODULE",
        help="import MODULE before serving (default: fedrec.clients.app, fedrec.clients."
        "classification), so that the first message does not pay for it",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # (one line per Runtime API call)
    import importlib

    for module in args.preload or ["fedrec.clients.app", "fedrec.clients.classification"]:
        importlib.import_module(module)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve_clientapp(
            args.runtime_api_address,
            root_certificates=args.root_certificates,
            poll_interval=args.poll_interval,
        )
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------------ loopback federation
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until something listens on 127.0.0.1:``port`` (or ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FedrecError(
                f"the process meant to listen on port {port} exited ({proc.returncode})"
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FedrecError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


class LoopbackFederation:
    """A SuperLink and SuperNodes on 127.0.0.1, each in its own process group with its own
    ``FLWR_HOME`` and log file under ``folder``; :meth:`stop` (or leaving the ``with``
    block) stops exactly the processes it started. ``certificates``
    (:func:`fedrec.runtime.certs.make_test_certificates`) turns on TLS;
    ``supernode_auth`` makes the SuperLink accept only SuperNodes whose public key was
    registered (:meth:`register`). For tests, benchmarks and trying deployment on one
    machine, not for production."""

    def __init__(
        self,
        folder: str | Path,
        *,
        certificates: Any = None,
        supernode_auth: bool = False,
        env: Mapping[str, str] | None = None,
    ):
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.certificates = certificates
        self.supernode_auth = supernode_auth
        self.bin = Path(sys.executable).parent
        self.env = {
            **os.environ,
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            **(env or {}),
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.address = ""

    # -- processes
    def start(self, name: str, cmd: Sequence[str]) -> subprocess.Popen:
        """Start ``cmd`` with its own ``FLWR_HOME`` (``folder/name``), log file
        (``folder/name.log``) and process group."""
        if name in self.procs:
            raise FedrecError(f"a process named {name!r} was already started")
        home = self.folder / name
        home.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{name}.log", "w") as out:
            proc = subprocess.Popen(
                list(cmd),
                env={**self.env, "FLWR_HOME": str(home)},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=home,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM every process group this federation started, then SIGKILL what is left."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)

    def __enter__(self) -> LoopbackFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- components
    def start_superlink(self, timeout: float = 60.0) -> str:
        """Start the SuperLink (Control, Fleet and Runtime APIs on one port); returns its
        address and writes the CLI connection used by :meth:`flwr`."""
        port = free_port()
        cmd = [str(self.bin / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--disable-runtime-dependency-installation"]
        if self.certificates is not None:
            c = self.certificates
            cmd += ["--ssl-ca-certfile", str(c.ca), "--ssl-certfile", str(c.cert)]
            cmd += ["--ssl-keyfile", str(c.key)]
        else:
            cmd += ["--insecure"]
        if self.supernode_auth:
            cmd += ["--enable-supernode-auth"]
        wait_port(port, timeout, self.start("superlink", cmd))
        self.address = f"127.0.0.1:{port}"
        cli = self.folder / "cli"
        cli.mkdir(exist_ok=True)
        tls = (
            f"root-certificates = {_toml_value(str(Path(self.certificates.ca).resolve()))}\n"
            if self.certificates is not None
            else "insecure = true\n"
        )
        (cli / "config.toml").write_text(
            f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
            f"address = {_toml_value(self.address)}\n{tls}"
        )
        return self.address

    def start_supernode(
        self,
        partition_id: int,
        num_partitions: int,
        *,
        long_lived: bool = False,
        private_key: str | Path | None = None,
        name: str | None = None,
        node_config: str = "",
    ) -> subprocess.Popen:
        """Start SuperNode ``name`` (default ``supernode<partition_id>``) hosting partition
        ``partition_id`` of ``num_partitions``: ``--isolation subprocess`` (a new
        ``flwr-clientapp`` per message), or with ``long_lived`` ``--isolation process`` plus
        one :func:`serve_clientapp` process (``<name>-clientapp``). ``private_key``: its
        authentication key (:func:`fedrec.runtime.certs.make_supernode_keys`)."""
        if not self.address:
            raise FedrecError("start the SuperLink first")
        name = name or f"supernode{partition_id}"
        port = free_port()
        cmd = [str(self.bin / "flower-supernode"), "--superlink", self.address]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        if self.certificates is not None:
            cmd += ["--root-certificates", str(self.certificates.ca)]
        else:
            cmd += ["--insecure"]
        if private_key is not None:
            cmd += ["--auth-supernode-private-key", str(private_key)]
        config = f"partition-id={partition_id} num-partitions={num_partitions} {node_config}"
        cmd += ["--node-config", config.strip()]
        cmd += ["--isolation", "process" if long_lived else "subprocess"]
        proc = self.start(name, cmd)
        if long_lived:
            self.start(
                f"{name}-clientapp",
                [sys.executable, "-m", "fedrec.runtime.deployment"]
                + ["--runtime-api-address", f"127.0.0.1:{port}"],
            )
        return proc

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against this SuperLink (connection ``loopback``)."""
        return subprocess.run(
            [str(self.bin / "flwr"), *args],
            env={**self.env, "FLWR_HOME": str(self.folder / "cli")},
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def register(self, public_key: str | Path) -> subprocess.CompletedProcess:
        """``flwr supernode register <public_key> loopback``: let the SuperNode with that
        key in (with ``supernode_auth``)."""
        return self.flwr("supernode", "register", str(public_key), "loopback")

    def overrides(self) -> list[str]:
        """The ``runtime.*`` overrides that point ``fedrec run --backend deployment`` here."""
        out = [f"runtime.superlink={self.address}"]
        if self.certificates is not None:
            out.append(f"runtime.root-certificates={Path(self.certificates.ca).resolve()}")
        return out


if __name__ == "__main__":
    main()

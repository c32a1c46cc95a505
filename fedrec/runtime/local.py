"""``local`` runtime: an in-process Grid that runs the fedrec ClientApp without Ray.

Each simulated node has a fixed node id (``1000 + i``) and its own Flower
``Context`` (``node_config`` = ``partition-id``/``num-partitions``, a persistent
``state``). Messages and replies are copied on delivery (:func:`_copy`), so a client
never shares a mutable object with the server: metadata, errors, config and metric
records are round-tripped through Flower's protobuf serialisation as in a real
transport; array records are rebuilt as new ``Array`` objects over the same immutable
``bytes`` payload (``Array.numpy()`` always returns a fresh array), which isolates as
well as a protobuf copy without copying every payload byte five times (Flower's own
in-memory simulation state does not serialise either). A ClientApp exception becomes
an error reply, as in Flower. Nodes run sequentially; with seeded, order-independent
clients this gives bit-identical metrics to the Ray runtime.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode
from flwr.common.serde import (
    config_record_from_proto,
    config_record_to_proto,
    error_from_proto,
    error_to_proto,
    metadata_from_proto,
    metadata_to_proto,
    metric_record_from_proto,
    metric_record_to_proto,
)
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

NODE_ID_BASE = 1000
SERVER_NODE_ID = 1


def _copy_records(content: RecordDict) -> RecordDict:
    out = RecordDict()
    for key, rec in content.items():
        if isinstance(rec, ArrayRecord):
            out[key] = ArrayRecord(
                {
                    k: Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=bytes(a.data))
                    for k, a in rec.items()
                }
            )
        elif isinstance(rec, ConfigRecord):
            out[key] = config_record_from_proto(config_record_to_proto(rec))
        else:
            out[key] = metric_record_from_proto(metric_record_to_proto(rec))
    return out


def _copy(msg: Message) -> Message:
    """A delivery copy of ``msg`` sharing no mutable object with it (module docstring)."""
    error = error_from_proto(error_to_proto(msg.error)) if msg.has_error() else None
    return make_message(
        metadata=metadata_from_proto(metadata_to_proto(msg.metadata)),
        content=None if error is not None else _copy_records(msg.content),
        error=error,
    )


class LocalGrid(Grid):
    """A Grid whose nodes execute ``client_app`` in this process."""

    def __init__(self, client_app, num_nodes: int, run_id: int = 1):
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        self.contexts = {
            NODE_ID_BASE + i: Context(
                run_id=run_id,
                node_id=NODE_ID_BASE + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)

    def activate(self) -> None:
        """Set Flower's task identity so the server code can build Messages."""
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SERVER_NODE_ID

    # Grid API --------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            self._replies[mid] = self._deliver(msg)
        return ids

    def _deliver(self, msg: Message) -> Message:
        ctx = self.contexts.get(msg.metadata.dst_node_id)
        incoming = _copy(msg)
        if ctx is None:
            return Message(
                Error(
                    code=ErrorCode.NODE_UNAVAILABLE
                    if hasattr(ErrorCode, "NODE_UNAVAILABLE")
                    else 0,
                    reason="unknown node",
                ),
                reply_to=incoming,
            )
        try:
            reply = self.client_app(incoming, ctx)
        except Exception as exc:  # as Flower: a raising ClientApp yields an error reply
            reply = Message(
                Error(
                    code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                    reason=f"{type(exc).__name__}: {exc}",
                ),
                reply_to=incoming,
            )
        reply = _copy(reply)
        reply.metadata.__dict__["_message_id"] = f"r{next(self._ids)}"
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in message_ids if m in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_local(cfg, out_dir: str) -> None:
    """Run the experiment ``cfg`` with the in-process grid, writing to ``out_dir``."""
    from fedrec.clients.app import app as client_app
    from fedrec.flower.server_app import execute

    num_nodes = cfg.runtime.num_nodes or cfg.partition.num_clients
    grid = LocalGrid(client_app, num_nodes)
    grid.activate()
    execute(grid, cfg, out_dir)

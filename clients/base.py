"""The client-half contract.

A strategy names its client half (``FedrecStrategy.client_half``, a dotted path).
For every logical client a node hosts, the ClientApp builds the half with the run
config, the client id and the client's private state, then calls one method per
message:

==================  =============================================  ==================
message type        method                                         returns
==================  =============================================  ==================
query.fedrec_hello  :meth:`hello`                                  metrics (counts)
train               :meth:`fit`                                    weights, metrics
evaluate            :meth:`evaluate`                               metrics
query.<action>      :meth:`query` (plugins' extra phases)          weights|None, metrics
==================  =============================================  ==================

``state`` is a dict of numpy arrays that persists across rounds on the node (it is
kept in Flower's ``context.state``) and never leaves it. Metrics values must be
int, float, or lists of them (Flower ``MetricRecord``); counts are sent as counts,
never as ratios, so the server can sum them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.config import RunConfig

if TYPE_CHECKING:
    from fedrec.protocol import ReplyColumns
    from fedrec.state import CohortState

Metrics = dict[str, Any]
Weights = list[np.ndarray]


class ClientHalf:
    """Base class of the per-client logic of a strategy."""

    #: the unlearning query actions the half serves (``fedrec.unlearning`` methods check
    #: theirs against this before a run starts)
    unlearning_actions: tuple[str, ...] = ()
    #: the client-side ``privacy.mechanism`` values the half implements ("local", "dpsgd");
    #: a subclass declares its own (it is not inherited: its uploads may differ)
    privacy_mechanisms: tuple[str, ...] = ()

    def __init__(self, cfg: RunConfig, client_id: int, state: dict[str, np.ndarray]):
        self.cfg = cfg
        self.client_id = client_id
        self.state = state

    def hello(self) -> Metrics:
        """Handshake: facts the server may know (sizes, counts)."""
        return {}

    def fit(
        self, server_round: int, weights: Weights, config: dict[str, Any]
    ) -> tuple[Weights, Metrics]:
        raise NotImplementedError

    def evaluate(self, server_round: int, weights: Weights, config: dict[str, Any]) -> Metrics:
        raise NotImplementedError

    def query(
        self, action: str, server_round: int, weights: Weights | None, config: dict[str, Any]
    ) -> tuple[Weights | None, Metrics]:
        raise ValueError(f"{type(self).__name__} has no query action '{action}'")

    @classmethod
    def owned_users(cls, cfg: RunConfig, client_id: int) -> np.ndarray:
        """The user ids this client holds (recommenders); none for a classifier client.
        An unlearning poll matches ``users`` / ``interactions`` requests against them."""
        return np.zeros(0, dtype=np.int64)

    @classmethod
    def forget_users(cls, cfg: RunConfig, client_id: int, state: Any, users: np.ndarray) -> None:
        """Delete what the client keeps about forgotten ``users`` (e.g. their embeddings);
        their training data is already withheld by the forget records."""

    @classmethod
    def handle_cohort(
        cls,
        cfg: RunConfig,
        message_type: str,
        server_round: int,
        weights: Weights | None,
        config: dict[str, Any],
        states: CohortState,
    ) -> dict[int, tuple[Weights | None, Metrics]] | ReplyColumns | None:
        """Optional: act for all logical clients a node hosts in one batched call.

        ``states`` maps client id -> that client's private state (update it in place).
        Return client id -> (weights or None, metrics), computed exactly as the per-client
        methods would (each client's math, seed and reply stay separate), the same replies as
        :class:`~fedrec.protocol.ReplyColumns`, or None to let the ClientApp call the
        per-client methods one by one (the default).
        """
        return None

"""Strategies that SIGKILL their own process at the start of round ``$FEDREC_TEST_KILL_AT``
(tests of ``fedrec run --resume``): the kill lands after the previous round's checkpoint,
like a ``kill -9`` between two rounds. Without the variable they are the plain strategies."""

from __future__ import annotations

import os
import signal

from fedrec.strategies.fedavg import FedAvg
from fedrec.strategies.fedmf import FedMF


def _maybe_kill(server_round: int) -> None:
    if os.environ.get("FEDREC_TEST_KILL_AT") == str(server_round):
        os.kill(os.getpid(), signal.SIGKILL)


class KillingFedAvg(FedAvg):
    def on_round_start(self, server_round: int) -> None:
        _maybe_kill(server_round)
        super().on_round_start(server_round)


class KillingFedMF(FedMF):
    def on_round_start(self, server_round: int) -> None:
        _maybe_kill(server_round)
        super().on_round_start(server_round)

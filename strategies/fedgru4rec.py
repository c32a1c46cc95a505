"""Federated GRU4Rec (``fedgru4rec``): :mod:`fedrec.strategies.fedsasrec` with a GRU.

The model is :class:`fedrec.models.recsys.GRU4Rec` (Hidasi et al. 2016 in the next-item form
with shared item embeddings, SASRec's BCE loss with one sampled negative per position); it has
no user parameters either, so the protocol, the sparse item-row upload, the FedAdam/FedAvg
server step and the evaluation are ``fedsasrec``'s unchanged. It is the second sequential
victim of the profile-pollution experiments (``experiments/creat``).
"""

from __future__ import annotations

from typing import ClassVar

from fedrec.specs import fedgru4rec as gru_spec
from fedrec.specs.fedgru4rec import FedGRU4RecParams
from fedrec.strategies.fedsasrec import FedSASRec

__all__ = ["FedGRU4Rec", "FedGRU4RecParams"]


class FedGRU4Rec(FedSASRec):
    """Federated GRU4Rec with sparse item-row uploads and a FedAdam/FedAvg server step."""

    name = "fedgru4rec"
    Params: ClassVar[type] = FedGRU4RecParams
    client_half = "fedrec.clients.fedgru4rec:GRU4RecClient"
    build_model = staticmethod(gru_spec.build_model)
    init_tag = "gru4rec-init"

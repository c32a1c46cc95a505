"""Client half of ``fedgru4rec``: :class:`fedrec.clients.fedsasrec.SASRecClient` with a GRU4Rec."""

from __future__ import annotations

import numpy as np
import torch

from fedrec.clients.fedsasrec import SASRecClient
from fedrec.specs import fedgru4rec as spec


class GRU4RecClient(SASRecClient):
    """Local SGD of each user on its own sequence (``sasrec_user_step`` on a GRU4Rec); what
    leaves a client is what ``fedsasrec`` uploads."""

    Params: type = spec.FedGRU4RecParams
    _models: dict = {}

    @classmethod
    def model(cls, cfg, p, num_items, weights):
        from fedrec.models.recsys import GRU4Rec

        key = (num_items, p.dim, p.max_len, p.num_layers, p.dropout)
        if key not in cls._models:
            cls._models.clear()
            cls._models[key] = GRU4Rec(num_items, p.dim, p.max_len, p.num_layers, p.dropout)
        m = cls._models[key]
        with torch.no_grad():
            for prm, w in zip(m.parameters(), weights):
                prm.copy_(torch.as_tensor(np.asarray(w, dtype=np.float32)))
        return m

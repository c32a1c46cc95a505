"""Client half of ``fedgru4rec``: :class:`fedrec.clients.fedsasrec.SASRecClient` with a GRU4Rec.

What leaves a client: exactly what leaves a ``fedsasrec`` client (:mod:`fedrec.clients.fedsasrec`):
touched item-row ids and delta sums, the flat dense-delta sum, example count and loss in
``train``; per-user ranking metrics and top-K lists in ``evaluate``.
"""

from __future__ import annotations

from fedrec.clients.fedsasrec import SASRecClient
from fedrec.specs import fedgru4rec as spec


class GRU4RecClient(SASRecClient):
    """Local SGD of each user on its own sequence (``sasrec_user_step`` on a GRU4Rec); what
    leaves a client is what ``fedsasrec`` uploads."""

    Params: type = spec.FedGRU4RecParams
    build_model = staticmethod(spec.build_model)
    _models: dict = {}

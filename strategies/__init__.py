"""Server strategies (importable as ``fedrec.strategies``).

Each strategy is a :class:`FedrecStrategy` subclass registered under the entry-point
group ``fedrec.strategies``; see :mod:`fedrec.plugins`.
"""

from fedrec.strategies.base import FedrecStrategy, NoParams, RoundRecord
from fedrec.strategies.fedavg import FedAvg

__all__ = ["FedrecStrategy", "NoParams", "RoundRecord", "FedAvg"]

"""Client halves of fedrec strategies and the one Flower ClientApp (``clients.app``).

Importable as ``fedrec.clients``. Client halves (:class:`ClientHalf` subclasses) are
plain Python/numpy: they receive weights and config, return weights and metrics,
and never import flwr; :mod:`fedrec.clients.app` adapts them to Flower Messages.
"""

from fedrec.clients.base import ClientHalf
from fedrec.clients.classification import ClassifierClient

__all__ = ["ClientHalf", "ClassifierClient"]

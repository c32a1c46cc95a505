"""Client halves of fedrec strategies and the one Flower ClientApp (``clients.app``).

Importable as ``fedrec.clients``. Client halves (:class:`ClientHalf` subclasses) are
plain Python/numpy: they receive weights and config, return weights and metrics,
and never import flwr; :mod:`fedrec.clients.app` adapts them to Flower Messages.
``ClassifierClient`` is imported on first use (it needs torch), so that a ClientApp
process whose message needs no client half (a state save or load) does not import torch.
"""

from typing import TYPE_CHECKING, Any

from fedrec.clients.base import ClientHalf

if TYPE_CHECKING:
    from fedrec.clients.classification import ClassifierClient

__all__ = ["ClientHalf", "ClassifierClient"]


def __getattr__(name: str) -> Any:
    if name == "ClassifierClient":
        from fedrec.clients.classification import ClassifierClient

        return ClassifierClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

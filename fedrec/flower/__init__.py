"""Thin Flower adapter: the ServerApp (``fedrec.flower.server_app:app``).

The ClientApp is ``fedrec.clients.app:app``. Only this package, ``fedrec.runtime``,
``fedrec.strategies`` and ``fedrec.clients.app`` import flwr.
"""

"""Runtimes: ``local`` (in-process Grid), ``ray`` (Flower simulation engine) and
``deployment`` (``flwr run`` against a SuperLink with SuperNodes). All three run the
same ServerApp logic (:func:`fedrec.flower.server_app.execute`) and the same ClientApp
(:data:`fedrec.clients.app.app`)."""

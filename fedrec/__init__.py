"""fedrec: trustworthy federated learning for recommenders and classifiers on Flower.

Subpackages ``fedrec.strategies`` (server strategies) and ``fedrec.clients`` (the
ClientApp and client halves) live in the top-level ``strategies/`` and ``clients/``
folders of the source tree; installed (regular or editable) they are mapped into
this package, and from a plain checkout the fallback below finds them.

Python entry point: :func:`fedrec.run`.
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if (
    not _os.path.isdir(_os.path.join(_here, "strategies"))
    and _os.path.isfile(_os.path.join(_root, "strategies", "base.py"))
    and _os.path.isfile(_os.path.join(_root, "clients", "app.py"))
):
    # Source checkout or a Flower FAB of it: make fedrec.strategies / fedrec.clients
    # resolve to the sibling folders. (Only these names are looked up there.)
    __path__.append(_root)  # type: ignore[name-defined]


def run(
    config, backend: str | None = None, out: str | None = None, overrides=None, quiet: bool = False
):
    """Run an experiment; see :func:`fedrec.runner.run`."""
    from fedrec.runner import run as _run

    return _run(config, backend=backend, out=out, overrides=overrides, quiet=quiet)


def unlearn(
    run_dir,
    request,
    method: str | None = None,
    out: str | None = None,
    backend: str | None = None,
    overrides=None,
    quiet: bool = False,
):
    """Serve unlearning requests on a finished run; see :func:`fedrec.runner.unlearn`."""
    from fedrec.runner import unlearn as _unlearn

    return _unlearn(
        run_dir, request, method=method, out=out, backend=backend, overrides=overrides, quiet=quiet
    )

"""Test setup: no network, no telemetry, a private FLWR_HOME and fedrec cache.

Tests that read the real raw datasets use FEDREC_DATA_DIR (CI points it at
../shared/data when present) and skip when it is unset or lacks the dataset.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

_TMP = Path(tempfile.mkdtemp(prefix="fedrec-tests-"))
os.environ.update(
    {
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
)
os.environ.setdefault("FLWR_HOME", str(_TMP / "flwr-home"))
os.environ.setdefault("FEDREC_CACHE_DIR", str(_TMP / "cache"))


def shared_data(name: str) -> Path:
    """The real copy of dataset folder ``name`` or skip the test."""
    root = os.environ.get("FEDREC_DATA_DIR")
    if not root or not (Path(root) / name).is_dir():
        pytest.skip(f"FEDREC_DATA_DIR with '{name}' not available")
    return Path(root) / name


SMALL = {
    "dataset.name": "adult",
    "partition.num-clients": 4,
    "partition.scheme": "iid",
    "num-server-rounds": 2,
    "output.plots": False,
    "output.progress": False,
}


@pytest.fixture
def small_config() -> dict:
    return dict(SMALL)


# ------------------------------------------------------------ shared federated runs
@contextlib.contextmanager
def extra_user_attributes(ds, extra: dict, seed: int = 123):
    """Add random categorical user attributes ``extra`` ({name: class names}) to dataset
    ``ds`` in place (the cached object, so every client of a run sees them) and remove them
    afterwards. They carry no signal: for mechanical checks only."""
    rng = np.random.default_rng(seed)
    for name, classes in extra.items():
        ds.user_attrs[name] = rng.integers(0, len(classes), ds.num_users).astype(np.int64)
        ds.attr_names[name] = list(classes)
    try:
        yield ds
    finally:
        for name in extra:
            ds.user_attrs.pop(name, None)
            ds.attr_names.pop(name, None)


@pytest.fixture(scope="session")
def add_user_attributes():
    """:func:`extra_user_attributes` for test modules (``with add_user_attributes(ds, x):``)."""
    return extra_user_attributes


@pytest.fixture(scope="module")
def lego_dynamic_run(request, tmp_path_factory):
    """The requesting module's dynamic LEGO run, once per module, on the local runtime.

    The module defines ``DYNAMIC`` (the config: request, add, withdraw), ``OPTIONS`` (the
    ``synthetic-rec`` options), ``EXTRA`` (attributes added to the cached world for the run)
    and ``user_data``. Every ``FedLego._send`` is recorded. Returns ``(out, summary, sent,
    ds)``; ``ds`` is a copy of the dataset that keeps the extra attributes (the cached one is
    restored after the run).
    """
    import fedrec
    from fedrec.strategies.lego import FedLego

    mod = request.module
    ds, _ = mod.user_data("synthetic-rec", mod.OPTIONS)
    sent = []
    original = FedLego._send

    def spy(self, grid, action, weights, config, stats):
        sent.append((action, config.get("attrs"), len(weights or [])))
        return original(self, grid, action, weights, config, stats)

    out = tmp_path_factory.mktemp("lego") / "dyn"
    with pytest.MonkeyPatch.context() as mp, extra_user_attributes(ds, mod.EXTRA):
        mp.setattr(FedLego, "_send", spy)
        summary = fedrec.run(mod.DYNAMIC, backend="local", out=out)
        snapshot = copy.copy(ds)
        snapshot.user_attrs, snapshot.attr_names = dict(ds.user_attrs), dict(ds.attr_names)
    return out, summary, sent, snapshot

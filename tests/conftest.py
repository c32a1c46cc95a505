"""Test setup: no network, no telemetry, a private FLWR_HOME and fedrec cache.

Tests that read the real raw datasets use FEDREC_DATA_DIR (CI points it at
../shared/data when present) and skip when it is unset or lacks the dataset.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="fedrec-tests-"))
os.environ.update({
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
})
os.environ.setdefault("FLWR_HOME", str(_TMP / "flwr-home"))
os.environ.setdefault("FEDREC_CACHE_DIR", str(_TMP / "cache"))


def shared_data(name: str) -> Path:
    """The real copy of dataset folder ``name`` or skip the test."""
    root = os.environ.get("FEDREC_DATA_DIR")
    if not root or not (Path(root) / name).is_dir():
        pytest.skip(f"FEDREC_DATA_DIR with '{name}' not available")
    return Path(root) / name


SMALL = {
    "dataset.name": "adult", "partition.num-clients": 4, "partition.scheme": "iid",
    "num-server-rounds": 2, "output.plots": False, "output.progress": False,
}


@pytest.fixture
def small_config() -> dict:
    return dict(SMALL)

"""fedrec's data layer: dataset loaders, raw-file sources and client partitioners.

Pure code (no Flower import). See the docstrings of :mod:`.sources` (file resolution,
checksums, cache, download, import), :mod:`.tabular` and :mod:`.recsys` (loaders and the
preprocessing choices they make), :mod:`.partition` and :mod:`.registry`.
"""

from __future__ import annotations

from .partition import (
    PARTITION_SCHEMES,
    dirichlet_partition,
    iid_partition,
    make_partitions,
    natural_partition,
    partition_report,
    train_test_split_indices,
)
from .recsys import RecDataset, synthetic_recommendation
from .registry import (
    DATASETS,
    DatasetInfo,
    clear_cache,
    get_dataset_info,
    list_datasets,
    load_dataset,
)
from .sources import cache_dir, import_dataset, resolve_files
from .tabular import TabularDataset

__all__ = [
    "DATASETS",
    "PARTITION_SCHEMES",
    "DatasetInfo",
    "RecDataset",
    "TabularDataset",
    "cache_dir",
    "clear_cache",
    "dirichlet_partition",
    "get_dataset_info",
    "iid_partition",
    "import_dataset",
    "list_datasets",
    "load_dataset",
    "make_partitions",
    "natural_partition",
    "partition_report",
    "resolve_files",
    "synthetic_recommendation",
    "train_test_split_indices",
]

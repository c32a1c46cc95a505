"""Building blocks of the per-method message specs (:mod:`fedrec.specs`).

A method's spec module declares, once, what travels between its two halves: record-key
constants and pack/unpack of its arrays. These helpers cover the recurring shapes:

- :class:`FlatLayout`: a list of parameter arrays as one flat vector and back (one array
  per message instead of one per parameter: Flower's per-array cost dominates otherwise);
- :class:`RowSparse`: a row-sparse upload of a matrix (touched row ids, per-row sums,
  per-row counts), e.g. the item rows a client's users touched.

Pure numpy, no flwr import: both halves and the tests import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FlatLayout", "RowSparse"]


@dataclass(frozen=True)
class FlatLayout:
    """The shapes of a list of arrays laid end to end in one flat vector (C order)."""

    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, arrays: Sequence[np.ndarray]) -> FlatLayout:
        return cls(tuple(tuple(int(x) for x in np.shape(a)) for a in arrays))

    @property
    def sizes(self) -> list[int]:
        return [int(np.prod(s)) for s in self.shapes]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def pack(
        self, arrays: Sequence[np.ndarray], dtype: np.dtype | type | None = None
    ) -> np.ndarray:
        """The arrays flattened and concatenated (``dtype``: of the result, default the
        common dtype)."""
        if len(arrays) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} arrays, got {len(arrays)}")
        for a, s in zip(arrays, self.shapes):
            if tuple(np.shape(a)) != s:
                raise ValueError(f"array of shape {np.shape(a)} where the layout has {s}")
        flat = np.concatenate([np.asarray(a).ravel() for a in arrays]) if arrays else np.zeros(0)
        return flat if dtype is None else flat.astype(dtype, copy=False)

    def unpack(self, flat: np.ndarray) -> list[np.ndarray]:
        """Views of ``flat`` (last axis, so a leading batch axis is kept) in the layout's
        shapes."""
        flat = np.asarray(flat)
        if flat.shape[-1] != self.size:
            raise ValueError(
                f"flat vector of length {flat.shape[-1]}; the layout needs {self.size}"
            )
        lead = flat.shape[:-1]
        out, off = [], 0
        for s, n in zip(self.shapes, self.sizes):
            out.append(flat[..., off : off + n].reshape(lead + s))
            off += n
        return out


@dataclass
class RowSparse:
    """A row-sparse upload of a ``(num_rows, ...)`` matrix: ``ids`` (k,) int64 of the
    touched rows, ``rows`` (k, ...) their summed values, ``counts`` (k,) how many
    contributions each sum holds."""

    ids: np.ndarray
    rows: np.ndarray
    counts: np.ndarray

    def to_arrays(self) -> list[np.ndarray]:
        return [
            np.asarray(self.ids, dtype=np.int64),
            np.asarray(self.rows),
            np.asarray(self.counts, dtype=np.int64),
        ]

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray]) -> RowSparse:
        ids, rows, counts = arrays[:3]
        return cls(np.asarray(ids, dtype=np.int64), np.asarray(rows), np.asarray(counts))

    @classmethod
    def from_contributions(
        cls, ids: np.ndarray, values: np.ndarray, dtype: type = np.float32
    ) -> RowSparse:
        """Sum per-contribution rows ``values[j]`` into their row ``ids[j]``."""
        uniq, inv = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
        sums: np.ndarray = np.zeros((len(uniq),) + np.shape(values)[1:], dtype=dtype)
        np.add.at(sums, inv, values)
        return cls(uniq, sums, np.bincount(inv, minlength=len(uniq)).astype(np.int64))

    @classmethod
    def accumulate_sparse(cls, uploads: Sequence[RowSparse]) -> RowSparse:
        """The sum of several uploads as one upload over the union of their rows."""
        ids = np.concatenate([np.asarray(u.ids, dtype=np.int64) for u in uploads])
        rows = np.concatenate([np.asarray(u.rows) for u in uploads])
        counts = np.concatenate([np.asarray(u.counts, dtype=np.int64) for u in uploads])
        uniq, inv = np.unique(ids, return_inverse=True)
        sums = np.zeros((len(uniq),) + rows.shape[1:], dtype=rows.dtype)
        np.add.at(sums, inv, rows)
        return cls(
            uniq, sums, np.bincount(inv, weights=counts, minlength=len(uniq)).astype(np.int64)
        )

    @staticmethod
    def accumulate(
        uploads: Sequence[RowSparse], num_rows: int, row_shape: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed rows (float64, ``(num_rows, *row_shape)``) and counts over the uploads,
        added in the given order."""
        total = np.zeros((num_rows,) + tuple(row_shape), dtype=np.float64)
        count = np.zeros(num_rows, dtype=np.float64)
        if uploads:  # one unbuffered add.at over all uploads: the same order as one by one
            ids = np.concatenate([u.ids for u in uploads])
            np.add.at(total, ids, np.concatenate([u.rows for u in uploads]).astype(np.float64))
            np.add.at(count, ids, np.concatenate([u.counts for u in uploads]).astype(np.float64))
        return total, count

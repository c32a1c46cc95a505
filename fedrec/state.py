"""Per-client private state, stored by column: one array per field per node.

A node hosts many logical clients. Their private state (user embeddings, optimizer
moments, cached targets, ...) never leaves the node; Flower persists it in the node's
``context.state``. Storing one Flower record per client made the record machinery cost
several times the compute at 943 clients, so the state is kept **columnar**:

- :class:`StateStore`: every field is one :class:`Column`: ``values`` (the rows of all
  clients that have the field, concatenated along axis 0 in client-id order), ``clients``
  (their ids, sorted) and ``indptr`` (client ``clients[i]`` owns rows
  ``indptr[i]:indptr[i+1]``). A 0-d value (a version number, a step counter) is one row.
  :meth:`StateStore.to_arrays` / :meth:`StateStore.from_arrays` turn the store into four
  plain arrays per field (the ClientApp wraps them in one ``ArrayRecord``).
- :class:`CohortState`: the view a client half gets for the clients one message names:
  per client ``load``/``save``/``clear`` (pfl-research's ``user_state_storage``), a
  mapping interface (``states[c][field]``), and the columnar fast path
  :meth:`CohortState.column` / :meth:`CohortState.set_column` for batched halves.

Pure numpy (no flwr import): the same code serves all three runtimes and the tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

State = dict[str, np.ndarray]

_SEP = "/"


@dataclass
class Column:
    """One field of every client that has it (see the module docstring)."""

    clients: np.ndarray  # (C,) int64, sorted
    indptr: np.ndarray  # (C + 1,) int64
    values: np.ndarray  # (indptr[-1], ...) rows of all clients, in client order
    scalar: bool = False  # each client's value is 0-d (stored as one row)

    def position(self, client_id: int) -> int:
        """Index of ``client_id`` in :attr:`clients`, or -1."""
        i = int(np.searchsorted(self.clients, client_id))
        return i if i < len(self.clients) and int(self.clients[i]) == client_id else -1

    def get(self, client_id: int) -> np.ndarray | None:
        i = self.position(client_id)
        if i < 0:
            return None
        v = self.values[int(self.indptr[i]) : int(self.indptr[i + 1])]
        return v[0] if self.scalar else v

    @classmethod
    def build(cls, parts: Mapping[int, np.ndarray]) -> Column:
        """A column from client id -> value (values of one field share dtype and trailing shape)."""
        cids = sorted(parts)
        arrs = [np.asarray(parts[c]) for c in cids]
        scalar = bool(arrs) and arrs[0].ndim == 0
        if any((a.ndim == 0) != scalar for a in arrs):
            raise ValueError("a state field must be 0-d for every client or for none")
        rows = [a.reshape(1, *a.shape) if scalar else a for a in arrs]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.concatenate(rows) if rows else np.zeros((0,))
        return cls(np.asarray(cids, dtype=np.int64), indptr, values, scalar)


class StateStore:
    """The private state of all clients a node hosts, one :class:`Column` per field."""

    def __init__(self, columns: dict[str, Column] | None = None) -> None:
        self.columns: dict[str, Column] = dict(columns or {})

    # ------------------------------------------------------------ serialisation
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Four arrays per field: ``field/values``, ``field/clients``, ``field/indptr``,
        ``field/scalar``."""
        out: dict[str, np.ndarray] = {}
        for name, col in self.columns.items():
            out[f"{name}{_SEP}values"] = np.ascontiguousarray(col.values)
            out[f"{name}{_SEP}clients"] = col.clients
            out[f"{name}{_SEP}indptr"] = col.indptr
            out[f"{name}{_SEP}scalar"] = np.asarray([col.scalar])
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> StateStore:
        cols: dict[str, Column] = {}
        names = {k.rsplit(_SEP, 1)[0] for k in arrays}
        for name in sorted(names):
            cols[name] = Column(
                np.asarray(arrays[f"{name}{_SEP}clients"], dtype=np.int64),
                np.asarray(arrays[f"{name}{_SEP}indptr"], dtype=np.int64),
                np.asarray(arrays[f"{name}{_SEP}values"]),
                bool(np.asarray(arrays[f"{name}{_SEP}scalar"])[0]),
            )
        return cls(cols)

    # ------------------------------------------------------------ per client
    def load(self, client_id: int) -> State:
        """A copy-free dict of one client's fields (views into the columns)."""
        out: State = {}
        for name, col in self.columns.items():
            v = col.get(client_id)
            if v is not None:
                out[name] = v
        return out

    def clients(self) -> list[int]:
        """Every client id that has at least one field."""
        ids: set[int] = set()
        for col in self.columns.values():
            ids.update(int(c) for c in col.clients)
        return sorted(ids)

    def cohort(self, clients: Iterable[int]) -> CohortState:
        return CohortState(self, clients)

    def update(self, changes: Mapping[int, Mapping[str, np.ndarray | None]]) -> None:
        """Apply per-client changes (``None`` deletes a field) in one rebuild per field."""
        fields = {f for ch in changes.values() for f in ch}
        for name in sorted(fields):
            col = self.columns.get(name)
            parts: dict[int, np.ndarray] = {}
            if col is not None:
                for i, c in enumerate(col.clients):
                    c = int(c)
                    if c in changes and name in changes[c]:
                        continue
                    v = col.values[int(col.indptr[i]) : int(col.indptr[i + 1])]
                    parts[c] = v[0] if col.scalar else v
            for c, ch in changes.items():
                if name in ch and ch[name] is not None:
                    parts[int(c)] = np.asarray(ch[name])
            if parts:
                self.columns[name] = Column.build(parts)
            else:
                self.columns.pop(name, None)

    def replace_column(self, name: str, column: Column) -> None:
        self.columns[name] = column


class ClientState(MutableMapping[str, np.ndarray]):
    """One client's fields inside a :class:`CohortState` (reads see pending writes)."""

    def __init__(self, cohort: CohortState, client_id: int) -> None:
        self._cohort, self.client_id = cohort, client_id

    def __getitem__(self, name: str) -> np.ndarray:
        v = self._cohort._get(self.client_id, name)
        if v is None:
            raise KeyError(name)
        return v

    def __setitem__(self, name: str, value: Any) -> None:
        self._cohort._pending.setdefault(self.client_id, {})[name] = np.asarray(value)

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._cohort._pending.setdefault(self.client_id, {})[name] = None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._cohort._get(self.client_id, name) is not None

    def __iter__(self) -> Iterator[str]:
        names = set(self._cohort.store.columns) | set(self._cohort._pending.get(self.client_id, {}))
        return iter(sorted(n for n in names if n in self))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class CohortState(Mapping[int, ClientState]):
    """The state of the clients one message names (sorted ids), backed by a store.

    Writes are buffered and applied by :meth:`commit` (the ClientApp calls it once per
    message), so a half that fails leaves the stored state as it was.
    """

    def __init__(self, store: StateStore, clients: Iterable[int]) -> None:
        self.store = store
        self.ids = sorted(int(c) for c in clients)
        self._position = {c: i for i, c in enumerate(self.ids)}
        self._pending: dict[int, dict[str, np.ndarray | None]] = {}
        self._columns: dict[str, np.ndarray] = {}  # set_column, not yet committed
        self._column_lengths: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------ Mapping
    def __getitem__(self, client_id: int) -> ClientState:
        if int(client_id) not in self._position:
            raise KeyError(client_id)
        return ClientState(self, int(client_id))

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def _column_offsets(self, name: str) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self._column_lengths[name])])

    # ------------------------------------------------------------ per-client API
    def load(self, client_id: int) -> State:
        """A plain dict of one client's fields (pending writes included)."""
        return {k: v for k, v in self[client_id].items()}

    def save(self, client_id: int, state: Mapping[str, np.ndarray]) -> None:
        """Replace one client's state by ``state`` (fields it lacks are deleted)."""
        cs = self[client_id]
        for name in list(cs):
            if name not in state:
                del cs[name]
        for name, v in state.items():
            cs[name] = v

    def clear(self, client_id: int) -> None:
        """Forget everything stored for ``client_id`` (e.g. an unlearning request)."""
        for name in list(self[client_id]):
            del self[client_id][name]

    # ------------------------------------------------------------ columnar API
    def column(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(values, indptr)`` of field ``name`` over this cohort in client order, or
        None when no client of the cohort has it. Every client must have it."""
        if name in self._columns:
            return self._columns[name], self._column_offsets(name).astype(np.int64)
        parts: list[np.ndarray] = []
        for c in self.ids:
            v = self._get(c, name)
            if v is None:
                if parts:
                    raise KeyError(f"state field '{name}' missing for client {c}")
                continue
            parts.append(v.reshape(1, *v.shape) if v.ndim == 0 else v)
        if not parts:
            return None
        if len(parts) != len(self.ids):
            missing = [c for c in self.ids if self._get(c, name) is None]
            raise KeyError(f"state field '{name}' missing for clients {missing[:10]}")
        col = self.store.columns.get(name)
        if (
            col is not None
            and name not in {f for p in self._pending.values() for f in p}
            and len(col.clients) == len(self.ids)
            and not col.scalar
            and np.array_equal(col.clients, self.ids)
        ):
            return col.values, col.indptr  # the whole node: the stored column as is
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        return np.concatenate(parts), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def set_column(self, name: str, values: np.ndarray, indptr: np.ndarray) -> None:
        """Set field ``name`` of every cohort client from rows in client order."""
        indptr = np.asarray(indptr, dtype=np.int64)
        if len(indptr) != len(self.ids) + 1 or int(indptr[-1]) != len(values):
            raise ValueError(
                f"set_column('{name}'): indptr does not match {len(self.ids)} "
                f"clients and {len(values)} rows"
            )
        for c in self.ids:
            self._pending.get(c, {}).pop(name, None)
        self._columns[name] = np.asarray(values)
        self._column_lengths[name] = np.diff(indptr)

    # ------------------------------------------------------------ commit
    def _get(self, client_id: int, name: str) -> np.ndarray | None:
        pend = self._pending.get(client_id)
        if pend is not None and name in pend:
            return pend[name]
        if name in self._columns:
            i = self._position[client_id]
            offs = self._column_offsets(name)
            return self._columns[name][int(offs[i]) : int(offs[i + 1])]
        col = self.store.columns.get(name)
        return None if col is None else col.get(client_id)

    def commit(self) -> bool:
        """Write buffered changes into the store; True if anything changed."""
        changed = bool(self._pending) or bool(self._columns)
        for name, vals in self._columns.items():
            lengths = self._column_lengths[name]
            col = self.store.columns.get(name)
            ids = np.asarray(self.ids, dtype=np.int64)
            if col is None or (len(col.clients) == len(ids) and np.array_equal(col.clients, ids)):
                indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
                self.store.replace_column(name, Column(ids, indptr, vals))
            else:
                offs = np.concatenate([[0], np.cumsum(lengths)])
                self.store.update(
                    {
                        c: {name: vals[int(offs[i]) : int(offs[i + 1])]}
                        for i, c in enumerate(self.ids)
                    }
                )
        if self._pending:
            self.store.update(self._pending)
        self._pending, self._columns, self._column_lengths = {}, {}, {}
        return changed

"""Unlearning requests: what is to be forgotten, parsed and validated before anything runs.

A request file (``REQUEST.toml``) holds one or more ``[[request]]`` tables::

    [[request]]
    kind = "users"          # interactions | users | items | client | attribute
    users = [3, 17]
    round = 5               # optional: served at the end of this training round (the
                            # schedule); 0 = before round 1 (the data never joins)

    [[request]]
    kind = "interactions"
    pairs = [[3, 10], [3, 42]]     # (user, item)

    [[request]]
    kind = "client"
    clients = [4]

    [[request]]
    kind = "attribute"
    attributes = ["gender"]        # routed to LEGO

:func:`load_requests` parses and checks the form (one clear error naming the request, the
field and the allowed values); :meth:`UnlearningRequest.validate` checks the ids against
the run's universe (numbers of users, items and clients, the known attributes, and for
interactions the training pairs), so that a bad request is refused before any state or
file changes. Ids are 0-based, as everywhere in fedrec. :class:`AuditLog` appends one JSON
line per served request to ``unlearning.jsonl``.

Pure: no flwr import.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.errors import ConfigError

__all__ = ["KINDS", "AuditLog", "UnlearningRequest", "Universe", "load_requests"]

KINDS: tuple[str, ...] = ("interactions", "users", "items", "client", "attribute")
_FIELD = {
    "interactions": "pairs",
    "users": "users",
    "items": "items",
    "client": "clients",
    "attribute": "attributes",
}


@dataclass(frozen=True)
class Universe:
    """What a run knows about, for validating ids (fields left ``None`` are not checked)."""

    num_users: int | None = None
    num_items: int | None = None
    num_clients: int | None = None
    attributes: tuple[str, ...] = ()
    train_pairs: frozenset[tuple[int, int]] | None = None


@dataclass(frozen=True)
class UnlearningRequest:
    """One request: its ``kind``, the ids to forget and an optional serving ``round``."""

    kind: str
    ids: tuple[Any, ...]
    round: int | None = None
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"request[{self.kind}]"

    def users(self) -> np.ndarray:
        """The users whose data the request touches (users, or the users of pairs)."""
        if self.kind == "users":
            return np.asarray(self.ids, dtype=np.int64)
        if self.kind == "interactions":
            return np.unique(np.asarray([p[0] for p in self.ids], dtype=np.int64))
        return np.zeros(0, dtype=np.int64)

    def validate(self, universe: Universe) -> UnlearningRequest:
        """Check the ids against ``universe``; one ConfigError naming the culprits."""

        def check_range(what: str, values: Iterable[int], n: int | None) -> None:
            if n is None:
                return
            bad = sorted({int(v) for v in values if not 0 <= int(v) < n})
            if bad:
                raise ConfigError(
                    f"{self.label}: unknown {what} id(s) {bad[:10]}"
                    f"{' ...' if len(bad) > 10 else ''}; the run has {what}s 0..{n - 1}"
                )

        if self.kind == "users":
            check_range("user", self.ids, universe.num_users)
        elif self.kind == "items":
            check_range("item", self.ids, universe.num_items)
        elif self.kind == "client":
            check_range("client", self.ids, universe.num_clients)
        elif self.kind == "interactions":
            check_range("user", (p[0] for p in self.ids), universe.num_users)
            check_range("item", (p[1] for p in self.ids), universe.num_items)
            if universe.train_pairs is not None:
                missing = [p for p in self.ids if tuple(p) not in universe.train_pairs]
                if missing:
                    raise ConfigError(
                        f"{self.label}: {len(missing)} pair(s) are not training interactions "
                        f"of the run, e.g. {list(missing[0])}"
                    )
        else:
            unknown = sorted(set(self.ids) - set(universe.attributes))
            if unknown and universe.attributes:
                raise ConfigError(
                    f"{self.label}: unknown attribute(s) {unknown}; the run has "
                    f"{', '.join(universe.attributes)}"
                )
        return self

    def to_json(self) -> dict[str, Any]:
        ids = [list(p) for p in self.ids] if self.kind == "interactions" else list(self.ids)
        out: dict[str, Any] = {"kind": self.kind, _FIELD[self.kind]: ids}
        if self.round is not None:
            out["round"] = self.round
        if self.name:
            out["name"] = self.name
        return out


def _int(label: str, key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{label}: {key} must hold integers, got {v!r}")
    return v


def _parse_one(i: int, raw: Any) -> UnlearningRequest:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"request[{i}] must be a table, got {type(raw).__name__}")
    name = str(raw.get("name", ""))
    label = name or f"request[{i}]"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{label}: kind must be one of {', '.join(KINDS)}; got {kind!r}")
    fld = _FIELD[kind]
    allowed = {"kind", "name", "round", fld}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{label}: unknown key(s) {unknown} for kind {kind!r}; allowed: {sorted(allowed)}"
        )
    values = raw.get(fld)
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) == 0:
        raise ConfigError(f"{label}: {fld} must be a non-empty list (the forget set is empty)")
    ids: tuple[Any, ...]
    if kind == "interactions":
        pairs = []
        for p in values:
            if not isinstance(p, Sequence) or isinstance(p, str) or len(p) != 2:
                raise ConfigError(f"{label}: pairs must be [user, item] lists, got {p!r}")
            pairs.append((_int(label, fld, p[0]), _int(label, fld, p[1])))
        ids = tuple(dict.fromkeys(pairs))
    elif kind == "attribute":
        if not all(isinstance(a, str) and a for a in values):
            raise ConfigError(f"{label}: attributes must be non-empty names, got {values!r}")
        ids = tuple(dict.fromkeys(values))
    else:
        ids = tuple(dict.fromkeys(_int(label, fld, v) for v in values))
    rnd = raw.get("round")
    if rnd is not None and (_int(label, "round", rnd) < 0):
        raise ConfigError(
            f"{label}: round must be >= 0 (0: the data never joins the federation), got {rnd!r}"
        )
    return UnlearningRequest(kind, ids, rnd, name)


def load_requests(
    source: str | Path | Mapping[str, Any], universe: Universe | None = None
) -> list[UnlearningRequest]:
    """Parse a request file (path) or an already-parsed mapping with a ``request`` list;
    validate every request against ``universe`` if given. Nothing is served or written
    here: a bad request raises before any change."""
    if isinstance(source, Mapping):
        data: Mapping[str, Any] = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"request file '{path}' does not exist")
        try:
            data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"request file '{path}' is not UTF-8 text (byte {exc.start}); TOML files must "
                "be UTF-8 encoded"
            ) from None
        except ValueError as exc:  # TOMLDecodeError, or an integer with too many digits
            raise ConfigError(f"request file '{path}' is not valid TOML: {exc}") from None
    raw = data.get("request")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("the request file needs at least one [[request]] table")
    extra = sorted(set(data) - {"request"})
    if extra:
        raise ConfigError(f"unknown top-level key(s) {extra} in the request file")
    reqs = [_parse_one(i, r) for i, r in enumerate(raw)]
    if universe is not None:
        for r in reqs:
            r.validate(universe)
    return reqs


class AuditLog:
    """Appends one JSON line per served request to ``unlearning.jsonl``: the request, the
    method, and what serving it cost and achieved (rounds, bytes each way, seconds,
    verification metrics)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def record(
        self,
        request: UnlearningRequest,
        method: str,
        *,
        rounds: int,
        bytes_up: int,
        bytes_down: int,
        seconds: float,
        metrics: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        entry = {
            "request": request.to_json(),
            "method": method,
            "rounds": int(rounds),
            "bytes_up": int(bytes_up),
            "bytes_down": int(bytes_down),
            "seconds": float(seconds),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        }
        line = json.dumps(entry, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
        return entry

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]

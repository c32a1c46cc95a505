"""Serialising a strategy's server state: nested Python values <-> flat arrays + a skeleton.

A strategy declares what it carries between rounds (``FedrecStrategy.server_state_attrs``:
optimizer moments, duals, broadcast maps, stored history, ...). :func:`pack_state` turns
those values (dicts with string keys, lists, tuples, dataclasses, numpy arrays and
scalars, ``int``/``float``/``str``/``bool``/``None``) into a JSON skeleton plus a flat dict
of arrays, which the checkpoint writes next to the global weights; :func:`unpack_state`
rebuilds equal values (arrays bit-for-bit, dataclasses by their import path).

Pure (no flwr import).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any

import numpy as np

__all__ = ["pack_state", "unpack_state"]


def pack_state(value: Any) -> tuple[str, dict[str, np.ndarray]]:
    """``(skeleton JSON, arrays)`` of ``value`` (see the module docstring)."""
    arrays: dict[str, np.ndarray] = {}

    def enc(v: Any) -> Any:
        if isinstance(v, np.ndarray) or isinstance(v, np.generic):
            key = f"a{len(arrays)}"
            arrays[key] = np.asarray(v)
            return {"~": "array", "k": key, "scalar": isinstance(v, np.generic)}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, dict):
            bad = [k for k in v if not isinstance(k, (str, int))]
            if bad:
                raise TypeError(f"server state dict keys must be str or int, got {bad[0]!r}")
            return {"~": "dict", "items": [[k, enc(x)] for k, x in v.items()]}
        if isinstance(v, (list, tuple)):
            return {"~": type(v).__name__, "items": [enc(x) for x in v]}
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            cls = type(v)
            return {
                "~": "dataclass",
                "cls": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: enc(getattr(v, f.name)) for f in dataclasses.fields(v)},
            }
        raise TypeError(
            f"server state value of type {type(v).__name__} cannot be saved; use "
            "arrays, numbers, strings, lists, dicts or dataclasses of them"
        )

    return json.dumps(enc(value)), arrays


def unpack_state(skeleton: str, arrays: dict[str, np.ndarray]) -> Any:
    """Inverse of :func:`pack_state`."""

    def dec(v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        kind = v["~"]
        if kind == "array":
            a = np.asarray(arrays[v["k"]])
            return a[()] if v["scalar"] else a
        if kind == "dict":
            return {k: dec(x) for k, x in v["items"]}
        if kind == "list":
            return [dec(x) for x in v["items"]]
        if kind == "tuple":
            return tuple(dec(x) for x in v["items"])
        if kind == "dataclass":
            mod, _, name = v["cls"].partition(":")
            cls: Any = importlib.import_module(mod)
            for part in name.split("."):
                cls = getattr(cls, part)
            return cls(**{k: dec(x) for k, x in v["fields"].items()})
        raise ValueError(f"unknown server-state node {kind!r}")

    return dec(json.loads(skeleton))
